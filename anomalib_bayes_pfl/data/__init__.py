# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Data: the cross-dataset datamodule, the authors' augmentations, per-image class names and synthetic dataset trees."""

from .augmentation import AuthorsAugmentations
from .class_names import ImageCategory, class_name_from_path, image_categories
from .cross_dataset import ZeroShotCrossDataset

__all__ = ["AuthorsAugmentations", "ImageCategory", "ZeroShotCrossDataset", "class_name_from_path", "image_categories"]
