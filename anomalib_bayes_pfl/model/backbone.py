# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Frozen CLIP backbone: building it from any open_clip source, and tapping multi-layer patch tokens.

Every touch of open_clip's vision internals lives here (the text side lives in ``prompts.py``). A unit test pins
:func:`encode_image_taps` against ``CLIP.encode_image`` on a tiny model.

Shape legend: N images, L patch tokens, C vision width, D joint embedding width.
"""

import json
import logging
import os
import socket
import urllib.error
import urllib.parse
import zipfile
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
from open_clip.model import CLIP
from timm.layers import resample_abs_pos_embed

from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG, TINY_CLIP_NAME

from .checkpoint_files import CLIP_WEIGHTS, describe_file, read_checkpoint

logger = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
CONNECT_TIMEOUT_S = 5.0

# Keys of OpenAI's JIT archives that are metadata, not CLIP parameters.
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def _resolve_model_name(clip_model: str) -> str:
    """Return an open_clip model name, registering ``clip_model`` first when it is a JSON config file."""
    if clip_model == TINY_CLIP_NAME:
        clip_model = TINY_CLIP_CONFIG
    if clip_model.endswith(".json"):
        path = Path(clip_model).expanduser()
        if not path.is_file():
            msg = f"CLIP model config '{clip_model}' does not exist; pass an open_clip model name or a JSON file."
            raise FileNotFoundError(msg)
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as err:
            msg = f"CLIP model config '{clip_model}' is not valid JSON: {err}."
            raise ValueError(msg) from err
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(clip_model) is None:
        msg = (
            f"Unknown CLIP model '{clip_model}'; use an open_clip model name (see open_clip.list_models(), e.g. "
            f"'ViT-L-14-336'), '{TINY_CLIP_NAME}' (a tiny test model, with --model.clip_pretrained null) or the "
            f"path of an open_clip model-config JSON file."
        )
        raise ValueError(msg)
    return clip_model


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or Path(value).suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}


def _hf_hub_source(pretrained_cfg: dict) -> tuple[str, str]:
    """Repository id and file name of an open_clip ``hf_hub`` entry (``org/name/`` means the default file)."""
    repo_id, filename = os.path.split(pretrained_cfg["hf_hub"])
    return repo_id, filename or "open_clip_pytorch_model.bin"


def _cached_weights(pretrained_cfg: dict, cache_dir: str | None) -> str | None:
    """The weights file of an open_clip tag if it is already on disk (open_clip's or Hugging Face's cache)."""
    url = pretrained_cfg.get("url", "")
    if url:
        cached = Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url)
        return str(cached) if cached.is_file() else None
    if pretrained_cfg.get("hf_hub"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        repo_id, filename = _hf_hub_source(pretrained_cfg)
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True)
        except LocalEntryNotFoundError:
            return None
    return None


def _host_is_reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the host of ``url`` opens within ``timeout`` seconds."""
    parsed = urllib.parse.urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _resolve_weights_file(model_name: str, pretrained: str, cache_dir: str | None) -> str:
    """Return a local weights file for ``pretrained`` (a file path or an open_clip tag), downloading a tag.

    A tag is looked up in the caches first; a download starts only after its host answered within
    ``CONNECT_TIMEOUT_S`` seconds, so that a machine without network fails at once with what to do instead of
    retrying for minutes.
    """
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser())
    if _looks_like_path(pretrained):
        msg = (
            f"CLIP weights '{pretrained}' do not exist; pass --model.clip_pretrained with an existing local file, "
            f"or an open_clip tag such as 'openai' on a machine with internet access."
        )
        raise FileNotFoundError(msg)
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        choices = f"one of its tags {tags}, " if tags else ""
        msg = (
            f"'{pretrained}' is neither a file nor an open_clip tag of '{model_name}'. Pass {choices}the path of a "
            f"local checkpoint, or --model.clip_pretrained null for random weights."
        )
        raise ValueError(msg)
    cached = _cached_weights(pretrained_cfg, cache_dir)
    if cached is not None:
        return cached
    if pretrained_cfg.get("url"):
        source = pretrained_cfg["url"]
    else:
        repo_id, filename = _hf_hub_source(pretrained_cfg)
        source = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
    advice = (
        f"Download {source} on a machine with internet access and pass the file as --model.clip_pretrained "
        f"<path> (or put it in the open_clip / Hugging Face cache)."
    )
    if not _host_is_reachable(source, CONNECT_TIMEOUT_S):
        msg = f"CLIP weights '{model_name}' / '{pretrained}' are not cached and {source} cannot be reached. {advice}"
        raise RuntimeError(msg)
    try:
        return open_clip.download_pretrained(pretrained_cfg, cache_dir=cache_dir)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        msg = f"Could not fetch CLIP weights '{model_name}' / '{pretrained}' ({err}). {advice}"
        raise RuntimeError(msg) from err


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_clip_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read CLIP weights from an OpenAI JIT archive, a torch state dict or a safetensors file, as float32.

    ``open_clip.create_model(pretrained=<JIT file>)`` fails on torch >= 2.6 (``weights_only`` default), and
    the ``'openai'`` tag builds QuickGELU towers; reading the tensors here lets one loader serve every source
    and every activation.
    """
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except SafetensorError:
            msg = f"--model.clip_pretrained {path} is not a safetensors file: {describe_file(Path(path))}."
            raise ValueError(msg) from None
    elif _is_torchscript_archive(path):
        state = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        state = read_checkpoint(path, "--model.clip_pretrained", CLIP_WEIGHTS)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        msg = f"CLIP weights '{path}' hold a {type(state).__name__}, expected a state dict or an OpenAI JIT archive."
        raise TypeError(msg)
    return {
        key.removeprefix("module."): value.float() if value.is_floating_point() else value
        for key, value in state.items()
        if key not in _OPENAI_METADATA_KEYS
    }


def load_clip(
    clip_model: str = "ViT-L-14-336",
    pretrained: str | None = "openai",
    *,
    quick_gelu: bool = False,
    cache_dir: str | None = None,
) -> CLIP:
    """Build a frozen open_clip ``CLIP`` in eval mode.

    The towers are built from the open_clip config, so their activation follows ``quick_gelu`` whatever the
    weights source: the authors trained Bayes-PFL on OpenAI weights run with exact GELU (their CLIP blocks in
    models/transformer.py), while open_clip's ``'openai'`` path would build QuickGELU towers.

    Args:
        clip_model: An open_clip model name, or the path of an open_clip model-config JSON file (any architecture
            whose joint embedding width equals its text width).
        pretrained: An open_clip tag (downloaded into open_clip's cache), a local checkpoint file (OpenAI JIT
            archive, state dict or safetensors), or ``None`` for random weights (always the same ones, drawn
            from a fixed seed).
        quick_gelu: Force QuickGELU activations; ``False`` keeps the config's activation (exact GELU for the
            standard ViT configs).
        cache_dir: Download directory for tags (open_clip's default when ``None``).

    Returns:
        The frozen model.

    Example:
        >>> from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
        >>> clip = load_clip(TINY_CLIP_CONFIG, pretrained=None)
        >>> any(p.requires_grad for p in clip.parameters())
        False
    """
    model_name = _resolve_model_name(clip_model)
    # Random weights are seeded, so that a head-only checkpoint of a randomly initialised CLIP (tests,
    # benchmarks) rebuilds the same CLIP on load; the global RNG is left untouched. They are drawn on the CPU whatever
    # the default device (Lightning's configure_model sets its root device), and only the CPU generator is seeded:
    # fork_rng(devices=[]) restores no CUDA generator, which draws the training noise under the run's own seed.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.random.default_generator.manual_seed(RANDOM_INIT_SEED)
        clip = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    if not isinstance(clip, CLIP):
        msg = f"'{clip_model}' builds a {type(clip).__name__}; Bayes-PFL needs a standard open_clip CLIP model."
        raise TypeError(msg)
    if pretrained:
        weights = _resolve_weights_file(model_name, pretrained, cache_dir)
        logger.info("Loading CLIP weights for %s from %s", model_name, weights)
        clip.load_state_dict(read_clip_state_dict(weights), strict=True)
    else:
        logger.info("Building %s with random weights (clip_pretrained=None)", model_name)
    return clip.requires_grad_(False).eval()


class ImageFeatures(NamedTuple):
    """Output of :func:`encode_image_taps`.

    Attributes:
        global_features: Projected CLS feature ``(N, D)``, not normalised.
        patch_tokens: Raw tokens of each tapped block without the CLS token, before ``ln_post`` and ``proj``,
            each ``(N, L, C)``.
    """

    global_features: torch.Tensor
    patch_tokens: list[torch.Tensor]


def interpolate_positional_embedding(positional_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize a ViT positional embedding ``(1 + G*G, C)`` to ``(1 + grid_size**2, C)``.

    Bicubic with antialiasing and ``align_corners=False``, like the authors (model_CLIP.py L276-314), computed in
    float32 and cast back: timm's ``resample_abs_pos_embed``, bit for bit what this package computed itself, which also
    keeps the resize in exported graphs whatever the example input's size.
    """
    resized = resample_abs_pos_embed(
        positional_embedding.unsqueeze(0), [grid_size, grid_size], interpolation="bicubic", antialias=True
    )
    return resized[0]


def check_image_tower(clip: CLIP) -> None:
    """Reject image towers that :func:`encode_image_taps` cannot run faithfully."""
    visual = clip.visual
    if not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None:
        msg = "Bayes-PFL needs an open_clip ViT image tower without attentional pooling."
        raise TypeError(msg)
    if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool", False):
        msg = "Bayes-PFL needs a ViT image tower that pools the CLS token after ln_post (OpenAI CLIP layout)."
        raise TypeError(msg)


@torch.no_grad()
def encode_image_taps(clip: CLIP, images: torch.Tensor, tap_layers: tuple[int, ...]) -> ImageFeatures:
    """Run the frozen CLIP image tower once, returning the global feature and the tapped patch tokens.

    Equals ``clip.encode_image`` for the global feature at the native resolution (pinned by a unit test); at other
    resolutions the positional embedding is interpolated. Runs without gradients: CLIP is frozen.

    Args:
        clip: The frozen CLIP.
        images: ``(N, 3, H, H)`` normalised images, ``H`` a multiple of the patch size.
        tap_layers: 1-based numbers of the blocks to tap.
    """
    visual = clip.visual
    patch_size = visual.conv1.kernel_size[0]
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        msg = (
            f"images must be (N, 3, H, H), got {tuple(images.shape)}; convert grayscale or RGBA images to RGB "
            f"and resize them to a square in the pre-processor."
        )
        raise ValueError(msg)
    if images.shape[-1] % patch_size:
        msg = f"image side {images.shape[-1]} is not a multiple of the CLIP patch size {patch_size}."
        raise ValueError(msg)
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    grid_size = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([class_token, x], dim=1)
    x = x + interpolate_positional_embedding(visual.positional_embedding, grid_size).to(x.dtype)
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND, open_clip 2.24's block layout
    tap_indices = {layer - 1 for layer in tap_layers}
    taps: dict[int, torch.Tensor] = {}
    for index, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        if index in tap_indices:
            taps[index] = x[1:].permute(1, 0, 2)
    pooled = visual.ln_post(x[0])
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return ImageFeatures(pooled, [taps[layer - 1] for layer in tap_layers])
