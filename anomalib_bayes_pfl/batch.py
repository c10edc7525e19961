# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What BayesPFL's test and predict steps return: anomalib's image batch with the model's extra outputs.

anomalib's ``ImageBatch`` has fixed fields (``update`` ignores unknown ones), so the extras are fields of a subclass;
its items carry them too, since anomalib's visualizer iterates over a batch's items. Each image's dataset, category
and class name are set once, when the batch is scored (:func:`~anomalib_bayes_pfl.data.class_names.image_categories`),
and everything that reports on the batch reads them here.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from anomalib.data import ImageBatch, ImageItem


@dataclass
class BayesPFLItem(ImageItem):
    """One image of a :class:`BayesPFLBatch`."""

    dataset: str | None = None
    category: str | None = None
    class_name: str | None = None
    image_threshold: torch.Tensor | None = None
    pixel_threshold: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    paper_map_score: torch.Tensor | None = None


@dataclass
class BayesPFLBatch(ImageBatch):
    """An image batch with where each image belongs, its thresholds, the prompt samples' disagreement and the map score.

    Attributes:
        dataset: Each image's dataset name (``""`` for loose files).
        category: Each image's category: its row of the per-category table and its review group.
        class_name: The word each image's prompts used.
        image_threshold: ``(N,)`` threshold that labelled each image (its category's calibrated one, or the option).
        pixel_threshold: ``(N,)`` the same for its map's pixels.
        uncertainty: ``(N,)`` uncertainty of each image probability (``model/uncertainty.py``).
        uncertainty_map: ``(N, H, W)`` uncertainty of each anomaly-map pixel.
        paper_map_score: ``(N,)`` top-k mean of each unsmoothed map, the second input of the authors' fused score.
    """

    item_class: ClassVar[type[ImageItem]] = BayesPFLItem
    dataset: list[str] | None = None
    category: list[str] | None = None
    class_name: list[str] | None = None
    image_threshold: torch.Tensor | None = None
    pixel_threshold: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    paper_map_score: torch.Tensor | None = None
