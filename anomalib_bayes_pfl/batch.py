# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What BayesPFL's test and predict steps return: anomalib's image batch with the model's extra outputs.

anomalib's ``ImageBatch`` has fixed fields (``update`` ignores unknown ones), so the extras are fields of a subclass;
its items carry them too, since anomalib's visualizer iterates over a batch's items.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from anomalib.data import ImageBatch, ImageItem


@dataclass
class BayesPFLItem(ImageItem):
    """One image of a :class:`BayesPFLBatch`."""

    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    paper_map_score: torch.Tensor | None = None


@dataclass
class BayesPFLBatch(ImageBatch):
    """An image batch with the prompt samples' disagreement and, for ``image_score="paper"``, the map score.

    Attributes:
        uncertainty: ``(N,)`` uncertainty of each image probability (``model/uncertainty.py``).
        uncertainty_map: ``(N, H, W)`` uncertainty of each anomaly-map pixel.
        paper_map_score: ``(N,)`` top-k mean of each unsmoothed map, the second input of the authors' fused score.
    """

    item_class: ClassVar[type[ImageItem]] = BayesPFLItem
    uncertainty: torch.Tensor | None = None
    uncertainty_map: torch.Tensor | None = None
    paper_map_score: torch.Tensor | None = None
