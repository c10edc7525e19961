# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Calibration: few-shot references and thresholds with a known false-alarm rate, prepared before scoring.

``images.py`` draws normal images that no run scores, ``conformal.py`` turns their scores into thresholds,
``preparation.py`` gives each category its memory and thresholds, ``thresholds.py`` says which thresholds label an
image, and ``labels.py`` scores and labels a batch with them.
"""

from .conformal import check_calibration, conformal_pixel_threshold, conformal_threshold
from .labels import score_and_label
from .preparation import FewShotPreparation, prepare_references
from .thresholds import export_class_name, reference_settings, thresholds_of

__all__ = [
    "FewShotPreparation",
    "check_calibration",
    "conformal_pixel_threshold",
    "conformal_threshold",
    "export_class_name",
    "prepare_references",
    "reference_settings",
    "score_and_label",
    "thresholds_of",
]
