# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Check image and mask files before any work starts, so that bad files stop a run with their names.

anomalib reads images with ``PIL.Image.convert("RGB")``: grayscale, palette and RGBA files come out right, but
16-bit and float images are clipped to 8 bits (almost every pixel becomes white) without a word, and a corrupt file
fails deep inside a data-loader worker. Checking headers is cheap (the pixels are not decoded).
"""

from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# PIL modes that convert("RGB") maps without losing range: everything but 16-bit and 32-bit integer/float pixels.
HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
MAX_LISTED = 10


def _open(path: str, what: str) -> tuple[tuple[int, int] | None, str | None]:
    """Return (size, problem) of an image file, verifying its structure without decoding its pixels."""
    if not Path(path).is_file():
        return None, f"{what} {path} does not exist"
    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return None, f"{what} {path} cannot be read ({error})"
    if mode in HIGH_BIT_DEPTH_MODES:
        return size, (
            f"{what} {path} has {mode} pixels, which anomalib's loader clips to 8 bits; convert it to an 8-bit "
            f"image first (e.g. divide 16-bit values by 256)"
        )
    return size, None


def check_image_files(samples: Iterable[tuple[str, str | None]]) -> None:
    """Check every ``(image_path, mask_path or None)`` pair.

    Raises:
        ValueError: Listing every unreadable, missing or high-bit-depth file, and every mask whose size differs
            from its image's.
    """
    problems = []
    for image_path, mask_path in samples:
        size, problem = _open(str(image_path), "image")
        if problem:
            problems.append(problem)
        if isinstance(mask_path, str) and mask_path:  # normal images have None, NaN or ""
            mask_size, mask_problem = _open(str(mask_path), "mask")
            if mask_problem:
                problems.append(mask_problem)
            elif size is not None and mask_size != size:
                mask_shape, image_shape = "x".join(map(str, mask_size)), "x".join(map(str, size))
                problems.append(f"mask {mask_path} is {mask_shape} but its image {image_path} is {image_shape}")
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        msg = f"{len(problems)} problem(s) with the dataset files:\n  {listed}{more}"
        raise ValueError(msg)
