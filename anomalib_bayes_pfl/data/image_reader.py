# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""One reader for every image the product takes, files and arrays alike: read as anomalib reads it, or refused.

anomalib reads a file with ``PIL.Image.open(path).convert("RGB")`` and scales it to [0, 1]. Gray, palette, RGBA and
CMYK files come out right, but 16-bit and float files are clipped to 8 bits (almost every pixel becomes white), and a
truncated file fails only when a loader worker decodes it, naming no file. The same rules hold here for files (the
datamodule check at setup, :class:`~anomalib_bayes_pfl.deploy.BayesPFLInferencer`) and for arrays and tensors (the
inferencer): each input is read as anomalib would read its file, or refused with a message naming it and the fix.

Checking a file decodes it, because PIL's ``verify()`` does not look at JPEG data: a JPEG is decoded at 1/8 scale
(``draft``), which still reads its whole entropy-coded stream, so a cut file is caught as by a full decode; a PNG is
verified, which reads every chunk and its CRC; other formats are decoded in full.
Cost per 1500x1000 image (VisA's size), one idle core: JPEG 3.5 ms checked, 6.4 decoded; PNG 1.4 verified, 22 decoded.

Shapes: N images, H x W pixels.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageMode, UnidentifiedImageError
from torchvision.transforms.v2.functional import to_dtype, to_image

# What PIL raises for a file it cannot read or decode.
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
# Channel counts of a channels-last array: gray, RGB, RGBA.
CHANNELS_LAST = (1, 3, 4)
ACCEPTED = "(H, W) or (H, W, 1) gray, (H, W, 3) RGB, (H, W, 4) RGBA, (3, H, W) or (N, 3, H, W) RGB"


class ImageFileCheck(NamedTuple):
    """What :func:`check_image_file` found: the size ``(W, H)`` (``None`` if unreadable), and the problem if any."""

    size: tuple[int, int] | None
    problem: str | None


def _bit_depth_problem(what: str, path: str | Path, mode: str) -> str | None:
    """The refusal of a file whose pixels have more than 8 bits, which ``convert("RGB")`` clips."""
    if ImageMode.getmode(mode).typestr in {"|u1", "|b1"}:
        return None
    scale = "scale float values to 0-255" if mode == "F" else "divide 16-bit values by 256"
    return (
        f"{what} {path} has {mode} pixels, which anomalib's loader clips to 8 bits; convert it to an 8-bit image "
        f"first (e.g. {scale})"
    )


def _read_problem(what: str, path: str | Path, error: Exception) -> str:
    return f"{what} {path} cannot be read ({error}); copy it again from its source, or remove it from the data"


def check_image_file(path: str | Path, what: str = "image") -> ImageFileCheck:
    """Check that a file exists, has 8-bit pixels and decodes to its end, without reading it at full cost.

    Args:
        path: The image or mask file.
        what: Its role, which starts each problem (``image``, ``mask``).
    """
    if not Path(path).is_file():
        return ImageFileCheck(None, f"{what} {path} does not exist")
    try:
        with Image.open(path) as image:
            size = image.size
            problem = _bit_depth_problem(what, path, image.mode)
            if problem:
                return ImageFileCheck(size, problem)
            if image.format == "PNG":
                image.verify()
            else:
                if image.format == "JPEG":
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except READ_ERRORS as error:
        return ImageFileCheck(None, _read_problem(what, path, error))
    return ImageFileCheck(size, None)


def read_image_file(path: str | Path) -> torch.Tensor:
    """An image file as anomalib reads it: ``(3, H, W)`` float32 in [0, 1].

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If it cannot be decoded to its end (truncated, corrupt) or has more than 8 bits per channel.
    """
    if not Path(path).is_file():
        msg = f"image {path} does not exist"
        raise FileNotFoundError(msg)
    try:
        with Image.open(path) as image:
            problem = _bit_depth_problem("image", path, image.mode)
            rgb = None if problem else image.convert("RGB")  # decodes the whole file
    except READ_ERRORS as error:
        raise ValueError(_read_problem("image", path, error)) from error
    if problem:
        raise ValueError(problem)
    return to_dtype(to_image(rgb), torch.float32, scale=True)


def _describe(image: np.ndarray | torch.Tensor) -> str:
    dtype = str(image.dtype).removeprefix("torch.")
    return f"image of shape {tuple(image.shape)} and dtype {dtype}"


def _as_float(image: torch.Tensor, described: str) -> torch.Tensor:
    """uint8 scaled to [0, 1] as anomalib scales a file's pixels; float checked to be finite and in [0, 1]."""
    if image.dtype == torch.uint8:
        return to_dtype(image, torch.float32, scale=True)
    image = image.to(torch.float32)
    if not torch.isfinite(image).all():
        msg = f"{described} has NaN or Inf values; check how it was made"
        raise ValueError(msg)
    low, high = image.min().item(), image.max().item()
    if low < 0 or high > 1:
        fix = (
            "pass raw pixels, not normalised ones (the model normalises)"
            if low < 0
            else "divide 0-255 values by 255, or clamp(0, 1) after a resize that overshoots"
        )
        msg = f"{described} has values in [{low:.9g}, {high:.9g}], but a float image must be in [0, 1]: {fix}"
        raise ValueError(msg)
    return image


def _read_pil_image(image: Image.Image) -> torch.Tensor:
    """A PIL image already open, as anomalib reads its file: ``(3, H, W)`` float32 in [0, 1], or refused."""
    problem = _bit_depth_problem("image", "(a PIL image)", image.mode)
    if problem:
        raise ValueError(problem)
    return to_dtype(to_image(image.convert("RGB")), torch.float32, scale=True)


def as_image_batch(image: str | Path | Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any image input as a batch ``(N, 3, H, W)`` float32 in [0, 1], read as anomalib reads a file.

    Arrays and tensors hold RGB: an OpenCV image (BGR) needs ``cv2.cvtColor(image, cv2.COLOR_BGR2RGB)`` first, which
    cannot be detected here. uint8 values are divided by 255; float values must already be in [0, 1]. A gray
    ``(H, W)`` or ``(H, W, 1)`` image is repeated to three channels and the alpha of ``(H, W, 4)`` is dropped, as PIL
    converts such files. A 3-D input whose last axis has 1, 3 or 4 entries is channels-last, except a tensor whose first
    axis has 3 (torch's channels-first).

    Args:
        image: A file or a PIL image (any 8-bit mode), an array or a tensor: (H, W), (H, W, 1 | 3 | 4), (3, H, W),
            (N, 3, H, W).

    Raises:
        ValueError: Naming the file, or the shape and dtype, with the fix: 16-bit or float files, truncated files,
            integer images other than uint8, float images outside [0, 1] or not finite, other shapes.
        TypeError: For anything other than a path, array or tensor.
    """
    if isinstance(image, str | Path):
        return read_image_file(image).unsqueeze(0)
    if isinstance(image, Image.Image):
        return _read_pil_image(image).unsqueeze(0)
    if not isinstance(image, np.ndarray | torch.Tensor):
        msg = (
            f"cannot read an image from {type(image).__name__}: give a file path, a PIL image, a numpy array or a "
            f"torch tensor"
        )
        raise TypeError(msg)
    described = _describe(image)
    is_array = isinstance(image, np.ndarray)
    if is_array:
        is_uint8, is_float = image.dtype == np.uint8, np.issubdtype(image.dtype, np.floating)
    else:
        is_uint8, is_float = image.dtype == torch.uint8, image.is_floating_point()
    if not (is_uint8 or is_float):
        msg = (
            f"{described}: only uint8 (0-255) and float (0-1) images are read; convert it to 8-bit, or to float in "
            f"[0, 1] (16-bit: divide by 65535)"
        )
        raise ValueError(msg)
    images = torch.from_numpy(np.require(image, requirements="CW")) if is_array else image  # PIL's are read-only
    if images.ndim == 2:
        images = images.expand(3, *images.shape)
    elif images.ndim == 3 and images.shape[-1] in CHANNELS_LAST and (is_array or images.shape[0] != 3):
        images = images.expand(*images.shape[:2], 3) if images.shape[-1] == 1 else images[..., :3]
        images = images.permute(2, 0, 1)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        msg = f"{described} cannot be read as an image; accepted are {ACCEPTED}"
        raise ValueError(msg)
    return _as_float(images, described).contiguous()
