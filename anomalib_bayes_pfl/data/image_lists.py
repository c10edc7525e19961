# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Lists of images: the image files of a folder, and the normal images of an anomalib dataset.

Category discovery, mask matching, few-shot references and calibration all list images the same way, so that they
agree on which files are images.
"""

from pathlib import Path

from anomalib.data.datasets import AnomalibDataset
from anomalib.data.utils import LabelName
from torchvision.datasets.folder import IMG_EXTENSIONS


def image_files(folder: Path, pattern: str = "**/*") -> list[Path]:
    """The image files of a folder, by default anywhere under it as anomalib lists them (none for a missing folder)."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob(pattern) if path.suffix.lower() in IMG_EXTENSIONS and path.is_file())


def normal_images(dataset: AnomalibDataset | None) -> list[str]:
    """The image paths of the normal samples of an anomalib dataset (none without one)."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return []
    return [str(path) for path in samples.image_path[samples.label_index == LabelName.NORMAL]]
