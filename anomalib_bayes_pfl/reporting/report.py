# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``report.html`` of a test run and ``predictions.html`` of a predict run: a page for a person who skips the log.

A test run's page holds the per-category table, the plots (``plots.py``) and three galleries: the worst false alarms
(normal images labelled anomalous, highest probability first), the worst misses (anomalous images labelled normal,
lowest probability first) and the review queue (images marked ``needs_review``, most uncertain first). A predict
run's page holds the images, labels and review marks per category, the score distribution and two galleries: the
review queue and the images labelled anomalous. Both list the reference and calibration images of each category.

The galleries (``gallery.py``) embed their pictures as JPEGs, so the page is one file that needs nothing else but
the ``plots/`` beside it (relative links): no script and no address outside the folder. Its size does not grow with
the run; review galleries keep their candidates per category for ``review_fraction``, whose marks are ranks within a
category decided at the end.
"""

import html
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.model.references import CategoryReferences
from anomalib_bayes_pfl.settings import BayesPFLSettings

from .gallery import Entry, Gallery, gallery_html, reduced_map
from .page import Page
from .plots import PLOTS_DIR, write_score_distribution
from .review import grouped_review_flags
from .table import row_names

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
PREDICTIONS_HTML = "predictions.html"  # beside predictions.csv: a test and a predict in one folder keep both pages
Key = tuple[str, str]  # dataset, category


def references_html(references: dict[str, CategoryReferences]) -> str:
    """Each category's reference and calibration images, as paths."""
    items = []
    for category, stored in sorted(references.items()):
        for kind, paths in (("reference", stored.reference_images), ("calibration", stored.calibration_images)):
            if paths:
                listed = "".join(f"<li><code>{html.escape(str(path))}</code></li>" for path in paths)
                items.append(f"<details><summary>{html.escape(category)}: {len(paths)} {kind} images</summary>"
                             f"<ul>{listed}</ul></details>")  # fmt: skip
    return "".join(items)


class RunReport(Callback):
    """Write ``report.html`` at the end of a test run and ``predictions.html`` at the end of a predict run.

    Args:
        settings: The run's options when it runs (the uncertainty measure, the review rule).
        table: The per-category table of the test run, once computed (``PerCategoryMetrics``).
        references: Each category's stored references and calibration images.
    """

    def __init__(
        self,
        settings: Callable[[], BayesPFLSettings],
        table: Callable[[], pd.DataFrame | None],
        references: Callable[[], dict[str, CategoryReferences]],
    ) -> None:
        self.settings = settings
        self.table = table
        self.references = references
        self.rows: list[Entry] = []
        self.galleries: dict[str, Gallery] = {}

    def _start(self, kind: str) -> None:
        self.rows = []
        review = Gallery(
            "Review queue",
            "Images marked needs_review, most uncertain first: the model's samples disagree on them.",
            rank=lambda entry: entry.uncertainty or 0.0,
        )
        if kind == "test":
            self.galleries = {
                "false_alarms": Gallery(
                    "Worst false alarms",
                    "Normal images labelled anomalous, highest probability first.",
                    rank=lambda entry: entry.score,
                ),
                "misses": Gallery(
                    "Worst misses",
                    "Anomalous images labelled normal, lowest probability first.",
                    rank=lambda entry: -entry.score,
                ),
                "review": review,
            }
        else:
            self.galleries = {
                "review": review,
                "anomalous": Gallery(
                    "Labelled anomalous",
                    "Images labelled anomalous, highest probability first.",
                    rank=lambda entry: entry.score,
                ),
            }

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start with empty galleries."""
        del trainer, pl_module
        self._start("test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start with empty galleries."""
        del trainer, pl_module
        self._start("predict")

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: BayesPFLBatch,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep each image's scores, and the maps of those that may enter a gallery."""
        del pl_module, batch, batch_idx, dataloader_idx
        review_fraction = self.settings().review_fraction

        def values(name: str) -> list[Any]:
            value = getattr(outputs, name)
            return value.detach().cpu().tolist() if value is not None else [None] * len(outputs.pred_score)

        columns = zip(
            outputs.image_path or [""] * len(outputs.pred_score),
            outputs.dataset,
            outputs.category,
            *(values(name) for name in ("pred_score", "image_threshold", "uncertainty", "gt_label")),
            *(values(name) for name in ("pred_label", "needs_review")),
            strict=True,
        )
        for index, (path, dataset, category, *rest) in enumerate(columns):
            entry = Entry(path, dataset, category, *rest, key=(trainer.global_rank, len(self.rows)))
            entry.label = None if entry.label is None else int(entry.label)
            entry.pred_label = None if entry.pred_label is None else int(entry.pred_label)
            self.rows.append(entry)
            for name, gallery in self.galleries.items():
                group = (dataset, category) if name == "review" and review_fraction else None
                if not self._candidate(name, entry, review_fraction) or not gallery.wants(gallery.rank(entry), group):
                    continue
                maps = {"anomaly_map": reduced_map(outputs.anomaly_map, index),
                        "uncertainty_map": reduced_map(outputs.uncertainty_map, index)}  # fmt: skip
                gallery.offer(replace(entry, **maps), group)

    on_predict_batch_end = on_test_batch_end

    @staticmethod
    def _candidate(gallery: str, entry: Entry, review_fraction: float) -> bool:
        if gallery == "false_alarms":
            return entry.label == 0 and entry.pred_label == 1
        if gallery == "misses":
            return entry.label == 1 and entry.pred_label == 0
        if gallery == "anomalous":
            return entry.pred_label == 1
        return entry.uncertainty is not None and (bool(entry.needs_review) or bool(review_fraction))

    def _gathered(self, trainer: Trainer) -> bool:
        """Every process's rows and candidates on the first process; ``False`` on the others.

        Each image arrives from one process only (the test's padded repeats are cut before scoring, by
        ``DropSamplerPadding``; Lightning's predict sampler repeats none), so nothing is merged: two images that share a
        path or a name are two rows.
        """
        if trainer.world_size == 1:
            return True
        shares: list[Any] = [None] * trainer.world_size
        heaps = {name: gallery.heaps for name, gallery in self.galleries.items()}  # the ranks' lambdas do not pickle
        torch.distributed.all_gather_object(shares, (self.rows, heaps))
        if not trainer.is_global_zero:
            return False
        self.rows = [entry for rows, _ in shares for entry in rows]
        for name, gallery in self.galleries.items():
            merged = Gallery(gallery.title, gallery.explanation, gallery.rank, gallery.size)
            for _, galleries in shares:
                for group, heap in galleries[name].items():
                    for *_, entry in heap:
                        merged.offer(entry, group)
            self.galleries[name] = merged
        return True

    def _review_marks(self) -> set[tuple[int, int]]:
        """The entries marked ``needs_review``: each image's own mark, or ``review_fraction``'s ranks over the run."""
        fraction = self.settings().review_fraction
        if not fraction:
            return {entry.key for entry in self.rows if entry.needs_review}
        scored = [entry for entry in self.rows if entry.uncertainty is not None]
        if not scored:
            return set()
        groups = [(entry.dataset, entry.category) for entry in scored]
        flags = grouped_review_flags(groups, torch.tensor([entry.uncertainty for entry in scored]), fraction)
        return {entry.key for entry, flagged in zip(scored, flags.tolist(), strict=True) if flagged}

    def _galleries(self, page: Page) -> None:
        settings = self.settings()
        marked = self._review_marks()
        for name, gallery in self.galleries.items():
            if name == "review":
                shown = lambda entry: entry.key in marked  # noqa: E731
            else:
                shown = lambda entry, name=name: self._candidate(name, entry, 0.0)  # noqa: E731
            entries = [replace(entry, needs_review=entry.key in marked) for entry in gallery.entries(shown)]
            total = sum(shown(entry) for entry in self.rows)
            note = gallery.explanation
            if name == "review" and settings.review_rate is None and not settings.review_fraction:
                note += " No review rule was given (--model.review_rate or --model.review_fraction)."
            page.add(gallery.title, gallery_html(gallery, entries, total, settings.uncertainty), note)

    def _references(self, page: Page) -> None:
        listed = references_html(self.references())
        if listed:
            page.add("Reference and calibration images", listed, "The normal images that set each category's "
                     "references (few-shot) and calibrated its thresholds.")  # fmt: skip

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the test run's page: the table, the plots and the galleries."""
        del pl_module
        if not self._gathered(trainer):
            return
        root = Path(trainer.default_root_dir)
        page = Page(f"Bayes-PFL test run: {len(self.rows)} images")
        table = self.table()
        if table is not None:
            page.add("Per-category metrics", table.to_html(float_format=lambda value: f"{value:.4f}", na_rep="NaN"),
                     "The table of per_category_metrics.csv; NaN: the log says why it cannot be computed.")  # fmt: skip
        plots = sorted((root / PLOTS_DIR).rglob("*.png")) if (root / PLOTS_DIR).is_dir() else []
        images = "".join(
            f'<p><img class="plot" src="{html.escape(path.relative_to(root).as_posix())}" '
            f'alt="{html.escape(path.stem)}"></p>'
            for path in sorted(plots, key=lambda path: (path.stem != "mean", str(path)))
        )
        page.add("Plots", images or "<p>No plots were written.</p>", "All categories first, then each category.")
        self._galleries(page)
        self._references(page)
        self._write(page, root / REPORT_HTML)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the predict run's page: the labels, the score distribution and the galleries."""
        del pl_module
        if not self._gathered(trainer):
            return
        root = Path(trainer.default_root_dir)
        marked = self._review_marks()
        names = row_names(sorted({(entry.dataset, entry.category) for entry in self.rows}))
        categories = [names[entry.dataset, entry.category] for entry in self.rows]
        rows = pd.DataFrame(
            {
                "category": categories,
                "images": 1,
                "labelled anomalous": [int(entry.pred_label == 1) for entry in self.rows],
                "needs review": [int(entry.key in marked) for entry in self.rows],
            }
        )
        counts = rows.groupby("category").sum()
        counts.loc["all"] = counts.sum()
        page = Page(f"Bayes-PFL predictions: {len(self.rows)} images")
        note = "Images per category, how many the model labelled anomalous, and how many it sends to a person."
        page.add("Labels", counts.to_html(), note + " predictions.csv lists every image.")
        scores: dict[str, list[float]] = {}
        thresholds: dict[str, float] = {}
        for entry, category in zip(self.rows, categories, strict=True):
            scores.setdefault(category, []).append(entry.score)
            thresholds[category] = entry.threshold
        distribution = write_score_distribution(scores, thresholds, root / PLOTS_DIR / "predicted_scores.png")
        picture = f'<p><img class="plot" src="{PLOTS_DIR}/{distribution.name}" alt="score distribution"></p>'
        page.add("Score distribution", picture, "Each category's probabilities, with its image threshold.")
        self._galleries(page)
        self._references(page)
        self._write(page, root / PREDICTIONS_HTML)

    @staticmethod
    def _write(page: Page, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        page.write(path)
        print(f"Report written to {path}: open it in a browser")
