# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Per-category metrics, the zero-shot literature's protocol: each metric per target category, then the mean.

anomalib's Evaluator pools every test image, while zero-shot papers report per-category figures averaged over
categories. :class:`PerCategoryMetrics` keeps one set of metrics per category (read from each image path), prints
the table, writes it as CSV next to the run's other outputs, and logs the means as ``category_mean_<metric>`` so
that they also reach ``engine.test`` results and ``anomalib benchmark`` CSVs.

It reads the model's own scores, the probabilities of the head trained on the auxiliary data. A metric a category
cannot define is NaN, with a warning that says why; pixel metrics of categories without masks (image-only datasets)
do not apply and are left out. With several target datasets the table has a mean per dataset besides the overall
mean; its ``dataset`` column names each row's dataset.

``image_score="paper"`` adds the authors' fused image score (``paper_score.py``) as more columns.

The labels are judged too: each category's ``image_threshold`` and ``pixel_threshold`` (calibrated ones with a
``false_alarm_rate``), the share of its normal test images labelled anomalous (``image_false_alarm_rate``), the
share of its anomalous ones found (``image_recall``) and the share of the pixels of its normal test images flagged
(``pixel_false_alarm_rate``, for categories with masks). Mean rows average every column, thresholds included.

So is the prompt samples' uncertainty (``model/uncertainty.py``): how well it finds wrongly labelled pixels, ranks the
image errors and how well the image probabilities are calibrated, with the error rate of the images decided without
review (:meth:`PerCategoryMetrics._uncertainty_columns` defines each column).
"""

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from anomalib.metrics.base import AnomalibMetric
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_calibration_error

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.paper_score import fuse_paper_scores
from anomalib_bayes_pfl.review import indices_by_group, review_flags, sparsification, warn_if_uninformative

logger = logging.getLogger(__name__)

CSV_NAME = "per_category_metrics.csv"
MEAN_ROW = "mean"
THRESHOLD_COLUMNS = ("image_threshold", "pixel_threshold")
LABEL_COUNTS = 4
COUNTS = 10  # images and pixels, label counts, wrong and judged pixels
ECE_BINS = 15


def zero_shot_metrics() -> list[AnomalibMetric]:
    """The zero-shot literature's metrics: image AUROC, AP (AUPR) and F1Max; pixel AUROC and AUPRO."""
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


class ApplicableMetricsEvaluator(Evaluator):
    """anomalib's evaluator that logs only the metrics some image fed: pixel metrics do not apply without masks.

    anomalib's would compute every metric, and torchmetrics warns for each one computed before any update.
    """

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the metrics that some process updated; say which do not apply."""
        skipped = []
        for metric in self.test_metrics:
            if trainer.strategy.reduce_boolean_decision(metric.update_called, all=False):
                self.log(metric.name, metric)
            else:
                skipped.append(metric.name)
        if skipped:
            logger.info("%s not computed: no test image has the fields they read (masks).", ", ".join(skipped))
        del pl_module


def _metrics() -> list[AnomalibMetric]:
    """Per category, the pooled metrics plus pixel AP."""
    return [*zero_shot_metrics(), AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)]


def _metric_batch(**fields: torch.Tensor | None) -> ImageBatch:
    """A batch of the fields the metrics read; anomalib's batch needs images, which no metric reads: an empty one."""
    count = len(next(value for value in fields.values() if value is not None))
    return ImageBatch(image=torch.empty(count, 3, 0, 0), **fields)


def _label_counts(batch: ImageBatch, labels: torch.Tensor) -> torch.Tensor:
    """Normal and anomalous images labelled anomalous; flagged and all pixels of the normal images (-1: no labels)."""
    if batch.pred_label is None:
        return torch.full((LABEL_COUNTS,), -1)
    flagged = batch.pred_label.cpu().bool()
    normal = labels == 0
    normal_masks = batch.pred_mask[normal.to(batch.pred_mask.device)] if batch.pred_mask is not None else None
    return torch.tensor(
        [
            int((flagged & normal).sum()),
            int((flagged & ~normal).sum()),
            int(normal_masks.sum()) if normal_masks is not None else 0,
            normal_masks.numel() if normal_masks is not None else 0,
        ]
    )


def _select(batch: ImageBatch, index: torch.Tensor) -> ImageBatch:
    """The images ``index`` of ``batch`` with the fields the metrics read.

    Scores and maps go to the CPU, where the pixel metrics keep them until the end of the test; the images are not
    copied.
    """

    def pick(value: torch.Tensor | None) -> torch.Tensor | None:
        return value[index].detach().cpu() if value is not None else None

    return _metric_batch(
        pred_score=pick(batch.pred_score),
        gt_label=pick(batch.gt_label),
        anomaly_map=pick(batch.anomaly_map),
        gt_mask=pick(batch.gt_mask),
        pred_label=pick(batch.pred_label),
        pred_mask=pick(batch.pred_mask),
    )


class PerCategoryMetrics(Callback):
    """Compute test metrics per category and their mean over categories.

    The model's ``image_score`` decides the image score: ``probability``, the model's own (one image at a time), or
    ``paper``, which adds the authors' transductive fusion for comparison with published numbers.
    """

    def __init__(self) -> None:
        # Keyed by (dataset, category): several target datasets may share a category name.
        self.metrics: dict[tuple[str, str], list[AnomalibMetric]] = {}
        self.image_values: dict[tuple[str, str], dict[str, list[torch.Tensor]]] = {}
        # Normal images, anomalous images, anomalous pixels, images with a mask: which metrics are defined, or apply;
        # then the label counts of :func:`_label_counts`.
        self.counts: dict[tuple[str, str], torch.Tensor] = {}
        # Each category's thresholds, as the model labels it.
        self.thresholds: dict[tuple[str, str], tuple[float, float]] = {}
        # How well each pixel's uncertainty finds the pixels whose label is wrong.
        self.uncertainty_auroc: dict[tuple[str, str], BinaryAUROC] = {}
        self.table: pd.DataFrame | None = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from empty metrics for every test run."""
        del trainer, pl_module
        self.metrics, self.image_values, self.counts, self.thresholds, self.table = {}, {}, {}, {}, None
        self.uncertainty_auroc = {}

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
        del batch, batch_idx, dataloader_idx
        del trainer, pl_module
        keys = list(zip(outputs.dataset, outputs.category, strict=True))
        labelled = outputs.gt_label is not None
        paper = outputs.paper_map_score is not None and labelled
        uncertainty = getattr(outputs, "uncertainty", None)
        uncertainty_map = getattr(outputs, "uncertainty_map", None)
        for key, index in indices_by_group(keys).items():
            subset = _select(outputs, index)
            for metric in self.metrics.setdefault(key, _metrics()):
                metric.update(subset)
            labels = subset.gt_label if subset.gt_label is not None else torch.zeros(len(index), dtype=torch.long)
            anomalous_pixels = int(subset.gt_mask.sum()) if subset.gt_mask is not None else 0
            masked = len(index) if subset.gt_mask is not None else 0
            counts = torch.tensor([int((labels == 0).sum()), int((labels == 1).sum()), anomalous_pixels, masked])
            counts = torch.cat(
                [counts, _label_counts(subset, labels), self._update_wrong_pixels(key, subset, uncertainty_map, index)]
            )
            self.counts[key] = counts if key not in self.counts else self.counts[key] + counts
            if key not in self.thresholds:
                first = int(index[0])
                self.thresholds[key] = (float(outputs.image_threshold[first]), float(outputs.pixel_threshold[first]))
            if labelled:
                values = self.image_values.setdefault(key, {})
                picked = {"probability": subset.pred_score, "label": subset.gt_label}
                if subset.pred_label is not None:
                    picked["pred_label"] = subset.pred_label
                if uncertainty is not None:
                    picked["uncertainty"] = uncertainty[index].cpu()
                if paper:
                    picked["map"] = outputs.paper_map_score[index].cpu()
                for name, value in picked.items():
                    values.setdefault(name, []).append(value)

    def _update_wrong_pixels(
        self, key: tuple[str, str], subset: ImageBatch, uncertainty_map: torch.Tensor | None, index: torch.Tensor
    ) -> torch.Tensor:
        """Feed the uncertainty of each pixel, against whether its label is wrong; count wrong and judged pixels."""
        if uncertainty_map is None or subset.gt_mask is None or subset.pred_mask is None:
            return torch.zeros(2, dtype=torch.long)
        wrong = (subset.pred_mask.bool() != subset.gt_mask.bool()).flatten()
        self.uncertainty_auroc.setdefault(key, BinaryAUROC()).update(
            uncertainty_map[index].detach().cpu().flatten(), wrong.long()
        )
        return torch.tensor([int(wrong.sum()), wrong.numel()])

    def _row(self, key: tuple[str, str], name: str, review_fraction: float | None) -> dict[str, float | str]:
        """One category's metrics; those it cannot define are NaN, and a warning says which and why.

        Pixel metrics of a category without masks (an image-only dataset) do not apply: they are left out, not NaN.
        """
        counts = self.counts[key].tolist()
        normal, anomalous, anomalous_pixels, masked, false_alarms, found, flagged_pixels, normal_pixels = counts[:8]
        reasons = {
            "image_": None
            if normal and anomalous
            else "its test images are all " + ("anomalous" if anomalous else "normal"),
            "pixel_": None if anomalous_pixels else "no anomalous pixel in its ground-truth masks",
        }
        row: dict[str, float | str] = {"dataset": key[0], "images": normal + anomalous}
        undefined: dict[str, list[str]] = {}
        for metric in self.metrics[key]:
            if metric.name.startswith("pixel_") and not masked:
                continue
            reason = reasons["image_" if metric.name.startswith("image_") else "pixel_"]
            value = metric.compute() if reason is None else None  # the reasons are the same on every process
            row[metric.name] = float("nan") if value is None else float(value)
            if value is None:
                undefined.setdefault(reason or "no values", []).append(metric.name)
        if key in self.thresholds:  # pixel labels, like pixel metrics, are judged only against masks
            thresholds = dict(zip(THRESHOLD_COLUMNS, self.thresholds[key], strict=True))
            row.update({name: value for name, value in thresholds.items() if masked or not name.startswith("pixel_")})
        if false_alarms >= 0:  # the model labelled the images
            rates = {"image_false_alarm_rate": (false_alarms, normal), "image_recall": (found, anomalous)}
            if masked:
                rates["pixel_false_alarm_rate"] = (flagged_pixels, normal_pixels)
            for column, (count, total) in rates.items():
                row[column] = count / total if total else float("nan")
                if not total:
                    missing = "anomalous" if column == "image_recall" else "normal"
                    undefined.setdefault(f"it has no {missing} test image", []).append(column)
        values = {field: torch.cat(parts) for field, parts in self.image_values.get(key, {}).items()}
        self._uncertainty_columns(row, key, name, values, undefined, review_fraction)
        for reason, names in undefined.items():  # never a silent NaN, nor a meaningless 0
            logger.warning(
                "Category %s: %s cannot be computed (%s); the table shows NaN.", name, ", ".join(names), reason
            )
        if "map" in values and reasons["image_"] is None:
            fused = fuse_paper_scores(values["probability"], values["map"])
            fused_batch = _metric_batch(pred_score=fused, gt_label=values["label"])
            fields = ["pred_score", "gt_label"]
            for metric in (AUROC(fields=fields), AUPR(fields=fields), F1Max(fields=fields)):
                metric.update(fused_batch)
                row[f"paper_image_{type(metric).__name__}"] = float(metric.compute())
        return row

    def _uncertainty_columns(
        self,
        row: dict[str, float | str],
        key: tuple[str, str],
        name: str,
        values: dict[str, torch.Tensor],
        undefined: dict[str, list[str]],
        review_fraction: float | None,
    ) -> None:
        """How well the uncertainty knows the model's errors; and the error rate with and without review.

        - ``pixel_uncertainty_auroc``: AUROC of each pixel's uncertainty as a detector of the pixels whose label (at
          the pixel threshold) is wrong; 0.5 knows nothing (misclassification detection: Hendrycks & Gimpel, "A
          Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks", ICLR 2017).
        - ``image_ause`` / ``image_ause_random``: area under the sparsification error curve of the image
          uncertainty for the absolute error ``|probability - label|``, and the same for a ranking that knows
          nothing (``review.py``; Ilg et al., ECCV 2018).
        - ``image_ece``: expected calibration error of the image probability, 15 equal-width bins (Guo et al., "On
          Calibration of Modern Neural Networks", ICML 2017): the gap between the probability and the share of
          anomalous images, averaged over bins by their share of images. It depends on the share of anomalous test
          images, which a production line does not share.
        - ``image_error_rate``: the share of images labelled wrongly; with ``review_fraction``, ``review_share`` (the
          share marked ``needs_review``) and ``image_error_rate_unreviewed``, that of the images decided alone.
        """
        if "uncertainty" not in values:
            return
        probability, label, uncertainty = values["probability"], values["label"].long(), values["uncertainty"]
        warn_if_uninformative(name, uncertainty, review_fraction)
        wrong, judged = self.counts[key][8:].tolist()
        if judged:  # pixels with a mask and a label (the same on every process: the counts are summed)
            defined = 0 < wrong < judged
            row["pixel_uncertainty_auroc"] = float(self.uncertainty_auroc[key].compute()) if defined else float("nan")
            if not defined:
                reason = "no pixel is labelled wrongly" if not wrong else "every pixel is labelled wrongly"
                undefined.setdefault(reason, []).append("pixel_uncertainty_auroc")
        ranking = sparsification(uncertainty, (probability - label).abs())
        row["image_ause"], row["image_ause_random"] = ranking.ause, ranking.random_ause
        row["image_ece"] = float(binary_calibration_error(probability, label, n_bins=ECE_BINS))
        if "pred_label" not in values:
            return
        errors = (values["pred_label"].bool() != label.bool()).double()
        row["image_error_rate"] = float(errors.mean())
        if review_fraction:
            reviewed = review_flags(uncertainty, review_fraction)
            row["review_share"] = float(reviewed.double().mean())
            row["image_error_rate_unreviewed"] = float(errors[~reviewed].mean())

    def _gather_across_processes(self) -> None:
        """Give every process the metrics of every category, so that each metric syncs its states across processes.

        Each process scores a share of the images (the model drops a distributed sampler's padded duplicates), and a
        share may miss a category; torchmetrics gathers the states when a metric is computed on every process.
        """
        keys: list[list[tuple[str, str]]] = [[] for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(keys, sorted(self.metrics))
        for key in sorted(set().union(*keys)):
            self.metrics.setdefault(key, _metrics())
            self.uncertainty_auroc.setdefault(key, BinaryAUROC())
        counts: list[dict[tuple[str, str], torch.Tensor]] = [{} for _ in keys]
        torch.distributed.all_gather_object(counts, self.counts)
        width = len(next(iter(self.counts.values()))) if self.counts else COUNTS
        self.counts = {
            key: sum(c.get(key, torch.zeros(width, dtype=torch.long)) for c in counts) for key in self.metrics
        }
        thresholds: list[dict[tuple[str, str], tuple[float, float]]] = [{} for _ in keys]
        torch.distributed.all_gather_object(thresholds, self.thresholds)
        self.thresholds = {key: value for process in thresholds for key, value in process.items()}
        values: list[dict] = [{} for _ in keys]
        torch.distributed.all_gather_object(values, self.image_values)
        merged: dict[tuple[str, str], dict[str, list[torch.Tensor]]] = {}
        for process_values in values:
            for key, parts in process_values.items():
                for name, tensors in parts.items():
                    merged.setdefault(key, {}).setdefault(name, []).extend(tensors)
        self.image_values = merged

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the table, print it, write it as CSV and log the means over categories."""
        if trainer.world_size > 1:
            self._gather_across_processes()
        rows = {}
        names = _row_names(sorted(self.metrics))
        review_fraction = getattr(pl_module, "options", {}).get("review_fraction")
        for key, name in names.items():
            try:
                rows[name] = self._row(key, name, review_fraction)
            except (RuntimeError, ValueError) as error:  # e.g. a category with a single label
                logger.warning("Metrics of category %s could not be computed: %s", name, error)
        table = _with_means(pd.DataFrame.from_dict(rows, orient="index"))
        self.table = table
        for name, value in table.loc[MEAN_ROW].drop(["dataset", "images"]).items():
            if pd.notna(value):
                pl_module.log(f"category_mean_{name}", float(value), sync_dist=trainer.world_size > 1)
        if trainer.global_rank:
            return
        path = Path(trainer.default_root_dir) / CSV_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path)
        datasets = table.dataset.drop(MEAN_ROW).nunique()
        categories = f"{len(rows)} categor{'y' if len(rows) == 1 else 'ies'}" + (
            f" of {datasets} datasets" if datasets > 1 else ""
        )
        print(f"\nPer-category test metrics (mean over {categories}), written to {path}:")
        print(table.to_string(float_format=lambda value: f"{value:.4f}"))
        image_only = [name for key, name in names.items() if not self.counts[key][3]]
        if image_only:
            print(f"Pixel metrics do not apply to categories without masks (image labels only): {image_only}")


def _row_names(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Each row's name: its category, or ``<dataset>/<category>`` where two datasets share the category."""
    categories = [category for _, category in keys]
    return {
        (dataset, category): category if categories.count(category) == 1 else f"{dataset}/{category}"
        for dataset, category in keys
    }


def _with_means(table: pd.DataFrame) -> pd.DataFrame:
    """Add the mean over each dataset's categories (with several datasets) and over all categories, last.

    A mean row's ``images`` counts every image it covers (each scored exactly once, also across processes).
    """
    categories, metrics = table.copy(), table.columns.drop(["dataset", "images"])
    datasets = list(dict.fromkeys(categories.dataset))
    per_dataset = datasets if len(datasets) > 1 else []
    groups = {f"{MEAN_ROW} {name}": categories[categories.dataset == name] for name in per_dataset}
    groups[MEAN_ROW] = categories
    for name, rows in groups.items():
        table.loc[name, metrics] = rows[metrics].mean(skipna=True)
        table.loc[name, "images"] = rows.images.sum()
        table.loc[name, "dataset"] = rows.dataset.iloc[0] if name != MEAN_ROW or len(datasets) == 1 else "all"
    table = table.astype({"images": int})
    table.index.name = "category"
    return table
