# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The side-by-side benchmark's pictures, beside its ``results.csv``: ``results.png`` and ``results.html``.

The chart has one panel per test metric that some job reports (anomalib's ``image_*`` and ``pixel_*`` figures): the
categories along the axis, one bar per model with its value above it, and the mean over the categories. Where a model
has no bar, the panel says why: ``failed`` (the job's ``error``), ``n/a`` (the metric was not computed for that job:
with ``--metrics common`` its ``not_computed`` column says why), or, for the mean, ``n/a`` when one of its categories
has no value, since a mean over the categories that succeeded would not compare with the others'. The page holds the
chart and every job's row, with why a metric was not computed, its error and a link to its log.
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


def _metric_panel(axis: Axes, values: pd.DataFrame, failed: pd.DataFrame, metric: str) -> None:
    width = 0.8 / len(values.index)
    for position, model in enumerate(values.index):
        offsets = [index - 0.4 + width * (position + 0.5) for index in range(len(values.columns))]
        heights = values.loc[model].fillna(0).tolist()
        bars = axis.bar(offsets, heights, width, label=str(model))
        labels = []
        for category, value in values.loc[model].items():
            if not pd.isna(value):
                labels.append(f"{value:.2f}")
            else:
                labels.append("failed" if failed.loc[model].get(category, False) else "n/a")
        axis.bar_label(bars, labels, fontsize="x-small", rotation=90, padding=2)
    axis.set_xticks(range(len(values.columns)), [str(column) for column in values.columns])
    axis.set(title=metric, ylim=(0, 1.25))
    axis.set_yticks([0, 0.25, 0.5, 0.75, 1.0])


def comparison_figure(results: pd.DataFrame, models: pd.Series, categories: pd.Series) -> Figure:
    """Each metric's panel, for the rows of ``results`` named by ``models`` and ``categories`` (one label per row)."""
    metrics = metric_columns(results)
    failed = results["error"].notna().groupby([models, categories], sort=False).any().unstack(fill_value=False)
    rows = max(1, -(-len(metrics) // PANEL_COLUMNS))
    groups = len(set(categories)) + 1
    with mpl.rc_context({"font.size": 8}):  # the text takes its size when it is made
        figure = Figure(figsize=(PANEL_COLUMNS * max(4.0, 1.2 * groups), 3.2 * rows), layout="constrained")
        axes = figure.subplots(rows, PANEL_COLUMNS, squeeze=False).flatten()
        for axis, metric in zip(axes, metrics, strict=False):
            _metric_panel(axis, model_values(results, models, categories, metric), failed, metric)
        for axis in axes[len(metrics) :]:
            axis.set_axis_off()
        if not metrics:
            axes[0].text(0.5, 0.5, "No job reported a test metric.", ha="center", va="center")
        else:
            handles, labels = axes[0].get_legend_handles_labels()
            figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
        figure.suptitle(f"{len(results)} benchmark jobs, {int(results['error'].notna().sum())} failed")
    return figure


def _log_link(log: object, folder: Path) -> str:
    if not isinstance(log, str):
        return ""
    relative = os.path.relpath(log, folder) if not Path(log).is_absolute() else log
    return f'<a href="{html.escape(relative)}">log</a>'


def write_comparison(results: pd.DataFrame, models: pd.Series, categories: pd.Series, folder: Path) -> Path:
    """Write ``results.png`` and ``results.html`` into ``folder`` (where ``results.csv`` is); return the page's path."""
    comparison_figure(results, models, categories).savefig(folder / RESULTS_PNG, dpi=80)
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
    chart = f'<p><img class="plot" src="{RESULTS_PNG}" alt="benchmark chart"></p>'
    legend = (
        "Each model's value per category and the mean over the categories; 'n/a': not computed for that job (with "
        "--metrics common, the table's not_computed column says why), or a mean with a category missing; 'failed': "
        "the job failed (its error is in the table)."
    )
    page.add("Metrics", chart, legend)
    page.add("Jobs", table, "One row per job, as in results.csv (which has every column).")
    path = folder / RESULTS_HTML
    page.write(path)
    return path
