# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The side-by-side benchmark's pictures, beside its ``results.csv``: ``results.png`` and ``results.html``.

The chart has one panel per test metric that some job reports (anomalib's ``image_*`` and ``pixel_*`` figures): the
categories along the axis, one bar per model with its value above it, and the mean over the categories. Where a model
has no bar, the panel says why: ``failed`` (the job's ``error``), ``not run`` (no row: the run ended before the job),
``not computed`` (the job ran without that metric: with ``--metrics common`` its ``not_computed`` column says why), or,
for the mean, ``no mean`` when one of its categories has no value, since a mean over the categories that succeeded
would not compare with the others'. The legend stands above the panels, headed by the count of the jobs planned,
finished, failed and not run. Every text is at least 10 px high in the saved picture. The page holds the chart and every
job's row, with why a metric was not computed, its error and a link to its log.
"""

import html
import os
import re
from pathlib import Path

import matplotlib as mpl
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .page import Page

RESULTS_PNG = "results.png"
RESULTS_HTML = "results.html"
METRIC = re.compile(r"^(image|pixel)_")
MEAN = "mean"
PANEL_COLUMNS = 2
DPI = 100
FONT_SIZE = 10  # points: 14 px at DPI; bar labels are 80 % of it (11 px)
MISSING = {"failed": "failed", "not_run": "not\nrun", "not_computed": "not\ncomputed", "no_mean": "no\nmean"}


def metric_columns(results: pd.DataFrame) -> list[str]:
    """The test metrics that some job reports, those reported by the most jobs first."""
    columns = [column for column in results if METRIC.match(column) and results[column].notna().any()]
    return sorted(columns, key=lambda column: -int(results[column].notna().sum()))


def model_values(results: pd.DataFrame, models: pd.Series, categories: pd.Series, metric: str) -> pd.DataFrame:
    """One metric as a model-by-category table, with the mean over the categories (NaN unless all have a value)."""
    values = results[metric].groupby([models, categories], sort=False).first().unstack()
    order = list(dict.fromkeys(categories))
    values = values.reindex(index=list(dict.fromkeys(models)), columns=order)
    if len(order) > 1:
        values[MEAN] = values.mean(axis=1, skipna=False)
    return values


def _missing(model: str, category: str, failed: pd.DataFrame, ran: pd.DataFrame) -> str:
    """Why ``model`` has no value for ``category`` (a column of :func:`model_values`)."""
    if category == MEAN:
        return MISSING["no_mean"]
    if failed.loc[model].get(category, False):
        return MISSING["failed"]
    return MISSING["not_computed"] if ran.loc[model].get(category, False) else MISSING["not_run"]


def _metric_panel(axis: Axes, values: pd.DataFrame, failed: pd.DataFrame, ran: pd.DataFrame, metric: str) -> None:
    width = 0.8 / len(values.index)
    for position, model in enumerate(values.index):
        offsets = [index - 0.4 + width * (position + 0.5) for index in range(len(values.columns))]
        heights = values.loc[model].fillna(0).tolist()
        bars = axis.bar(offsets, heights, width, label=str(model))
        labels = [
            f"{value:.2f}" if not pd.isna(value) else _missing(model, str(category), failed, ran)
            for category, value in values.loc[model].items()
        ]
        axis.bar_label(bars, labels, fontsize=0.8 * FONT_SIZE, padding=2, linespacing=0.9)
    axis.set_xticks(range(len(values.columns)), [str(column) for column in values.columns])
    axis.set(title=metric, ylim=(0, 1.3))
    axis.set_yticks([0, 0.25, 0.5, 0.75, 1.0])


def _title(results: pd.DataFrame, planned: int | None) -> str:
    failed = int(results["error"].notna().sum())
    if planned is None:
        return f"{len(results)} benchmark jobs, {failed} failed"
    return f"{len(results)} of {planned} benchmark jobs finished: {failed} failed, {planned - len(results)} not run"


def comparison_figure(
    results: pd.DataFrame, models: pd.Series, categories: pd.Series, planned: int | None = None
) -> Figure:
    """Each metric's panel, for the rows of ``results`` named by ``models`` and ``categories`` (one label per row).

    ``planned``: how many jobs the run has; those without a row are counted as not run.
    """
    metrics = metric_columns(results)
    failed = results["error"].notna().groupby([models, categories], sort=False).any().unstack(fill_value=False)
    ran = results["error"].isna().groupby([models, categories], sort=False).any().unstack(fill_value=False)
    rows = max(1, -(-len(metrics) // PANEL_COLUMNS))
    groups = len(set(categories)) + 1
    panel_width = max(4.5, 0.6 * groups * max(1, models.nunique()) + 0.8)
    with mpl.rc_context({"font.size": FONT_SIZE}):  # the text takes its size when it is made
        figure = Figure(figsize=(PANEL_COLUMNS * panel_width, 3.6 * rows + 0.8), layout="constrained")
        axes = figure.subplots(rows, PANEL_COLUMNS, squeeze=False).flatten()
        for axis, metric in zip(axes, metrics, strict=False):
            _metric_panel(axis, model_values(results, models, categories, metric), failed, ran, metric)
        for axis in axes[len(metrics) :]:
            axis.set_axis_off()
        if not metrics:
            axes[0].text(0.5, 0.5, "No job reported a test metric.", ha="center", va="center")
            figure.suptitle(_title(results, planned))
        else:  # the counts head the legend, above the panels: a title beside it would share its place
            handles, labels = axes[0].get_legend_handles_labels()
            figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4),
                          title=_title(results, planned), frameon=False)  # fmt: skip
    return figure


def _log_link(log: object, folder: Path) -> str:
    if not isinstance(log, str):
        return ""
    relative = os.path.relpath(log, folder) if not Path(log).is_absolute() else log
    return f'<a href="{html.escape(relative)}">log</a>'


def write_comparison(
    results: pd.DataFrame, models: pd.Series, categories: pd.Series, folder: Path, planned: int | None = None
) -> Path:
    """Write ``results.png`` and ``results.html`` into ``folder`` (where ``results.csv`` is); return the page's path.

    ``planned``: how many jobs the run has (the title counts those not run).
    """
    comparison_figure(results, models, categories, planned).savefig(folder / RESULTS_PNG, dpi=DPI)
    rows = pd.DataFrame({"model": models, "category": categories})
    figures = [*metric_columns(results), *results.columns.intersection(["job_duration", "peak_memory_gb"])]
    rows = rows.join(results[figures])
    if "not_computed" in results:
        rows["not_computed"] = results["not_computed"].fillna("")
    rows["error"] = results["error"].fillna("")
    rows["log"] = [_log_link(log, Path(folder)) for log in results.get("log", pd.Series(None, index=results.index))]
    for column in rows.columns.intersection(["model", "category", "not_computed", "error"]):  # text, not markup
        rows[column] = rows[column].astype(str).map(html.escape)
    table = rows.to_html(index=False, na_rep="n/a", float_format="{:.3f}".format, escape=False, border=0)
    page = Page(f"Benchmark: {folder.name}")
    counts = f"<p><b>{html.escape(_title(results, planned))}</b></p>"
    chart = counts + f'<p><img class="plot" src="{RESULTS_PNG}" alt="benchmark chart"></p>'
    legend = (
        "Each model's value per category and the mean over the categories. 'failed': the job failed (its error is in "
        "the table); 'not run': the run ended before the job; 'not computed': the job ran without that metric (with "
        "--metrics common, the table's not_computed column says why); 'no mean': a category has no value."
    )
    page.add("Metrics", chart, legend)
    page.add("Jobs", table, "One row per job, as in results.csv (which has every column).")
    path = folder / RESULTS_HTML
    page.write(path)
    return path
