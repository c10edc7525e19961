# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``predictions.csv``: every predicted image's path, score and label, next to the other outputs of a run.

anomalib's visualizer writes images; a table is what a production line reads back. Rows are appended batch by
batch, so that a long run keeps nothing in memory and an interrupted one keeps what it scored.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from anomalib.data import ImageBatch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

PREDICTIONS_CSV = "predictions.csv"
COLUMNS = ["image_path", "pred_score", "pred_label"]


class PredictionTable(BasePredictionWriter):
    """Write the image path, score and post-processed label of every predicted image.

    With several processes each writes its own share, ``predictions_rank<r>.csv``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.path: Path | None = None
        self.rows = 0

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the table with its header."""
        del pl_module
        name = PREDICTIONS_CSV if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = Path(trainer.default_root_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(columns=COLUMNS).to_csv(self.path, index=False)
        self.rows = 0

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: ImageBatch,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Append the batch's rows."""
        del trainer, pl_module, batch_indices, batch, batch_idx, dataloader_idx
        count = len(prediction.pred_score)
        labels = prediction.pred_label.int().tolist() if prediction.pred_label is not None else [None] * count
        table = pd.DataFrame(
            {
                "image_path": prediction.image_path or [None] * count,
                "pred_score": prediction.pred_score.tolist(),
                "pred_label": pd.array(labels, dtype="Int64"),
            }
        )
        table.to_csv(self.path, mode="a", header=False, index=False)
        self.rows += count

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Say where the table is."""
        del trainer, pl_module
        print(f"Scores and labels of {self.rows} images written to {self.path}")
