# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The pre-processor's resize as two matrix products, which every ONNX runtime and OpenVINO compute alike.

OpenVINO's antialiased bicubic ``Interpolate`` does not compute what torch's does: an IR with torch's resize scored
raw-size images up to 0.3 away from the checkpoint, and the same ONNX file scored 0.002 apart in onnxruntime and in
OpenVINO. The same resize written as two matrix products converts exactly, so exported graphs resize that way.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from anomalib.pre_processing import PreProcessor
from torch import nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

CUBIC_COEFFICIENT = -0.5  # torch's antialiased bicubic, like PIL's (not the -0.75 of its plain bicubic)


def cubic_resize_weights(in_size: int, out_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(out_size, in_size)`` weights of torch's antialiased bicubic resize along one axis.

    When shrinking, the cubic kernel is stretched by the scale (the antialiasing); each row is normalised, which is
    also how the border is handled.
    """
    scale = in_size / out_size
    centres = (torch.arange(out_size, dtype=dtype) + 0.5) * scale
    distance = (torch.arange(in_size, dtype=dtype)[None, :] + 0.5 - centres[:, None]).abs() / torch.sym_max(scale, 1.0)
    a = CUBIC_COEFFICIENT
    near = ((a + 2) * distance - (a + 3)) * distance * distance + 1
    far = (((distance - 5) * distance + 8) * distance - 4) * a
    weights = torch.where(distance < 1, near, torch.where(distance < 2, far, torch.zeros_like(distance)))
    return weights / weights.sum(dim=1, keepdim=True)


class MatrixResize(nn.Module):
    """torch's antialiased bicubic resize as two matrix products, which OpenVINO converts exactly.

    Args:
        size: Output ``(height, width)``.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``(..., H, W)`` images of any size to :attr:`size`."""
        height, width = images.shape[-2:]
        rows = cubic_resize_weights(height, self.size[0]).to(images)
        columns = cubic_resize_weights(width, self.size[1]).to(images)
        return rows @ images @ columns.T


def _is_antialiased_bicubic(transform: nn.Module) -> bool:
    return (
        isinstance(transform, Resize) and transform.interpolation == InterpolationMode.BICUBIC and transform.antialias
    )


@contextmanager
def resize_by_matrices(pre_processor: PreProcessor) -> Iterator[None]:
    """Within the block, exported graphs normalise, then resize by :class:`MatrixResize`.

    The same numbers as resizing first (each output pixel is a weighted mean, its weights summing to one), but
    OpenVINO's CPU plugin fails to compile a fixed-size graph whose per-channel normalisation follows the matrix
    products. A pre-processor other than a bicubic antialiased resize and normalisations is exported as it is.
    """
    export_transform = pre_processor.export_transform
    steps = export_transform.transforms if isinstance(export_transform, Compose) else []
    resizes = [step for step in steps if _is_antialiased_bicubic(step)]
    others = [step for step in steps if not _is_antialiased_bicubic(step)]
    if len(resizes) == 1 and all(isinstance(step, Normalize) for step in others):
        pre_processor.export_transform = Compose([*others, MatrixResize(tuple(resizes[0].size))])
    try:
        yield
    finally:
        pre_processor.export_transform = export_transform
