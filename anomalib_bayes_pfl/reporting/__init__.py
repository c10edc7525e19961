# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Reporting: what a run writes and prints about the scored batches, read from the batches themselves.

``evaluator.py`` holds the metrics of a whole test run and the evaluator that computes them, ``metrics.py`` keeps
per-category metrics, ``table.py`` makes the per-category table of a test run and ``plots.py`` its plots;
``predictions.py`` writes ``predictions.csv`` of a predict run; ``report.py`` writes a test run's ``report.html`` and a
predict run's ``predictions.html`` (pages made by ``page.py``, galleries by ``gallery.py``); ``comparison.py`` draws
the side-by-side benchmark's chart and page; ``visualization.py`` draws each image's uncertainty and the review
banners; ``review.py`` decides which images a person should see; ``paper_score.py`` fuses the authors' transductive
image score, for comparison with published numbers.
"""

from .evaluator import ApplicableMetricsEvaluator, side_by_side_metrics, zero_shot_metrics
from .metrics import PerCategoryMetrics
from .predictions import PREDICTIONS_CSV, PredictionTable
from .report import PREDICTIONS_HTML, REPORT_HTML, RunReport
from .table import CSV_NAME, MEAN_ROW
from .visualization import UncertaintyVisualizer

__all__ = [
    "CSV_NAME",
    "MEAN_ROW",
    "PREDICTIONS_CSV",
    "PREDICTIONS_HTML",
    "REPORT_HTML",
    "ApplicableMetricsEvaluator",
    "PerCategoryMetrics",
    "PredictionTable",
    "RunReport",
    "UncertaintyVisualizer",
    "side_by_side_metrics",
    "zero_shot_metrics",
]
