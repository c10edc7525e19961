# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The per-category table: one row per dataset and category, then a mean per dataset (with several) and overall.

It reads the model's own scores, the probabilities of the head trained on the auxiliary data. A metric a category
cannot define is NaN, with a warning that says why; pixel metrics of categories without masks (image-only datasets)
do not apply and are left out. With several target datasets its ``dataset`` column names each row's dataset.

``image_score="paper"`` adds the authors' fused image score (``paper_score.py``) as more columns.

The labels are judged too: each category's ``image_threshold`` and ``pixel_threshold`` (calibrated ones with a
``false_alarm_rate``), the share of its normal test images labelled anomalous (``image_false_alarm_rate``), the
share of its anomalous ones found (``image_recall``) and the share of the pixels of its normal test images flagged
(``pixel_false_alarm_rate``, for categories with masks). Mean rows average every column, thresholds included.

So is the prompt samples' uncertainty (``model/uncertainty.py``): how well it finds wrongly labelled pixels, ranks the
image errors and how well the image probabilities are calibrated, with the error rate of the images decided without
review (:func:`uncertainty_columns` defines each column).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPR, AUROC, F1Max
from anomalib.metrics.base import AnomalibMetric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_calibration_error

from .paper_score import fuse_paper_scores
from .review import review_flags, sparsification, warn_if_uninformative

logger = logging.getLogger(__name__)

CSV_NAME = "per_category_metrics.csv"
MEAN_ROW = "mean"
THRESHOLD_COLUMNS = ("image_threshold", "pixel_threshold", "review_threshold")
ECE_BINS = 15


@dataclass
class CategoryResults:
    """What the table reads of one category, gathered from every process.

    Attributes:
        scores: anomalib's metrics (image AUROC, AP, F1Max; pixel AUROC, AUPRO, AP), updated with its images.
        counts: Its images and pixels by what they are and how they were labelled (``metrics.COUNTS``).
        values: Each image's ``probability``, ``label`` and, where given, ``pred_label``, ``uncertainty``, ``map``.
        thresholds: The image and pixel thresholds that labelled it, and its review threshold where it has one.
        wrong_pixels: Each pixel's uncertainty against whether its label is wrong.
        curves: The curves of ``scores`` computed so far, by metric name (see :meth:`curve`).
    """

    scores: list[AnomalibMetric]
    counts: dict[str, int]
    values: dict[str, torch.Tensor]
    thresholds: tuple[float, ...]
    wrong_pixels: BinaryAUROC
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def curve(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The curve of metric ``name``, computed once for every plot that draws it.

        AUPRO's curve labels the regions of every mask: on 1000 images that is seconds, not worth paying twice.
        """
        if name not in self.curves:
            self.curves[name] = next(metric for metric in self.scores if metric.name == name)._compute()
        return self.curves[name]


def per_category_table(results: dict[tuple[str, str], CategoryResults], review_fraction: float) -> pd.DataFrame:
    """The table of every (dataset, category) of ``results``, with the means last."""
    rows = {}
    for key, name in row_names(list(results)).items():
        try:
            rows[name] = category_row(key[0], name, results[key], review_fraction)
        except (RuntimeError, ValueError) as error:  # e.g. a category with a single label
            logger.warning("Metrics of category %s could not be computed: %s", name, error)
    return with_means(pd.DataFrame.from_dict(rows, orient="index"))


def print_table(table: pd.DataFrame, results: dict[tuple[str, str], CategoryResults], path: Path) -> None:
    """Print the table, where it was written, and which categories pixel metrics do not apply to."""
    names = row_names(list(results))
    datasets = table.dataset.drop(MEAN_ROW).nunique()
    count = len(table) - (1 + (datasets if datasets > 1 else 0))
    categories = f"{count} categor{'y' if count == 1 else 'ies'}" + (f" of {datasets} datasets" if datasets > 1 else "")
    print(f"\nPer-category test metrics (mean over {categories}), written to {path}:")
    print(table.to_string(float_format=lambda value: f"{value:.4f}"))
    image_only = [name for key, name in names.items() if not results[key].counts["masked_images"]]
    if image_only:
        print(f"Pixel metrics do not apply to categories without masks (image labels only): {image_only}")


def category_row(dataset: str, name: str, results: CategoryResults, review_fraction: float) -> dict[str, float | str]:
    """One category's metrics; those it cannot define are NaN, and a warning says which and why.

    Pixel metrics of a category without masks (an image-only dataset) do not apply: they are left out, not NaN.
    """
    counts = results.counts
    normal, anomalous, masked = counts["normal_images"], counts["anomalous_images"], counts["masked_images"]
    reasons = {
        "image_": None
        if normal and anomalous
        else "its test images are all " + ("anomalous" if anomalous else "normal"),
        "pixel_": None if counts["anomalous_pixels"] else "no anomalous pixel in its ground-truth masks",
    }
    row: dict[str, float | str] = {"dataset": dataset, "images": normal + anomalous}
    undefined: dict[str, list[str]] = {}
    for metric in results.scores:
        if metric.name.startswith("pixel_") and not masked:
            continue
        reason = reasons["image_" if metric.name.startswith("image_") else "pixel_"]
        value = metric.compute() if reason is None else None  # the reasons are the same on every process
        row[metric.name] = float("nan") if value is None else float(value)
        if value is None:
            undefined.setdefault(reason or "no values", []).append(metric.name)
    # Pixel labels, like pixel metrics, are judged only against masks.
    thresholds = dict(zip(THRESHOLD_COLUMNS, results.thresholds, strict=False))
    row.update({column: value for column, value in thresholds.items() if masked or not column.startswith("pixel_")})
    if counts["labelled_images"]:  # the model labelled the images
        rates = {
            "image_false_alarm_rate": (counts["false_alarms"], normal),
            "image_recall": (counts["found"], anomalous),
        }
        if masked:
            rates["pixel_false_alarm_rate"] = (counts["flagged_pixels"], counts["normal_pixels"])
        for column, (count, total) in rates.items():
            row[column] = count / total if total else float("nan")
            if not total:
                missing = "anomalous" if column == "image_recall" else "normal"
                undefined.setdefault(f"it has no {missing} test image", []).append(column)
    uncertainty_columns(row, name, results, undefined, review_fraction)
    for reason, names in undefined.items():  # never a silent NaN, nor a meaningless 0
        logger.warning("Category %s: %s cannot be computed (%s); the table shows NaN.", name, ", ".join(names), reason)
    values = results.values
    if "map" in values and reasons["image_"] is None:
        fused = fuse_paper_scores(values["probability"], values["map"])
        fused_batch = ImageBatch(
            image=torch.empty(len(fused), 3, 0, 0), pred_score=fused, gt_label=values["label"].long()
        )
        fields = ["pred_score", "gt_label"]
        for metric in (AUROC(fields=fields), AUPR(fields=fields), F1Max(fields=fields)):
            metric.update(fused_batch)
            row[f"paper_image_{type(metric).__name__}"] = float(metric.compute())
    return row


def uncertainty_columns(
    row: dict[str, float | str],
    name: str,
    results: CategoryResults,
    undefined: dict[str, list[str]],
    review_fraction: float,
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
    - ``image_error_rate``: the share of images labelled wrongly; with review (``review_rate``, or
      ``review_fraction``), ``review_share`` (the share marked ``needs_review``), ``review_share_normal`` and
      ``review_share_anomalous`` (the same among normal and among anomalous images: ``review_rate`` calibrates the
      first) and ``image_error_rate_unreviewed``, the error rate of the images the model decides alone.
    """
    values = results.values
    if "uncertainty" not in values:
        return
    probability, label, uncertainty = values["probability"], values["label"].long(), values["uncertainty"]
    warn_if_uninformative(name, uncertainty, review_fraction)
    wrong, judged = results.counts["wrong_pixels"], results.counts["judged_pixels"]
    if judged:  # pixels with a mask and a label (the same on every process: the counts are summed)
        defined = 0 < wrong < judged
        row["pixel_uncertainty_auroc"] = float(results.wrong_pixels.compute()) if defined else float("nan")
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
    if "needs_review" in values:
        reviewed = values["needs_review"].bool()
    elif review_fraction:
        reviewed = review_flags(uncertainty, review_fraction)
    else:
        return
    row["review_share"] = float(reviewed.double().mean())
    for kind, members in (("normal", label == 0), ("anomalous", label == 1)):
        row[f"review_share_{kind}"] = float(reviewed[members].double().mean()) if members.any() else float("nan")
        if not members.any():
            undefined.setdefault(f"it has no {kind} test image", []).append(f"review_share_{kind}")
    decided_alone = ~reviewed
    row["image_error_rate_unreviewed"] = float(errors[decided_alone].mean()) if decided_alone.any() else float("nan")
    if not decided_alone.any():
        undefined.setdefault("every image is marked for review", []).append("image_error_rate_unreviewed")


def row_names(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Each row's name: its category, or ``<dataset>/<category>`` where two datasets share the category."""
    categories = [category for _, category in keys]
    return {
        (dataset, category): category if categories.count(category) == 1 else f"{dataset}/{category}"
        for dataset, category in keys
    }


def with_means(table: pd.DataFrame) -> pd.DataFrame:
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
