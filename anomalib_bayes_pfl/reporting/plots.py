# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The plots of a test run: one figure per category and one over all categories, beside the table.

Each panel draws the very state the table computed its figure from, so a curve's area is the table's value:

- ROC: anomalib's image ``AUROC`` curve (``image_AUROC``);
- PR: anomalib's image ``AUPR`` curve, drawn as the steps its average precision sums (``image_AUPR``);
- PRO: anomalib's ``AUPRO`` curve up to its false-positive-rate limit, 0.3 (``pixel_AUPRO``), where masks exist;
- scores: the image probabilities of normal and of anomalous images, with the image threshold and the false-alarm
  rate and recall at it (``image_threshold``, ``image_false_alarm_rate``, ``image_recall``);
- reliability: the share of anomalous images against the mean probability, in the bins of the ECE (``image_ece``);
- sparsification, with the uncertainty: the mean error left after removing the most uncertain images, the oracle's
  and the flat curve of a ranking that knows nothing (``image_ause``, ``image_ause_random``).

A panel whose metric the category cannot define says so instead of drawing (the log says why).
"""

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import matplotlib as mpl
import pandas as pd
import torch
from anomalib.metrics.base import AnomalibMetric
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import AutoLocator, MaxNLocator

from .review import sparsification_curves
from .table import ECE_BINS, MEAN_ROW, CategoryResults, row_names

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
NORMAL, ANOMALOUS, MODEL, REFERENCE = "#4c72b0", "#dd8452", "#c44e52", "#8c8c8c"


class Reliability(NamedTuple):
    """The ECE's bins that hold images: their mean probability, share of anomalous images and share of all images."""

    probability: torch.Tensor
    anomalous: torch.Tensor
    share: torch.Tensor


def reliability_bins(probability: torch.Tensor, label: torch.Tensor, bins: int = ECE_BINS) -> Reliability:
    """Bin the probabilities as torchmetrics' ECE does: ``bins`` equal widths on [0, 1], upper edges included."""
    probability, label = probability.double().flatten(), label.double().flatten()
    edges = torch.linspace(0, 1, bins + 1, dtype=probability.dtype)
    index = (torch.bucketize(probability, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=probability.dtype).index_add_(0, index, torch.ones_like(probability))
    held = count > 0

    def mean_per_bin(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(bins, dtype=values.dtype).index_add_(0, index, values)[held] / count[held]

    return Reliability(mean_per_bin(probability), mean_per_bin(label), count[held] / probability.numel())


def _metric(results: CategoryResults, name: str) -> AnomalibMetric | None:
    return next((metric for metric in results.scores if metric.name == name), None)


def _undefined(axis: Axes, title: str, why: str) -> None:
    axis.set_title(title)
    axis.text(0.5, 0.5, f"not computed:\n{why}", ha="center", va="center", transform=axis.transAxes, wrap=True)
    axis.set_xticks([])
    axis.set_yticks([])


def _defined(row: pd.Series, column: str) -> bool:
    return column in row and not math.isnan(row[column])


def roc_panel(axis: Axes, results: CategoryResults, row: pd.Series) -> None:
    """The image ROC curve, its area the table's ``image_AUROC``."""
    if not _defined(row, "image_AUROC"):
        return _undefined(axis, "Image ROC", "needs normal and anomalous images")
    false_positive_rate, true_positive_rate = results.curve("image_AUROC")
    axis.plot(false_positive_rate, true_positive_rate, color=MODEL, label=f"AUROC {row.image_AUROC:.3f}")
    axis.plot([0, 1], [0, 1], color=REFERENCE, linestyle="--", linewidth=1, label="chance")
    axis.set(title="Image ROC", xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(loc="lower right")
    return None


def pr_panel(axis: Axes, results: CategoryResults, row: pd.Series) -> None:
    """The image precision-recall curve as steps, whose area is the table's ``image_AUPR`` (average precision)."""
    if not _defined(row, "image_AUPR"):
        return _undefined(axis, "Image precision-recall", "needs normal and anomalous images")
    precision, recall = results.curve("image_AUPR")
    axis.plot(recall, precision, color=MODEL, drawstyle="steps-post", label=f"AP {row.image_AUPR:.3f}")
    prevalence = results.counts["anomalous_images"] / (
        results.counts["normal_images"] + results.counts["anomalous_images"]
    )
    axis.axhline(prevalence, color=REFERENCE, linestyle="--", linewidth=1, label="chance")
    axis.set(title="Image precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    axis.legend(loc="lower left")
    return None


def pro_panel(axis: Axes, results: CategoryResults, row: pd.Series) -> None:
    """The per-region overlap curve up to AUPRO's limit; its area over the limit is the table's ``pixel_AUPRO``."""
    if not _defined(row, "pixel_AUPRO"):
        why = "no masks (image labels only)" if "pixel_AUPRO" not in row else "no anomalous pixel in the masks"
        return _undefined(axis, "Pixel PRO", why)
    false_positive_rate, overlap = results.curve("pixel_AUPRO")
    axis.plot(false_positive_rate, overlap, color=MODEL, label=f"AUPRO {row.pixel_AUPRO:.3f}")
    limit = float(_metric(results, "pixel_AUPRO").fpr_limit)
    axis.set(
        title="Pixel PRO", xlabel="false-positive rate", ylabel="per-region overlap", xlim=(0, limit), ylim=(0, 1.02)
    )
    axis.legend(loc="lower right")
    return None


def score_panel(axis: Axes, results: CategoryResults, row: pd.Series) -> None:
    """The image probabilities of normal and anomalous images, and the image threshold with its rates."""
    values = results.values
    if "probability" not in values:
        return _undefined(axis, "Image scores", "the test images have no labels")
    probability, label = values["probability"].double(), values["label"].long()
    edges = torch.linspace(0, 1, 41).tolist()
    for kind, members, color in (("normal", label == 0, NORMAL), ("anomalous", label == 1, ANOMALOUS)):
        if members.any():
            axis.hist(
                probability[members].tolist(),
                bins=edges,
                color=color,
                alpha=0.6,
                label=f"{kind} ({int(members.sum())})",
            )
    threshold = row.get("image_threshold", float("nan"))
    title = "Image scores"
    if not math.isnan(threshold):
        rates = [
            f"{name} {row[column]:.1%}"
            for name, column in (("false alarms", "image_false_alarm_rate"), ("recall", "image_recall"))
            if _defined(row, column)
        ]
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
        title += "\n" + ", ".join(rates) if rates else ""
    axis.set(title=title, xlabel="anomaly probability", ylabel="images", xlim=(0, 1))
    axis.yaxis.set_major_locator(MaxNLocator(5, integer=True))
    axis.legend(loc="upper center")
    return None


def reliability_panel(axis: Axes, results: CategoryResults, row: pd.Series) -> None:
    """The share of anomalous images against the mean probability, in the ECE's bins (marker area: their share)."""
    if not _defined(row, "image_ece"):
        return _undefined(axis, "Reliability", "the test images have no labels")
    bins = reliability_bins(results.values["probability"], results.values["label"])
    axis.plot([0, 1], [0, 1], color=REFERENCE, linestyle="--", linewidth=1, label="calibrated")
    axis.plot(bins.probability, bins.anomalous, color=MODEL, marker="o", label=f"ECE {row.image_ece:.3f}")
    axis.scatter(bins.probability, bins.anomalous, s=400 * bins.share, color=MODEL, alpha=0.3)
    axis.set(title="Reliability", xlabel="mean probability", ylabel="share anomalous", xlim=(0, 1), ylim=(-0.02, 1.02))
    axis.legend(loc="upper left")
    return None


def sparsification_panel(axis: Axes, results: CategoryResults, row: pd.Series) -> None:
    """The sparsification curves of the image uncertainty; AUSE is the mean gap between the model and the oracle."""
    values = results.values
    if not _defined(row, "image_ause"):
        return _undefined(axis, "Sparsification", "needs labels and the uncertainty")
    error = (values["probability"].double() - values["label"].double()).abs()
    curves = sparsification_curves(values["uncertainty"], error)
    removed = torch.arange(len(error)) / len(error)
    axis.plot(removed, curves.model, color=MODEL, label=f"uncertainty, AUSE {row.image_ause:.3f}")
    axis.plot(removed, curves.oracle, color="black", label="oracle")
    axis.plot(removed, torch.full_like(curves.model, float(curves.model[0])), color=REFERENCE, linestyle="--",
              label=f"random, AUSE {row.image_ause_random:.3f}")  # fmt: skip
    axis.set(title="Sparsification", xlabel="share of images removed", ylabel="mean |probability - label|", xlim=(0, 1))
    axis.legend(loc="upper right")
    return None


Panel = Callable[[Axes, CategoryResults, pd.Series], None]
CATEGORY_PANELS: tuple[Panel, ...] = (roc_panel, pr_panel, pro_panel, score_panel, reliability_panel)


def panel_grid(rows: int, columns: int = 3) -> tuple[Figure, list[Axes]]:
    """A figure of 4 x 3.6 inch panels with fixed margins (a layout engine costs as much as drawing the panels)."""
    width, height = 4 * columns, 3.6 * rows
    figure = Figure(figsize=(width, height))
    axes = figure.subplots(rows, columns, squeeze=False).flatten().tolist()
    figure.subplots_adjust(left=0.6 / width, right=1 - 0.2 / width, bottom=0.45 / height, top=1 - 0.7 / height,
                           wspace=0.3, hspace=0.45)  # fmt: skip
    return figure, axes


def few_ticks(axis: Axes, *, x: bool = True, y: bool = True) -> None:
    """At most five ticks on the numeric axes: each tick's text is laid out, and they are most of a figure's cost."""
    for numeric, ticks in ((x, axis.xaxis), (y, axis.yaxis)):
        if numeric and isinstance(ticks.get_major_locator(), AutoLocator):  # a panel's own locator stays
            ticks.set_major_locator(MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]))


def category_figure(name: str, results: CategoryResults, row: pd.Series) -> Figure:
    """One category's panels, with the sparsification where it has an uncertainty."""
    panels = [*CATEGORY_PANELS, *((sparsification_panel,) if "uncertainty" in results.values else ())]
    figure, axes = panel_grid(math.ceil(len(panels) / 3))
    for panel, axis in zip(panels, axes, strict=False):
        panel(axis, results, row)
        few_ticks(axis)
    for axis in axes[len(panels) :]:
        axis.set_axis_off()
    figure.suptitle(f"{name}: {row.images} test images")
    return figure


def mean_figure(results: dict[str, CategoryResults], table: pd.DataFrame) -> Figure:
    """Every category's ROC, PR and PRO curves in one panel each, and each category's figures against the mean."""
    figure, axes = panel_grid(2)
    curves = (("image_AUROC", "Image ROC", ("false-positive rate", "true-positive rate")),
              ("image_AUPR", "Image precision-recall", ("recall", "precision")),
              ("pixel_AUPRO", "Pixel PRO", ("false-positive rate", "per-region overlap")))  # fmt: skip
    for axis, (column, title, (xlabel, ylabel)) in zip(axes, curves, strict=False):
        for name, category in results.items():
            if _defined(table.loc[name], column):
                first, second = category.curve(column)
                x, y = (second, first) if column == "image_AUPR" else (first, second)
                style = "steps-post" if column == "image_AUPR" else "default"
                axis.plot(x, y, drawstyle=style, linewidth=1, label=f"{name} {table.loc[name, column]:.3f}")
        mean = table.loc[MEAN_ROW].get(column, float("nan"))
        few_ticks(axis)
        axis.set(title=f"{title}: mean {mean:.3f}", xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.02))
        if axis.lines:
            axis.legend(loc="lower right", fontsize="small")
    categories = table.drop(index=[name for name in table.index if str(name).startswith(MEAN_ROW)])
    for axis, column in zip(axes[3:], ("image_AUROC", "pixel_AUPRO", "image_false_alarm_rate"), strict=False):
        if column not in categories or categories[column].isna().all():
            _undefined(axis, column, "no category defines it")
            continue
        axis.barh(categories.index.astype(str), categories[column], color=MODEL)
        axis.axvline(
            table.loc[MEAN_ROW, column], color="black", linestyle="--", label=f"mean {table.loc[MEAN_ROW, column]:.3f}"
        )
        axis.set(title=column, xlim=(0, 1))
        few_ticks(axis, y=False)  # the categories' names stay
        axis.legend(loc="lower right", fontsize="small")
    figure.suptitle(f"All categories: {table.loc[MEAN_ROW, 'images']} test images")
    return figure


def write_plots(results: dict[tuple[str, str], CategoryResults], table: pd.DataFrame, folder: Path) -> list[Path]:
    """Write ``<category>.png`` for every category of the table and ``mean.png``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    named = {name: results[key] for key, name in row_names(list(results)).items() if name in table.index}
    paths = []
    # The text takes its size when it is made; a fixed title height spares a search of every axis for the room above.
    with mpl.rc_context({"font.size": 8, "axes.titley": 1.0}):
        figures = {name: category_figure(name, category, table.loc[name]) for name, category in named.items()}
        figures[MEAN_ROW] = mean_figure(named, table)
        for name, figure in figures.items():
            path = folder / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)  # a "<dataset>/<category>" row
            figure.savefig(path, dpi=80)
            paths.append(path)
    logger.info("Plots of %d categories and their mean written to %s.", len(named), folder)
    return paths


def write_score_distribution(scores: dict[str, list[float]], thresholds: dict[str, float], path: Path) -> Path:
    """A predict run's picture: each category's probabilities, with the image threshold that labelled them."""
    columns = min(len(scores), 4) or 1
    rows = math.ceil(len(scores) / columns) or 1
    with mpl.rc_context({"font.size": 8}):
        figure = Figure(figsize=(3.2 * columns, 2.6 * rows), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False).flatten()
        for axis, (category, values) in zip(axes, sorted(scores.items()), strict=False):
            axis.hist(values, bins=torch.linspace(0, 1, 41).tolist(), color=NORMAL)
            flagged = sum(value > thresholds[category] for value in values)
            axis.axvline(thresholds[category], color="black", linestyle="--", linewidth=1)
            axis.set(title=f"{category}: {flagged} of {len(values)} above {thresholds[category]:.3f}",
                     xlabel="anomaly probability", ylabel="images", xlim=(0, 1))  # fmt: skip
        for axis in axes[len(scores) :]:
            axis.set_axis_off()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=80)
    return path
