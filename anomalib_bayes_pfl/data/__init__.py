# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Data: the cross-dataset datamodule and its sources, per-image categories, checks, augmentations and trees.

The authors' augmentations, synthetic anomalies for normal-only training data, and synthetic dataset trees for the
demo and the tests.
"""

from .augmentation import AuthorsAugmentations
from .class_names import ImageCategory, class_name_from_path, image_categories
from .cross_dataset import ZeroShotCrossDataset
from .distributed import DropSamplerPadding
from .synthetic_anomalies import SyntheticAnomalies
from .validation import DataCheck

__all__ = [
    "AuthorsAugmentations",
    "DataCheck",
    "DropSamplerPadding",
    "ImageCategory",
    "SyntheticAnomalies",
    "ZeroShotCrossDataset",
    "class_name_from_path",
    "image_categories",
]
