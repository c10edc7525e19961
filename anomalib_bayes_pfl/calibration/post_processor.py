# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Labels from probability thresholds: BayesPFL's post-processor.

Scores are already probabilities, so there is no normalisation (min-max normalisation would also clamp scores
outside the validation range and tie them). The thresholds are options of the run or statistics of a few normal
images of the category (``calibration/``), never of its test data. anomalib's post-processor without normalisation
labels a score ``s`` anomalous when ``s > 1 - sensitivity``: the sensitivity is set from the threshold. Exported
models label with the thresholds this post-processor holds; the test and predict steps label each image with its own
category's thresholds (:meth:`ProbabilityPostProcessor.label`). The review mark is a label of the image uncertainty
(:meth:`ProbabilityPostProcessor.review`), with its category's calibrated review threshold.
"""

from typing import Any

import torch
from anomalib.data import Batch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from anomalib_bayes_pfl.settings import BayesPFLSettings

DEFAULTS = BayesPFLSettings()


class ProbabilityPostProcessor(PostProcessor):
    """Label images and pixels whose abnormal probability exceeds ``image_threshold`` / ``pixel_threshold``."""

    def __init__(
        self,
        image_threshold: float = DEFAULTS.image_threshold,
        pixel_threshold: float = DEFAULTS.pixel_threshold,
    ) -> None:
        super().__init__(enable_normalization=False)
        self.set_thresholds(image_threshold, pixel_threshold)

    review_threshold: float | None = None  # exported models mark review above it (``review_rate``)

    def set_thresholds(
        self, image_threshold: float, pixel_threshold: float, review_threshold: float | None = None
    ) -> None:
        """Label with these thresholds from now on (a loaded checkpoint or the command line supplies them)."""
        for name, value in (("image_threshold", image_threshold), ("pixel_threshold", pixel_threshold)):
            if not 0.0 < value < 1.0:
                msg = f"{name} is a probability threshold in (0, 1), got {value}."
                raise ValueError(msg)
        self.image_sensitivity = 1.0 - image_threshold
        self.pixel_sensitivity = 1.0 - pixel_threshold
        self.review_threshold = review_threshold

    @property
    def thresholds(self) -> tuple[float, float]:
        """The image and pixel thresholds in use."""
        return 1.0 - self.image_sensitivity, 1.0 - self.pixel_sensitivity

    @staticmethod
    def label(batch: Batch, image_thresholds: torch.Tensor, pixel_thresholds: torch.Tensor) -> None:
        """Label each image of ``batch`` with its own (its category's) thresholds ``(N,)``.

        anomalib's thresholding then keeps these labels.
        """
        batch.pred_label = batch.pred_score > image_thresholds.to(batch.pred_score)
        batch.pred_mask = batch.anomaly_map > pixel_thresholds.to(batch.anomaly_map).view(-1, 1, 1)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        """Collect nothing: labels come from the thresholds, never from statistics of validation (test) images."""
        del trainer, pl_module, outputs, batch, batch_idx, dataloader_idx

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute nothing: there is nothing collected."""
        del trainer, pl_module

    @staticmethod
    def review(uncertainty: torch.Tensor, review_thresholds: torch.Tensor | float) -> torch.Tensor:
        """Whether each image needs review: its uncertainty is strictly above its (category's) review threshold."""
        return uncertainty > torch.as_tensor(review_thresholds).to(uncertainty)
