# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The metrics a test run computes over all its images, and anomalib's evaluator that says which do not apply and why.

:func:`zero_shot_metrics` are BayesPFL's own; :func:`side_by_side_metrics` add pixel AUPR, for the per-category table
(``metrics.py``) and for every job of the side-by-side benchmark, whatever its model.
"""

import logging
from collections.abc import Sequence
from typing import Any

from anomalib.metrics import AUPR, AUPRO, AUROC, Evaluator, F1Max
from anomalib.metrics.base import AnomalibMetric
from lightning.pytorch import LightningModule, Trainer

logger = logging.getLogger(__name__)


def zero_shot_metrics() -> list[AnomalibMetric]:
    """The zero-shot literature's metrics: image AUROC, AP (AUPR) and F1Max; pixel AUROC and AUPRO."""
    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUPR(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Max(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]


def side_by_side_metrics() -> list[AnomalibMetric]:
    """:func:`zero_shot_metrics` and pixel AUPR: the per-category table's, and every benchmark job's by default.

    Each reads only scores, maps and ground truth, so that it applies to every model that gives them, whatever its
    thresholds.
    """
    return [*zero_shot_metrics(), AUPR(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False)]


# Why a metric got no value, by the batch field that no test image had.
MISSING_FIELD_REASONS = {
    "pred_score": "the model gives no image scores",
    "anomaly_map": "the model gives no anomaly maps",
    "gt_label": "the test data has no labels",
    "gt_mask": "the test data has no masks",
}


class ApplicableMetricsEvaluator(Evaluator):
    """anomalib's evaluator that logs only the metrics some image fed, and says why each other one has no value.

    Pixel metrics do not apply without masks, nor to a model without anomaly maps. anomalib's evaluator would compute
    every metric, and torchmetrics warns for each one computed before any update. :attr:`not_computed` maps each
    metric that got no value to the reason, for the benchmark's rows.
    """

    def __init__(
        self,
        val_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        test_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        compute_on_cpu: bool = True,
    ) -> None:
        super().__init__(val_metrics, test_metrics, compute_on_cpu)
        self.not_computed: dict[str, str] = {}
        self._missing_fields: dict[str, set[str]] = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the previous test run's reasons."""
        del trainer, pl_module
        self.not_computed, self._missing_fields = {}, {}

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Note the fields each metric found missing, then update the metrics as anomalib does."""
        for metric in self.test_metrics:
            missing = {field for field in metric.fields if getattr(batch, field, None) is None}
            self._missing_fields.setdefault(metric.name, set()).update(missing)
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the metrics that some process updated; say which do not apply, and why."""
        del pl_module
        for metric in self.test_metrics:
            if trainer.strategy.reduce_boolean_decision(metric.update_called, all=False):
                self.log(metric.name, metric)
                continue
            missing = sorted(self._missing_fields.get(metric.name, ()))
            reasons = [MISSING_FIELD_REASONS.get(field, f"no test image has {field}") for field in missing]
            self.not_computed[metric.name] = "; ".join(reasons) or "no test image reached it"
        if self.not_computed:
            logger.info(
                "Not computed: %s.", "; ".join(f"{name} ({reason})" for name, reason in self.not_computed.items())
            )
