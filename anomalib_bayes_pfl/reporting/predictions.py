# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``predictions.csv``: every predicted image's path, category, class name, score, label and uncertainty.

anomalib's visualizer writes images; a table is what a production line reads back. Rows are appended batch by
batch, so that an interrupted run keeps what it scored. With ``review_fraction``, the ``needs_review`` column is
added once every image is scored (``review.py``): only each row's category and uncertainty are kept until then.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.data.class_names import image_categories, log_categories
from anomalib_bayes_pfl.data.validation import loader_files
from anomalib_bayes_pfl.model.uncertainty import UNCERTAINTY_UNITS
from anomalib_bayes_pfl.settings import BayesPFLSettings

from .review import grouped_review_flags, indices_by_group, warn_if_uninformative

PREDICTIONS_CSV = "predictions.csv"
COLUMNS = ["image_path", "category", "class_name", "pred_score", "pred_label", "uncertainty"]


class PredictionTable(BasePredictionWriter):
    """Write the image path, category, score, post-processed label and uncertainty of every predicted image.

    With several processes each writes its own share, ``predictions_rank<r>.csv``, and marks its own share for review.
    """

    def __init__(self, settings: Callable[[], BayesPFLSettings] = BayesPFLSettings) -> None:
        super().__init__(write_interval="batch")
        self.settings = settings
        self.path: Path | None = None
        self.categories: list[tuple[str, str]] = []
        self.uncertainties: list[torch.Tensor] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the table with its header; say which category each image gets."""
        del pl_module
        images = loader_files(trainer.predict_dataloaders)
        class_name, datamodule = self.settings().class_name, getattr(trainer, "datamodule", None)
        log_categories(image_categories(images, len(images), class_name=class_name, datamodule=datamodule))
        name = PREDICTIONS_CSV if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = Path(trainer.default_root_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(columns=COLUMNS).to_csv(self.path, index=False)
        self.categories, self.uncertainties = [], []

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
        """Append the batch's rows."""
        del trainer, pl_module, batch_indices, batch, batch_idx, dataloader_idx
        count = len(prediction.pred_score)
        paths = prediction.image_path or [None] * count
        labels = prediction.pred_label.int().tolist() if prediction.pred_label is not None else [None] * count
        uncertainty = prediction.uncertainty.detach().cpu()
        categories = list(zip(prediction.dataset, prediction.category, strict=True))
        table = pd.DataFrame(
            {
                "image_path": paths,
                "category": prediction.category,
                "class_name": prediction.class_name,
                "pred_score": prediction.pred_score.tolist(),
                "pred_label": pd.array(labels, dtype="Int64"),
                "uncertainty": uncertainty.tolist(),
            }
        )
        table.to_csv(self.path, mode="a", header=False, index=False)
        self.categories += categories
        self.uncertainties.append(uncertainty)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Add the review marks, and say where the table is."""
        del trainer, pl_module
        rows = len(self.categories)
        settings = self.settings()
        fraction, name = settings.review_fraction, settings.uncertainty
        written = f"Scores, labels and uncertainties ({name}, {UNCERTAINTY_UNITS[name]}) of {rows} images written to"
        uncertainties = torch.cat(self.uncertainties) if rows else torch.zeros(0)
        for (_, category), members in indices_by_group(self.categories).items():
            warn_if_uninformative(category, uncertainties[members], fraction)
        if not fraction:
            print(f"{written} {self.path}")
            return
        flags = grouped_review_flags(self.categories, uncertainties, fraction)
        table = pd.read_csv(
            self.path,
            dtype={"pred_label": "Int64"},
            keep_default_na=False,
            na_values=[""],
            float_precision="round_trip",
        )
        table["needs_review"] = flags.tolist()
        table.to_csv(self.path, index=False)
        print(
            f"{written} {self.path}; {int(flags.sum())} marked needs_review (the most uncertain, at most {fraction:g} "
            f"of each category)."
        )
