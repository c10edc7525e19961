# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Load head weights: the authors' released checkpoints, our Lightning checkpoints, or a bare head state dict.

The authors' ``train_visa.pth`` / ``train_mvtec.pth`` hold ``{'MyModel': state_dict}`` of their
``Context_Prompting`` head (authors: train.py L281-283). Their key layout is translated here; their unused
decoders and ``p_mu`` layers, and the duplicate keys of their shared encoders, are dropped.
"""

import logging
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint_files import PROMPT_WEIGHTS, read_checkpoint
from .torch_model import BayesPFLModel

logger = logging.getLogger(__name__)

REFERENCE_KEY = "MyModel"

# Authors' key prefix -> our key prefix, for tensors that keep their shape.
_REFERENCE_PREFIXES = (
    ("prompt_context", "prompts.context"),
    ("prompt_state_normal", "prompts.state_normal"),
    ("prompt_state_abnormal", "prompts.state_abnormal"),
    ("temperature_pixel", "pixel_logit_scale"),
    ("temperature_image", "image_head.logit_scale"),
    ("context_encoder.weight_mean.module.", "distributions.image_specific.encoder.mean."),
    ("context_encoder.weight_log_variance.module.", "distributions.image_specific.encoder.log_variance."),
    ("state_encoder.weight_mean.module.", "distributions.state_encoder.mean."),
    ("state_encoder.weight_log_variance.module.", "distributions.state_encoder.log_variance."),
    ("PFL_context.amor_", "distributions.image_specific.flow_"),
    ("PFL_normal.state", "distributions.normal.state"),
    ("PFL_abnormal.state", "distributions.abnormal.state"),
    ("RCA.linear_proj.", "rca.patch_projections."),
    ("RCA.q_proj_pre.", "rca.query."),
    ("class_mapping.", "image_head.text_mapping."),
    ("image_mapping.", "image_head.image_mapping."),
    ("fuse.fuse_modules.", "image_head.patch_pooling.project."),
    ("fuse.compress.", "image_head.patch_pooling.score."),
    ("fuse.post_process.", "image_head.patch_pooling.output."),
)
# Image-agnostic flow parameters, stored as (1, K, D, 1), (1, K, 1, D) and (1, K, 1, 1) by the authors.
_REFERENCE_IAD_FLOW = re.compile(r"PFL_(normal|abnormal)\.amor_([uwb])$")
# Dead code in the authors' head, and second names of their shared encoders (authors: VPB.py L205-225).
_REFERENCE_UNUSED = re.compile(r"^(context_decoder|state_decoder|PFL_\w+\.(encoder|decoder|p_mu))\.")


def convert_reference_state_dict(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate the authors' ``Context_Prompting`` state dict into :class:`BayesPFLModel` keys.

    Raises:
        KeyError: If a key is not part of the authors' layout.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in reference.items():
        if _REFERENCE_UNUSED.match(key):
            continue
        if match := _REFERENCE_IAD_FLOW.match(key):
            kind, letter = match.groups()
            flat = value.reshape(value.shape[1], -1)
            converted[f"distributions.{kind}.flow_{letter}"] = flat.squeeze(-1) if letter == "b" else flat
            continue
        for old, new in _REFERENCE_PREFIXES:
            if key.startswith(old):
                converted[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        msg = f"not a Bayes-PFL reference checkpoint: unexpected keys {unknown[:8]}"
        raise KeyError(msg)
    if "rca.query.weight" in converted:  # Conv1d(D, D, 1) -> Linear(D, D)
        converted["rca.query.weight"] = converted["rca.query.weight"].squeeze(-1)
    for key in ("distributions.normal.state", "distributions.abnormal.state"):
        if key in converted:
            converted[key] = converted[key].reshape(1, -1)
    return converted


def _head_state_from_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Return the head tensors in our layout, and the extra state to apply (``None`` to keep the stored one)."""
    checkpoint = read_checkpoint(path, "--model.prompt_weights", PROMPT_WEIGHTS)
    if not isinstance(checkpoint, dict):
        msg = f"prompt weights '{path}' hold a {type(checkpoint).__name__}, expected a checkpoint dictionary."
        raise TypeError(msg)
    if REFERENCE_KEY in checkpoint:
        logger.info("Reading the authors' Bayes-PFL head from %s", path)
        # The released checkpoints are the stage-2 heads the authors' test.py uses.
        return convert_reference_state_dict(checkpoint[REFERENCE_KEY]), {"image_head_stage": 2, "is_trained": True}
    if "state_dict" in checkpoint:
        state = {
            key.removeprefix("model."): value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith("model.")
        }
        return state, None
    return checkpoint, None


def load_head_weights(model: BayesPFLModel, path: str) -> None:
    """Load head weights from ``path`` into ``model`` and mark it trained.

    Accepts the authors' ``{'MyModel': ...}`` files, our Lightning checkpoints (``anomalib train`` output) and
    bare head state dicts.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If keys are missing, unexpected, or of the wrong shape; the message names them.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        msg = (
            f"prompt weights '{path}' do not exist; pass the checkpoint written by 'anomalib train' or the "
            f"authors' train_visa.pth / train_mvtec.pth."
        )
        raise FileNotFoundError(msg)
    state, extra_state = _head_state_from_file(file)
    state = {key: value for key, value in state.items() if not key.startswith("clip.")}
    expected = model.head_state_dict()
    if extra_state is not None:
        state["_extra_state"] = extra_state
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if isinstance(expected[key], torch.Tensor) and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        msg = (
            f"prompt weights '{path}' do not fit this model configuration: missing keys {missing[:8]}, unexpected "
            f"keys {unexpected[:8]}, shape mismatches {mismatched[:8]}. Build the model with the CLIP and "
            f"prompt/flow sizes the weights were trained with."
        )
        raise ValueError(msg)
    model.load_state_dict(state, strict=False)
    model.is_trained = True
