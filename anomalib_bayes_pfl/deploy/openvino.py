# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What OpenVINO export needs beyond anomalib's: its packages, INT8 calibration images, and a word on precision.

The resize that OpenVINO reproduces is ``resize.py``'s, in every ONNX file an IR is made from. INT8 post-training
quantization calibrates on raw training images, read as ``OpenVINOInferencer`` reads files: for
:class:`~anomalib_bayes_pfl.ZeroShotCrossDataset` the auxiliary dataset, for anomalib's datamodules their training
split, never a test split (anomalib's own INT8 calibrates on validation images, which may be test images).
"""

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from anomalib.data import AnomalibDataModule
from anomalib.data.utils import read_image
from anomalib.deploy import CompressionType
from lightning_utilities.core.imports import module_available

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

INT8_CALIBRATION_IMAGES = 300  # NNCF's default subset size
OPENVINO_REQUIREMENTS = {"openvino": "openvino>=2024.0", "nncf": "nncf>=2.10"}  # as the openvino extra


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
            "config={'INFERENCE_PRECISION_HINT': 'f32'}) (BayesPFLInferencer computes in f32 by default); "
            "docs/deployment.md gives the measured difference.",
            precision.get_type_name(),
        )
