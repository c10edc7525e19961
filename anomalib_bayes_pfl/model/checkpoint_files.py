# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Reading checkpoint files safely, and saying what a file is when it is not a checkpoint.

Every file a user names (``--ckpt_path``, ``--model.prompt_weights``, ``--model.clip_pretrained``) is read with
torch's ``weights_only`` loader, which runs no code from the file. When it refuses a file, torch's own message advises
loading it with ``weights_only=False``, which would run code from a file that may not be trusted: the messages here
say what the file is and what the option takes instead, and never pass that advice on.
"""

import pickle
from pathlib import Path
from typing import Any

import torch

CLIP_PREFIX = "model.clip."  # the frozen CLIP's keys in a Lightning checkpoint
BAYES_PFL_CHECKPOINT = (
    "the model.ckpt that 'anomalib train --model BayesPFL' wrote (under results/.../weights/lightning/)"
)
PROMPT_WEIGHTS = f"{BAYES_PFL_CHECKPOINT}, or the authors' train_visa.pth / train_mvtec.pth"
CLIP_WEIGHTS = "OpenAI's ViT-L-14-336px.pt, an open_clip or torch state dict (.pt, .pth, .bin) or a .safetensors file"

# The first bytes of files that are often passed where a checkpoint belongs.
_FILE_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"BM": "a BMP image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"GIF8": "a GIF image",
    b"<?xml": "an XML file (an OpenVINO IR?)",
    b"{": "a JSON file",
}


def _what_it_is(path: Path) -> str:
    with path.open("rb") as file:
        head = file.read(8)
    return next((kind for signature, kind in _FILE_SIGNATURES.items() if head.startswith(signature)), "not one")


def describe_file(path: Path) -> str:
    """What a file that is not a checkpoint is, for messages: ``it is a PNG image``."""
    kind = _what_it_is(path)
    return f"it is {kind}" if kind != "not one" else "it is not a torch checkpoint that loads without running code"


def read_checkpoint(path: str | Path, option: str, expected: str) -> Any:
    """Load a checkpoint with torch's safe loader, or say what the file is and what to pass instead.

    Never suggests loading with ``weights_only=False``: that would run code from a file that may not be trusted.

    Args:
        path: The file.
        option: The option that named it, for the message (``--ckpt_path``, ``--model.prompt_weights``).
        expected: What that option takes, for the message.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If torch's safe loader cannot read it.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        msg = f"{option} {path} does not exist. Pass {expected}."
        raise FileNotFoundError(msg)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, AttributeError, TypeError, KeyError):
        msg = f"{option} {path} is not a checkpoint: {describe_file(file)}. Pass {expected}."
    raise ValueError(msg)  # outside the except block: torch's message advises unpickling the file, which is unsafe


def keep_head_only(checkpoint: dict[str, Any]) -> None:
    """Leave out the frozen CLIP, which is rebuilt from ``clip_model`` / ``clip_pretrained``, and ``prompt_weights``.

    The head the checkpoint holds replaces the ``prompt_weights`` it may have started from, so that loading it never
    needs (or reloads) that file.
    """
    checkpoint["hyper_parameters"]["prompt_weights"] = None
    state = checkpoint["state_dict"]
    for key in [key for key in state if key.startswith(CLIP_PREFIX)]:
        del state[key]


def put_back_clip(checkpoint: dict[str, Any], clip_state: dict[str, Any]) -> None:
    """Give a head-only checkpoint the frozen CLIP's tensors, for Lightning's strict ``load_state_dict``."""
    state = checkpoint["state_dict"]
    for key, value in clip_state.items():
        state.setdefault(CLIP_PREFIX + key, value)
