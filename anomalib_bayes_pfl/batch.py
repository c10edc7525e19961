# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What BayesPFL's test and predict steps return: anomalib's image batch with the model's extra outputs.

anomalib's ``ImageBatch`` has fixed fields (``update`` ignores unknown ones), so the extras are fields of a subclass;
its items carry them too, since anomalib's visualizer iterates over a batch's items. Each image's dataset, category
and class name are set once, when the batch is scored (:func:`~anomalib_bayes_pfl.data.class_names.image_categories`),
and everything that reports on the batch reads them here.
"""

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

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
    review_threshold: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    needs_review: torch.Tensor | None = None
    paper_map_score: torch.Tensor | None = None


@dataclass
class BayesPFLBatch(ImageBatch):
    """An image batch with each image's category, thresholds, uncertainty, review mark and map score.

    Attributes:
        dataset: Each image's dataset name (``""`` for loose files).
        category: Each image's category: its row of the per-category table and its review group.
        class_name: The word each image's prompts used.
        image_threshold: ``(N,)`` threshold that labelled each image (its category's calibrated one, or the option).
        pixel_threshold: ``(N,)`` the same for its map's pixels.
        review_threshold: ``(N,)`` with ``review_rate``, the uncertainty above which each image needs review.
        uncertainty: ``(N,)`` uncertainty of each image probability (``model/uncertainty.py``).
        uncertainty_map: ``(N, H, W)`` uncertainty of each anomaly-map pixel.
        needs_review: ``(N,)`` with ``review_rate``, whether each image goes to a person (its uncertainty is above its
            review threshold).
        paper_map_score: ``(N,)`` top-k mean of each unsmoothed map, the second input of the authors' fused score.
    """

    item_class: ClassVar[type[ImageItem]] = BayesPFLItem
    dataset: list[str] | None = None
    category: list[str] | None = None
    class_name: list[str] | None = None
    image_threshold: torch.Tensor | None = None
    pixel_threshold: torch.Tensor | None = None
    review_threshold: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    needs_review: torch.Tensor | None = None
    paper_map_score: torch.Tensor | None = None


class BayesPFLInferenceBatch(NamedTuple):
    """What a model exported with ``export_uncertainty`` returns: anomalib's four fields, then the uncertainty.

    anomalib's ``InferenceBatch`` takes no other fields, so anomalib's inferencers read only the default export; this
    one is read by :class:`~anomalib_bayes_pfl.deploy.BayesPFLInferencer`. ``needs_review`` is ``None`` (no output)
    without ``review_rate``.
    """

    pred_score: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None
    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    needs_review: torch.Tensor | None = None
