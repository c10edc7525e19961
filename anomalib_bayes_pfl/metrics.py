# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Per-category metrics, the zero-shot literature's protocol: each metric per target category, then the mean.

anomalib's Evaluator pools every test image, while zero-shot papers report per-category figures averaged over
categories. :class:`PerCategoryMetrics` keeps one set of metrics per category (read from each image path), prints
the table, writes it as CSV next to the run's other outputs, and logs the means as ``category_mean_<metric>`` so
that they also reach ``engine.test`` results and ``anomalib benchmark`` CSVs.

It reads the model's own scores, the probabilities of the head trained on the auxiliary data, before the
post-processor labels them; a metric a category cannot define is NaN, with a warning that says why.

``image_score="paper"`` adds the authors' fused image score (``paper_score.py``) as more columns.
"""

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPR, AUPRO, AUROC, F1Max
from anomalib.metrics.base import AnomalibMetric
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl.data.class_names import category_of
from anomalib_bayes_pfl.paper_score import fuse_paper_scores

logger = logging.getLogger(__name__)

CSV_NAME = "per_category_metrics.csv"
MEAN_ROW = "mean"
UNKNOWN_CATEGORY = "all"


def zero_shot_metrics() -> list[AnomalibMetric]:
    """The zero-shot literature's metrics: image AUROC, AP (AUPR) and F1Max; pixel AUROC and AUPRO."""
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


def _metrics() -> list[AnomalibMetric]:
    """Per category, the pooled metrics plus pixel AP."""
    return [*zero_shot_metrics(), AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)]


def _select(batch: ImageBatch, index: torch.Tensor) -> ImageBatch:
    """The images ``index`` of ``batch`` with the fields the metrics read.

    Scores and maps go to the CPU, where the pixel metrics keep them until the end of the test.
    """

    def pick(value: torch.Tensor | None) -> torch.Tensor | None:
        return value[index].detach().cpu() if value is not None else None

    return ImageBatch(
        image=batch.image[index],
        pred_score=pick(batch.pred_score),
        gt_label=pick(batch.gt_label),
        anomaly_map=pick(batch.anomaly_map),
        gt_mask=pick(batch.gt_mask),
    )


class PerCategoryMetrics(Callback):
    """Compute test metrics per category and their mean over categories.

    The model's ``image_score`` decides the image score: ``probability``, the model's own (one image at a time), or
    ``paper``, which adds the authors' transductive fusion for comparison with published numbers.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, list[AnomalibMetric]] = {}
        self.image_values: dict[str, dict[str, list[torch.Tensor]]] = {}
        # Per category: normal images, anomalous images, anomalous pixels; they decide which metrics are defined.
        self.counts: dict[str, torch.Tensor] = {}
        self.table: pd.DataFrame | None = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from empty metrics for every test run."""
        del trainer, pl_module
        self.metrics, self.image_values, self.counts, self.table = {}, {}, {}, None

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Route each image's scores and maps to the metrics of its category."""
        del batch, batch_idx, dataloader_idx
        lookup = getattr(getattr(trainer, "datamodule", None), "class_name_of", None)
        paths = outputs.image_path or [None] * len(outputs)
        categories = [category_of(path, lookup) or UNKNOWN_CATEGORY for path in paths]
        paper = getattr(pl_module, "image_score", "probability") == "paper" and outputs.gt_label is not None
        for category in dict.fromkeys(categories):
            index = torch.tensor([i for i, c in enumerate(categories) if c == category])
            subset = _select(outputs, index)
            for metric in self.metrics.setdefault(category, _metrics()):
                metric.update(subset)
            labels = subset.gt_label if subset.gt_label is not None else torch.zeros(len(index), dtype=torch.long)
            anomalous_pixels = int(subset.gt_mask.sum()) if subset.gt_mask is not None else 0
            counts = torch.tensor([int((labels == 0).sum()), int((labels == 1).sum()), anomalous_pixels])
            self.counts[category] = self.counts.get(category, torch.zeros(3, dtype=torch.long)) + counts
            if paper:
                values = self.image_values.setdefault(category, {"probability": [], "map": [], "label": []})
                values["probability"].append(subset.pred_score)
                values["map"].append(outputs.paper_map_score[index].cpu())
                values["label"].append(subset.gt_label)

    def _row(self, category: str) -> dict[str, float]:
        """One category's metrics; those it cannot define are NaN, and a warning says which and why."""
        normal, anomalous, anomalous_pixels = self.counts[category].tolist()
        reasons = {
            "image_": None
            if normal and anomalous
            else "its test images are all " + ("anomalous" if anomalous else "normal"),
            "pixel_": None if anomalous_pixels else "no anomalous pixel in its ground-truth masks (or no masks)",
        }
        row: dict[str, float] = {"images": normal + anomalous}
        undefined: dict[str, list[str]] = {}
        for metric in self.metrics[category]:
            reason = reasons["image_" if metric.name.startswith("image_") else "pixel_"]
            value = metric.compute() if reason is None else None  # the reasons are the same on every process
            row[metric.name] = float("nan") if value is None else float(value)
            if value is None:
                undefined.setdefault(reason or "no values", []).append(metric.name)
        for reason, names in undefined.items():  # never a silent NaN, nor a meaningless 0
            logger.warning(
                "Category %s: %s cannot be computed (%s); the table shows NaN.", category, ", ".join(names), reason
            )
        if category in self.image_values and reasons["image_"] is None:
            values = {name: torch.cat(parts) for name, parts in self.image_values[category].items()}
            fused = fuse_paper_scores(values["probability"], values["map"])
            no_pixels = torch.empty(len(fused), 3, 0, 0)  # a batch needs images; these scores have none
            fused_batch = ImageBatch(image=no_pixels, pred_score=fused, gt_label=values["label"])
            fields = ["pred_score", "gt_label"]
            for metric in (AUROC(fields=fields), AUPR(fields=fields), F1Max(fields=fields)):
                metric.update(fused_batch)
                row[f"paper_image_{type(metric).__name__}"] = float(metric.compute())
        return row

    def _gather_across_processes(self) -> None:
        """Give every process the metrics of every category, so that each metric syncs its states across processes.

        Each process scores a share of the images (the model drops a distributed sampler's padded duplicates), and a
        share may miss a category; torchmetrics gathers the states when a metric is computed on every process.
        """
        categories: list[list[str]] = [[] for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(categories, sorted(self.metrics))
        for category in sorted(set().union(*categories)):
            self.metrics.setdefault(category, _metrics())
        counts: list[dict[str, torch.Tensor]] = [{} for _ in categories]
        torch.distributed.all_gather_object(counts, self.counts)
        self.counts = {
            name: sum(c.get(name, torch.zeros(3, dtype=torch.long)) for c in counts) for name in self.metrics
        }
        values: list[dict] = [{} for _ in categories]
        torch.distributed.all_gather_object(values, self.image_values)
        merged: dict[str, dict[str, list[torch.Tensor]]] = {}
        for process_values in values:
            for category, parts in process_values.items():
                for name, tensors in parts.items():
                    merged.setdefault(category, {}).setdefault(name, []).extend(tensors)
        self.image_values = merged

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the table, print it, write it as CSV and log the means over categories."""
        if trainer.world_size > 1:
            self._gather_across_processes()
        rows = {}
        for category in sorted(self.metrics):
            try:
                rows[category] = self._row(category)
            except (RuntimeError, ValueError) as error:  # e.g. a category with a single label
                logger.warning("Metrics of category %s could not be computed: %s", category, error)
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.loc[MEAN_ROW] = table.mean(skipna=True)
        # How many images each row scored (every image exactly once, also across processes); the mean row: all.
        table.loc[MEAN_ROW, "images"] = table.images.drop(MEAN_ROW).sum()
        table = table.astype({"images": int})
        table.index.name = "category"
        self.table = table
        for name, value in table.loc[MEAN_ROW].drop("images").items():
            if pd.notna(value):
                pl_module.log(f"category_mean_{name}", float(value), sync_dist=trainer.world_size > 1)
        if trainer.global_rank:
            return
        path = Path(trainer.default_root_dir) / CSV_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path)
        categories = f"{len(rows)} categor{'y' if len(rows) == 1 else 'ies'}"
        print(f"\nPer-category test metrics (mean over {categories}), written to {path}:")
        print(table.to_string(float_format=lambda value: f"{value:.4f}"))
