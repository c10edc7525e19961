# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Per-category metrics, the zero-shot literature's protocol: each metric per target category, then the mean.

anomalib's Evaluator pools every test image, while zero-shot papers report per-category figures averaged over
categories. :class:`PerCategoryMetrics` keeps, for each dataset and category, anomalib's metrics and the states the
table needs (``CategoryCounts``, ``CategoryValues``, ``CategoryThresholds``), all torchmetrics metrics: with several
processes each process updates them with its share of the images, and computing them gathers every share. It reads
each image's dataset, category and thresholds from the scored batch (``BayesPFLBatch``); ``table.py`` turns the
computed states into the table, which is printed, written as CSV next to the run's other outputs, and logged as
``category_mean_<metric>`` so that the means also reach ``engine.test`` results and ``anomalib benchmark`` CSVs;
``plots.py`` draws each category's curves and histograms from the same states, in ``plots/``.
"""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.data import ImageBatch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.data.class_names import ImageCategory
from anomalib_bayes_pfl.data.validation import loader_files
from anomalib_bayes_pfl.reporting.review import indices_by_group
from anomalib_bayes_pfl.settings import BayesPFLSettings

from .evaluator import side_by_side_metrics
from .plots import PLOTS_DIR, write_plots
from .table import CSV_NAME, CategoryResults, per_category_table, print_table

logger = logging.getLogger(__name__)

# Images and pixels counted per category: which metrics are defined, and how the labels did.
COUNTS = (
    "normal_images",
    "anomalous_images",
    "anomalous_pixels",
    "masked_images",
    "labelled_images",
    "false_alarms",
    "found",
    "flagged_pixels",
    "normal_pixels",
    "wrong_pixels",
    "judged_pixels",
)
# Each image's values that the image-level columns read.
VALUES = ("probability", "label", "pred_label", "uncertainty", "needs_review", "map")
Key = tuple[str, str]


class CategoryCounts(Metric):
    """Images and pixels of one category, by what they are and how they were labelled (:data:`COUNTS`)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in COUNTS:
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, **counts: int) -> None:
        """Add to the named counts."""
        for name, count in counts.items():
            setattr(self, name, getattr(self, name) + count)

    def compute(self) -> dict[str, int]:
        """Every count, over every process."""
        return {name: int(getattr(self, name)) for name in COUNTS}


class CategoryValues(Metric):
    """Each image's values of one category (:data:`VALUES`), in order, over every process."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in VALUES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, **values: torch.Tensor) -> None:
        """Append the images' values."""
        for name, value in values.items():
            getattr(self, name).append(value)

    def compute(self) -> dict[str, torch.Tensor]:
        """The values that were given, each ``(n,)``."""
        return {name: dim_zero_cat(getattr(self, name)) for name in VALUES if len(getattr(self, name))}


class CategoryThresholds(Metric):
    """The image, pixel and review thresholds that labelled a category (every image of it has the same)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("image", "pixel", "review"):
            self.add_state(name, default=torch.tensor(float("-inf"), dtype=torch.float64), dist_reduce_fx="max")

    def update(self, image: torch.Tensor, pixel: torch.Tensor, review: torch.Tensor | None) -> None:
        """Record the thresholds of some images of the category."""
        self.image = torch.maximum(self.image, image.max().to(self.image))
        self.pixel = torch.maximum(self.pixel, pixel.max().to(self.pixel))
        if review is not None:
            self.review = torch.maximum(self.review, review.max().to(self.review))

    def compute(self) -> tuple[float, ...]:
        """The image and the pixel threshold, and the review threshold where there is one."""
        review = () if torch.isinf(self.review) else (float(self.review),)
        return float(self.image), float(self.pixel), *review


class CategoryMetrics:
    """Everything the table reads of one category: anomalib's metrics and the states above."""

    def __init__(self) -> None:
        self.scores = side_by_side_metrics()
        self.counts = CategoryCounts()
        self.values = CategoryValues()
        self.thresholds = CategoryThresholds()
        self.wrong_pixels = BinaryAUROC()  # how well each pixel's uncertainty finds the pixels labelled wrongly

    def update(self, batch: BayesPFLBatch, index: torch.Tensor) -> None:
        """Feed the images ``index`` of ``batch``; scores and maps go to the CPU, where the metrics keep them."""

        def pick(value: torch.Tensor | None) -> torch.Tensor | None:
            return value[index].detach().cpu() if value is not None else None

        fields = ("pred_score", "gt_label", "anomaly_map", "gt_mask", "pred_label", "pred_mask")
        subset = {name: pick(getattr(batch, name)) for name in fields}
        metric_batch = ImageBatch(image=torch.empty(len(index), 3, 0, 0), **subset)  # no metric reads the images
        for metric in self.scores:
            metric.update(metric_batch)
        labels = subset["gt_label"] if subset["gt_label"] is not None else torch.zeros(len(index), dtype=torch.long)
        masks, pred_label, pred_mask = subset["gt_mask"], subset["pred_label"], subset["pred_mask"]
        counts = {
            "normal_images": int((labels == 0).sum()),
            "anomalous_images": int((labels == 1).sum()),
            "anomalous_pixels": int(masks.sum()) if masks is not None else 0,
            "masked_images": len(index) if masks is not None else 0,
        }
        if pred_label is not None:
            flagged, normal = pred_label.bool(), labels == 0
            normal_masks = pred_mask[normal] if pred_mask is not None else None
            counts |= {
                "labelled_images": len(index),
                "false_alarms": int((flagged & normal).sum()),
                "found": int((flagged & ~normal).sum()),
                "flagged_pixels": int(normal_masks.sum()) if normal_masks is not None else 0,
                "normal_pixels": normal_masks.numel() if normal_masks is not None else 0,
            }
        uncertainty_map = pick(batch.uncertainty_map)
        if uncertainty_map is not None and masks is not None and pred_mask is not None:
            wrong = (pred_mask.bool() != masks.bool()).flatten()
            self.wrong_pixels.update(uncertainty_map.flatten(), wrong.long())
            counts |= {"wrong_pixels": int(wrong.sum()), "judged_pixels": wrong.numel()}
        self.counts.update(**counts)
        review = batch.review_threshold[index] if batch.review_threshold is not None and len(index) else None
        self.thresholds.update(batch.image_threshold[index], batch.pixel_threshold[index], review)
        if batch.gt_label is not None:
            values = {"probability": subset["pred_score"], "label": subset["gt_label"]}
            if pred_label is not None:
                values["pred_label"] = pred_label
            if batch.uncertainty is not None:
                values["uncertainty"] = pick(batch.uncertainty)
            if batch.needs_review is not None:
                values["needs_review"] = pick(batch.needs_review)
            if batch.paper_map_score is not None:
                values["map"] = pick(batch.paper_map_score)
            self.values.update(**values)

    def results(self) -> CategoryResults:
        """The computed states (gathered from every process) that the table reads."""
        return CategoryResults(self.scores, self.counts.compute(), self.values.compute(), self.thresholds.compute(),
                               self.wrong_pixels)  # fmt: skip


class PerCategoryMetrics(Callback):
    """Compute test metrics per category and their mean over categories.

    Args:
        categories_of: The dataset and category of each of some image paths (the run's one rule): every process
            creates the metrics of every category of the test set, so that each can gather the others' shares.
        settings: The run's options, when the run ends (the share to review).
    """

    def __init__(
        self,
        categories_of: Callable[[Sequence[str]], list[ImageCategory]],
        settings: Callable[[], BayesPFLSettings],
    ) -> None:
        self.categories_of = categories_of
        self.settings = settings
        self.metrics: dict[Key, CategoryMetrics] = {}
        self.table: Any = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from empty metrics, one set for each category of the test images."""
        del pl_module
        keys = {(name.dataset, name.category) for name in self.categories_of(loader_files(trainer.test_dataloaders))}
        self.metrics = {key: CategoryMetrics() for key in sorted(keys)}
        self.table = None

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: BayesPFLBatch,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Route each image's scores and maps to the metrics of its dataset and category."""
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        for key, index in indices_by_group(list(zip(outputs.dataset, outputs.category, strict=True))).items():
            self.metrics.setdefault(key, CategoryMetrics()).update(outputs, index)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the table, print it, write it as CSV with its plots and log the means over categories."""
        results = {key: self.metrics[key].results() for key in sorted(self.metrics)}
        table = per_category_table(results, self.settings().review_fraction)
        self.table = table
        for name, value in table.loc["mean"].drop(["dataset", "images"]).items():
            if value == value:  # not NaN
                pl_module.log(f"category_mean_{name}", float(value), sync_dist=trainer.world_size > 1)
        if trainer.global_rank:
            return
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        table.to_csv(root / CSV_NAME)
        print_table(table, results, root / CSV_NAME)
        write_plots(results, table, root / PLOTS_DIR)
