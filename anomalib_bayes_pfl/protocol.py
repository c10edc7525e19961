# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Per-category metrics, the zero-shot literature's protocol: each metric per target category, then the mean.

anomalib's Evaluator pools every test image, while zero-shot papers report per-category figures averaged over
categories. :class:`PerCategoryMetrics` keeps one set of metrics per category (read from each image path), prints
the table, writes it as CSV next to the run's other outputs, and logs the means as ``category_mean_<metric>`` so
that they also reach ``engine.test`` results and ``anomalib benchmark`` CSVs.

It reads the model's own scores, the probabilities of the head trained on the auxiliary data, before the
post-processor labels them; a metric a category cannot define is NaN, with a warning that says why.

``image_score="paper"`` adds the authors' fused image score: per category, min-max normalise the probability and
the mean of the top-k values of the unsmoothed anomaly map, and average the two (authors:
metric_and_visualization.py L161-189). It is transductive (it needs the whole test set of a category) and its k is
tuned per category by the authors, so it is an offline evaluation option, never the model's own score.
"""

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch
from anomalib.metrics import AUPR, AUPRO, AUROC, F1Max
from anomalib.metrics.base import AnomalibMetric
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl.data.class_names import category_of

logger = logging.getLogger(__name__)

CSV_NAME = "per_category_metrics.csv"
PREDICTIONS_CSV = "predictions.csv"
MEAN_ROW = "mean"
UNKNOWN_CATEGORY = "all"
# The authors' top-k for the map score: 20 for these categories, 2000 for all others.
PAPER_SMALL_TOP_K_CATEGORIES = frozenset(
    {"capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw", "cashew", "chewinggum"}
)


def paper_top_k(category: str) -> int:
    """The authors' k for ``category`` (tuned on the test categories; see the module docstring)."""
    return 20 if category in PAPER_SMALL_TOP_K_CATEGORIES else 2000


def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values of each map ``(N, H, W)`` (all values when a map is smaller)."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def fuse_paper_scores(probabilities: torch.Tensor, map_scores: torch.Tensor) -> torch.Tensor:
    """``0.5 * minmax(p) + 0.5 * minmax(s)`` over one category's test images."""

    def min_max(values: torch.Tensor) -> torch.Tensor:
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else torch.zeros_like(values)

    return 0.5 * min_max(probabilities) + 0.5 * min_max(map_scores)


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
        """Route each image's raw scores and maps to the metrics of its category."""
        del outputs, batch_idx, dataloader_idx
        lookup = getattr(getattr(trainer, "datamodule", None), "class_name_of", None)
        paths = batch.image_path or [None] * batch.image.shape[0]
        categories = [category_of(path, lookup) or UNKNOWN_CATEGORY for path in paths]
        map_scores = getattr(pl_module, "last_map_scores", None)
        for category in dict.fromkeys(categories):
            index = torch.tensor([i for i, c in enumerate(categories) if c == category])
            subset = SimpleNamespace(
                pred_score=batch.pred_score[index].detach().cpu(),
                gt_label=batch.gt_label[index].cpu() if batch.gt_label is not None else None,
                anomaly_map=batch.anomaly_map[index].detach().cpu() if batch.anomaly_map is not None else None,
                gt_mask=batch.gt_mask[index].cpu() if batch.gt_mask is not None else None,
            )
            for metric in self.metrics.setdefault(category, _metrics()):
                metric.update(subset)
            labels = subset.gt_label if subset.gt_label is not None else torch.zeros(len(index), dtype=torch.long)
            anomalous_pixels = int(subset.gt_mask.sum()) if subset.gt_mask is not None else 0
            counts = torch.tensor([int((labels == 0).sum()), int((labels == 1).sum()), anomalous_pixels])
            self.counts[category] = self.counts.get(category, torch.zeros(3, dtype=torch.long)) + counts
            if getattr(pl_module, "image_score", "probability") == "paper" and subset.gt_label is not None:
                values = self.image_values.setdefault(category, {"probability": [], "map": [], "label": []})
                values["probability"].append(subset.pred_score)
                values["map"].append(map_scores[index].cpu())
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
            for metric in (AUROC(fields=["pred_score", "gt_label"]), AUPR(fields=["pred_score", "gt_label"])):
                metric.update(SimpleNamespace(pred_score=fused, gt_label=values["label"]))
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
        print(f"\nPer-category test metrics (mean over {len(rows)} categories), written to {path}:")
        print(table.to_string(float_format=lambda value: f"{value:.4f}"))


class PredictionTable(Callback):
    """Write ``predictions.csv`` (image path, score, label) next to the other outputs of ``anomalib predict``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start an empty table."""
        del trainer, pl_module
        self.rows = []

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collect each image's score and label."""
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        paths = outputs.image_path or [None] * len(outputs.pred_score)
        labels = outputs.pred_label if outputs.pred_label is not None else [None] * len(outputs.pred_score)
        for path, score, label in zip(paths, outputs.pred_score.tolist(), labels, strict=True):
            self.rows.append(
                {"image_path": path, "pred_score": score, "pred_label": None if label is None else int(label)}
            )

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the table."""
        del pl_module
        path = Path(trainer.default_root_dir) / PREDICTIONS_CSV
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.rows, columns=["image_path", "pred_score", "pred_label"]).to_csv(path, index=False)
        print(f"Scores and labels of {len(self.rows)} images written to {path}")
