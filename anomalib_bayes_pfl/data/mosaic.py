# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' 2x2 mosaic of anomalous training images, used when MVTec AD is the auxiliary set.

Bayes-PFL (github xiaozhen228/Bayes-PFL, ``datasets.py:218-259, 284-288``, from APRIL-GAN) replaces some training
items with four anomalous images of their category pasted together, masks pasted alike, before the augmentations
(``augmentation.py``) see them.
"""

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data.dataclasses import ImageItem
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.utils import LabelName
from anomalib.data.utils.image import read_image, read_mask
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F  # noqa: N812


def _tile(quadrants: Sequence[tv_tensors.TVTensor]) -> tv_tensors.TVTensor:
    """Top-left, top-right, bottom-left, bottom-right, as the authors paste them (datasets.py:243-257)."""
    rows = [torch.cat(list(quadrants[:2]), dim=-1), torch.cat(list(quadrants[2:]), dim=-1)]
    return tv_tensors.wrap(torch.cat(rows, dim=-2), like=quadrants[0])  # torch.cat drops the type of its inputs


class MosaicDataset(AnomalibDataset):
    """A training dataset whose items are, with some probability, 2x2 mosaics of anomalous images of their category.

    The authors' recipe when MVTec AD is the auxiliary set (datasets.py:284-288, ``combine_img`` at 218-259, from
    APRIL-GAN): any training item, normal or anomalous, is replaced with probability ``aug_rate`` = 0.4
    (datasets.py:40) by four anomalous images of the item's category, each drawn independently from all of them
    (with replacement, datasets.py:222-227), pasted at the first one's size with their masks pasted the same way
    (datasets.py:241-257). The mosaic is anomalous (datasets.py:288) and then goes through the augmentations like
    any training image (datasets.py:309-310); it keeps the item's image path, so its category stays known, and has no
    mask file. Images of another size are resized to the first one's (the authors assume one size per category, as
    in MVTec AD). An item whose category has no anomalous images, or none known, stays as it is. Draws use torch's
    random generator, which the DataLoader seeds in each worker from the main process's.

    Args:
        dataset: The training dataset; its samples, augmentations, name and category are taken over.
        probability: Chance that an item is replaced by a mosaic.
        category_of: Category of an image path (e.g. ``ZeroShotCrossDataset.class_name_of``).

    Raises:
        ValueError: If ``probability`` is not in [0, 1].
    """

    def __init__(self, dataset: AnomalibDataset, probability: float, category_of: Callable[[str], str | None]) -> None:
        if not 0.0 <= probability <= 1.0:
            msg = f"the mosaic probability must be in [0, 1], got {probability}."
            raise ValueError(msg)
        super().__init__(augmentations=dataset.augmentations)
        self.probability = probability
        self.category = dataset.category
        self._source_name = dataset.name
        self.samples = dataset.samples.assign(category=dataset.samples.image_path.map(category_of))

    @property
    def name(self) -> str:
        """The wrapped dataset's name (anomalib names output folders after it)."""
        return self._source_name

    def _mosaic(self, picks: pd.DataFrame) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
        """Tile four samples' images, and their masks if the dataset has masks, at the first image's size."""
        images = [read_image(path, as_tensor=True) for path in picks.image_path]
        size = list(images[0].shape[-2:])
        image = _tile([F.resize(quadrant, size) for quadrant in images])
        if self.task != TaskType.SEGMENTATION:
            return image, None
        return image, _tile([F.resize(read_mask(path, as_tensor=True), size) for path in picks.mask_path])

    def __getitem__(self, index: int) -> ImageItem:
        if float(torch.rand(())) >= self.probability:
            return super().__getitem__(index)
        samples = self.samples
        category = samples.category.iloc[index]
        pool = samples.index[(samples.category == category) & (samples.label_index == LabelName.ABNORMAL)]
        if pool.empty:
            return super().__getitem__(index)
        image, mask = self._mosaic(samples.loc[pool[torch.randint(len(pool), (4,)).tolist()]])
        if self.augmentations:
            if mask is None:
                image = self.augmentations(image)
            else:
                image, mask = self.augmentations(image, mask)
        return ImageItem(
            image=image,
            gt_mask=mask,
            gt_label=torch.tensor(int(LabelName.ABNORMAL)),
            image_path=samples.image_path.iloc[index],
            mask_path="",
        )
