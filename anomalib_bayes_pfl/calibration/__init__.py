# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Calibration: few-shot references, and thresholds with a known false-alarm rate that turn scores into labels.

``images.py`` draws normal images that no run scores, ``conformal.py`` turns their scores into thresholds,
``preparation.py`` gives each category its memory and thresholds, ``thresholds.py`` says which thresholds label an
image and an exported model, and ``post_processor.py`` labels with them.
"""

from .conformal import check_calibration, conformal_pixel_threshold, conformal_threshold
from .post_processor import ProbabilityPostProcessor
from .preparation import FewShotPreparation, prepare_references
from .thresholds import export_class_name, export_thresholds, reference_settings, thresholds_of

__all__ = [
    "FewShotPreparation",
    "ProbabilityPostProcessor",
    "check_calibration",
    "conformal_pixel_threshold",
    "conformal_threshold",
    "export_class_name",
    "export_thresholds",
    "prepare_references",
    "reference_settings",
    "thresholds_of",
]
