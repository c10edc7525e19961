# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``predictions.csv``: every predicted image's path, category, class name, score, label, uncertainty and review mark.

anomalib's visualizer writes images; a table is what a production line reads back. Rows are appended batch by
batch, so that an interrupted run keeps what it scored. With ``review_rate`` each row's ``needs_review`` is written
with it (the image's own uncertainty against its category's calibrated threshold). With ``review_fraction`` the
column is added once every image is scored (``review.py``), as a rank within each category of the whole run.

The rows go to ``predictions.partial.csv``, which becomes ``predictions.csv`` only once the run has scored every image:
a run that fails keeps the rows it scored there, and never truncates the ``predictions.csv`` of an earlier run.

With several processes, each appends its rows, with their place in the dataset (the dataloader and the index
Lightning records for a prediction writer), to ``predictions_rank<r>.csv``; at the end the first process gathers
them into one ``predictions.csv`` in the dataset's order, decides ``review_fraction``'s marks over all images, and
removes the parts: the same file as one process writes. That place is the only key of a row: two images may share a
path or a name, and Lightning's predict sampler gives each image to one process only.
"""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.data.class_names import log_categories
from anomalib_bayes_pfl.data.validation import loader_files
from anomalib_bayes_pfl.model.uncertainty import UNCERTAINTY_UNITS
from anomalib_bayes_pfl.settings import BayesPFLSettings

from .review import grouped_review_flags, indices_by_group, warn_if_uninformative

logger = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
PARTIAL_CSV = "predictions.partial.csv"  # the rows of a run until it has scored every image
COLUMNS = ["image_path", "category", "class_name", "pred_score", "pred_label", "uncertainty"]
REVIEW_COLUMN = "needs_review"
# What each process's part adds, for the gathering: the image's place in the dataset and its dataset.
PART_COLUMNS = ["dataloader", "sample_index", "dataset"]


class PredictionTable(BasePredictionWriter):
    """Write the image path, category, score, post-processed label, uncertainty and review mark of every image."""

    def __init__(self, settings: Callable[[], BayesPFLSettings] = BayesPFLSettings) -> None:
        super().__init__(write_interval="batch")
        self.settings = settings
        self.path: Path | None = None
        self.part: Path | None = None
        self.datasets: list[str] = []  # each row's dataset: with its category, the review group
        self.written = 0

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the table (this process's part, with several) with its header; say which category each image gets."""
        images = loader_files(trainer.predict_dataloaders)
        log_categories(pl_module.image_categories(images))  # the rule that scores them: the checkpoint's category too
        folder = Path(trainer.default_root_dir)
        self.path = folder / PREDICTIONS_CSV
        self.part = folder / (PARTIAL_CSV if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv")
        self.part.parent.mkdir(parents=True, exist_ok=True)
        columns = COLUMNS + ([REVIEW_COLUMN] if self.settings().review_rate is not None else [])
        parts = PART_COLUMNS if trainer.world_size > 1 else []
        pd.DataFrame(columns=parts + columns).to_csv(self.part, index=False)
        self.datasets, self.written = [], 0

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: BayesPFLBatch,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Append the batch's rows; with several processes, each with its place in the dataset, or refuse."""
        del pl_module, batch
        if trainer.world_size > 1 and not batch_indices:
            msg = (
                f"Batch {batch_idx} of predict dataloader {dataloader_idx} carries no dataset indices, and with "
                f"{trainer.world_size} processes they are the only key that keeps every process's rows of "
                f"predictions.csv apart (paths and names may repeat). Lightning records them for a map-style dataset "
                f"with its own sampler; predict with one process (--trainer.devices 1), or from a dataset that is not "
                f"iterable and a DataLoader without a custom batch_sampler."
            )
            raise ValueError(msg)
        count = len(prediction.pred_score)
        paths = prediction.image_path or [None] * count
        labels = prediction.pred_label.int().tolist() if prediction.pred_label is not None else [None] * count
        table = pd.DataFrame(
            {
                "image_path": paths,
                "category": prediction.category,
                "class_name": prediction.class_name,
                "pred_score": prediction.pred_score.tolist(),
                "pred_label": pd.array(labels, dtype="Int64"),
                "uncertainty": prediction.uncertainty.detach().cpu().tolist(),
            }
        )
        if prediction.needs_review is not None:
            table[REVIEW_COLUMN] = prediction.needs_review.cpu().tolist()
        if trainer.world_size > 1:
            table.insert(0, "dataloader", dataloader_idx)
            table.insert(1, "sample_index", list(batch_indices))
            table.insert(2, "dataset", prediction.dataset)
        self.datasets += prediction.dataset
        self.written += count
        table.to_csv(self.part, mode="a", header=False, index=False)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the parts (with several processes), add ``review_fraction``'s marks, and say where the table is."""
        del pl_module
        settings = self.settings()
        if trainer.world_size > 1:
            trainer.strategy.barrier()  # every part is complete
            if not trainer.is_global_zero:
                return
            table, datasets = _gathered(self.path.parent, trainer.world_size)
        else:
            table, datasets = _read(self.part), self.datasets
        groups = list(zip(datasets, table.category, strict=True))
        uncertainties = torch.tensor(table.uncertainty.to_numpy(dtype=float))
        for (_, category), members in indices_by_group(groups).items():
            warn_if_uninformative(category, uncertainties[members], settings.review_fraction)
        if settings.review_fraction:
            table[REVIEW_COLUMN] = grouped_review_flags(groups, uncertainties, settings.review_fraction).tolist()
        if settings.review_fraction or trainer.world_size > 1:
            self.part = self.path.with_name(PARTIAL_CSV)
            table.to_csv(self.part, index=False)
        self.part.replace(self.path)  # complete: an earlier run's table is replaced only now
        name = settings.uncertainty
        summary = f"Scores, labels and uncertainties ({name}, {UNCERTAINTY_UNITS[name]}) of {len(table)} images "
        summary += f"written to {self.path}"
        if REVIEW_COLUMN in table:
            rule = (
                f"the most uncertain, at most {settings.review_fraction:g} of each category"
                if settings.review_fraction
                else f"uncertainty above its category's threshold for a review rate of {settings.review_rate:g}"
            )
            summary += f"; {int(table[REVIEW_COLUMN].sum())} marked needs_review ({rule})."
        print(summary)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Say where the rows scored before the failure are, and that no earlier table was touched."""
        del trainer, pl_module, exception
        if self.part is not None and self.part.is_file() and self.written:
            logger.warning(
                "Predict stopped after %d images; their rows are in %s (%s was not written).",
                self.written,
                self.part,
                PREDICTIONS_CSV,
            )


def _read(path: Path) -> pd.DataFrame:
    """A table written here, read back with every value as written (labels may be empty, paths too)."""
    return pd.read_csv(
        path,
        dtype={"pred_label": "Int64", "dataset": str, "image_path": str},
        keep_default_na=False,
        na_values={"pred_label": [""]},
        float_precision="round_trip",
    )


def _gathered(folder: Path, world_size: int) -> tuple[pd.DataFrame, list[str]]:
    """Every process's part in one table in the dataset's order; the parts are removed.

    Lightning's predict sampler gives each image to one process; a sampler that repeats images (``use_distributed_
    sampler false``) gives each place several rows, of which one is kept: the place is the key.
    """
    parts = [folder / f"predictions_rank{rank}.csv" for rank in range(world_size)]
    table = pd.concat([_read(part) for part in parts], ignore_index=True)
    table = table.drop_duplicates(["dataloader", "sample_index"]).sort_values(["dataloader", "sample_index"])
    datasets = table.pop("dataset").tolist()
    for part in parts:
        part.unlink()
    return table.drop(columns=["dataloader", "sample_index"]).reset_index(drop=True), datasets
