# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Deployment: torch, ONNX and OpenVINO exports that score like the checkpoint, and their checks.

``export.py`` wraps anomalib's exports (one class name per exported model, said or refused), ``inferencer.py`` runs
an export with its uncertainty and decides per part, ``resize.py`` writes the
pre-processor's resize so that every runtime computes it alike, ``openvino.py`` holds OpenVINO's packages, INT8
calibration images and precision.
"""

from .export import BayesPFLExporter, check_exportable
from .inferencer import BayesPFLInferencer, BayesPFLPrediction
from .resize import MatrixResize, resize_by_matrices

__all__ = [
    "BayesPFLExporter",
    "BayesPFLInferencer",
    "BayesPFLPrediction",
    "MatrixResize",
    "check_exportable",
    "resize_by_matrices",
]
