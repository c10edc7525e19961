# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What OpenVINO export needs beyond anomalib's: a resize OpenVINO reproduces, and INT8 calibration images.

OpenVINO's antialiased bicubic ``Interpolate`` does not compute what torch's does: an IR with torch's resize scores
raw-size images up to 0.3 away from the checkpoint. The same resize written as two matrix products converts exactly.
INT8 post-training quantization calibrates on raw training images, read as ``OpenVINOInferencer`` reads files: for
:class:`~anomalib_bayes_pfl.ZeroShotCrossDataset` the auxiliary dataset, for anomalib's datamodules their training
split, never a test split (anomalib's own INT8 calibrates on validation images, which may be test images).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from anomalib.data import AnomalibDataModule
from anomalib.data.utils import read_image
from anomalib.deploy import CompressionType
from anomalib.pre_processing import PreProcessor
from lightning_utilities.core.imports import module_available
from torch import nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

INT8_CALIBRATION_IMAGES = 300  # NNCF's default subset size
OPENVINO_REQUIREMENTS = {"openvino": "openvino>=2024.0", "nncf": "nncf>=2.10"}  # as the openvino extra
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


def check_openvino_export(compression_type: CompressionType | None, datamodule: AnomalibDataModule | None) -> None:
    """Refuse, before anything is exported, what is missing or would calibrate on test images."""
    needed = ["openvino"] + (["nncf"] if compression_type not in {None, CompressionType.FP16} else [])
    missing = [package for package in needed if not module_available(package)]
    if missing:
        requirements = " ".join(f"'{OPENVINO_REQUIREMENTS[package]}'" for package in missing)
        msg = (
            f"OpenVINO export needs {' and '.join(missing)}: pip install {requirements} (or, in this package's "
            f"repository, pip install '.[openvino]')."
        )
        raise ModuleNotFoundError(msg)
    if compression_type == CompressionType.INT8_ACQ:
        msg = (
            "--compression_type INT8_ACQ is not supported for BayesPFL: anomalib calibrates and checks it on "
            "validation images, which can be target test images. Use --compression_type INT8_PTQ, which "
            "calibrates on the auxiliary (training) images."
        )
        raise ValueError(msg)
    if compression_type == CompressionType.INT8_PTQ and datamodule is None:
        msg = (
            "--compression_type INT8_PTQ calibrates on the auxiliary (training) images: add --data, e.g. --data "
            "ZeroShotCrossDataset --data.auxiliary_root <folder> --data.auxiliary_format <format>."
        )
        raise ValueError(msg)


def calibration_image_paths(datamodule: AnomalibDataModule, count: int = INT8_CALIBRATION_IMAGES) -> list[Path]:
    """Up to ``count`` training images of ``datamodule``, spread evenly over them (so over its categories)."""
    datamodule.setup("fit")
    dataset = getattr(datamodule, "train_data", None)
    samples = getattr(dataset, "samples", None)
    if samples is None or samples.empty:
        msg = (
            f"INT8 calibration found no training images in {type(datamodule).__name__}: give the auxiliary (training) "
            "data to calibrate on, e.g. --data ZeroShotCrossDataset --data.auxiliary_root <folder>, or export "
            "without --compression_type INT8_PTQ."
        )
        raise ValueError(msg)
    paths = sorted(set(samples.image_path))
    if len(paths) > count:
        paths = [paths[index * len(paths) // count] for index in range(count)]
    logger.log(
        logging.WARNING if len(paths) < INT8_CALIBRATION_IMAGES else logging.INFO,
        "INT8 calibration on %d training images of %s (NNCF recommends %d).",
        len(paths),
        type(datamodule).__name__,
        INT8_CALIBRATION_IMAGES,
    )
    return [Path(path) for path in paths]


def _as_input(path: Path) -> np.ndarray:
    """An image file as ``OpenVINOInferencer`` feeds it: ``(1, 3, H, W)`` float RGB in [0, 1], at its own size."""
    return read_image(path, as_tensor=True).unsqueeze(0).numpy()


def quantize(model: "ov.Model", paths: list[Path]) -> "ov.Model":
    """INT8 post-training quantization of ``model`` on the images at ``paths``, with NNCF's transformer preset."""
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(paths, _as_input),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(paths),
    )


def warn_if_cpu_lowers_precision() -> None:
    """Say so when this machine's OpenVINO computes on the CPU in less than fp32 unless asked otherwise."""
    import openvino as ov

    precision = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    if precision != ov.Type.f32:
        logger.warning(
            "OpenVINO computes on this CPU in %s by default, which moves the scores away from the checkpoint's. To "
            "score as the checkpoint does, load the model with OpenVINOInferencer(path, device='CPU', "
            "config={'INFERENCE_PRECISION_HINT': 'f32'}); the README gives the measured difference.",
            precision.get_type_name(),
        )
