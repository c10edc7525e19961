# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Training data that BayesPFL can learn from: real anomalies, or synthetic ones when the data has none.

The paper trains on real anomalies of an annotated auxiliary dataset. Normal-only data (a one-class datamodule
such as MVTecAD, as in every anomalib benchmark) gets synthetic anomalies (anomalib's Perlin generator, with their
masks) unless a probability of 0 asks to refuse it; either way the deviation is announced.

Which masks the pixel losses may use is read from the batch (:func:`known_masks`): a normal image's mask is known
(empty), an anomalous image's if it has a mask file or marks some pixels (a synthetic anomaly, a mosaic).
"""

import logging

import torch
from anomalib.data import Batch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from lightning.pytorch import Callback, LightningModule, Trainer
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

logger = logging.getLogger(__name__)

# Share of normal training images replaced by synthetic anomalies when the training data has no anomalies.
NORMAL_ONLY_SYNTHETIC_ANOMALIES = 0.5


def known_masks(batch: Batch) -> torch.Tensor | None:
    """Which images of a training batch have a known mask; ``None`` when all do, or when there are no masks.

    An anomalous image whose mask is empty and comes from no file has no known mask (a real anomaly in data without
    masks, given an empty one with the synthetic anomalies): it must not teach the pixel head that its defect is normal.
    """
    if batch.gt_mask is None:
        return None
    has_file = torch.tensor([bool(path) for path in batch.mask_path or [""] * len(batch)], device=batch.gt_mask.device)
    known = (batch.gt_label == 0) | batch.gt_mask.flatten(1).any(dim=1) | has_file
    return None if bool(known.all()) else known


class SyntheticAnomalies(Callback):
    """Decide at the start of training whether the data needs synthetic anomalies, then add them to its batches.

    Args:
        probability: Probability that a normal training image is replaced by a synthetic anomaly; ``None`` decides
            from the data (0 with real anomalies, :data:`NORMAL_ONLY_SYNTHETIC_ANOMALIES` without), 0 refuses
            normal-only data.
    """

    def __init__(self, probability: float | None = None) -> None:
        if probability is not None and not 0.0 <= probability <= 1.0:
            msg = f"synthetic_anomalies is a probability in [0, 1], got {probability}."
            raise ValueError(msg)
        self.probability = probability
        self.generator: PerlinAnomalyGenerator | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Read the training set's labels, then announce synthetic anomalies or refuse normal-only data."""
        del pl_module
        samples = getattr(getattr(trainer.train_dataloader, "dataset", None), "samples", None)
        anomalous = samples[samples.label_index == 1] if samples is not None else None
        probability = self.probability
        if probability is None:
            probability = 0.0 if anomalous is None or len(anomalous) else NORMAL_ONLY_SYNTHETIC_ANOMALIES
            if probability:
                logger.warning(
                    "The training data has normal images only; BayesPFL learns anomalies from an annotated auxiliary "
                    "dataset, so %.0f%% of the normal images are replaced by synthetic Perlin anomalies with masks. "
                    "This deviates from the paper's protocol. For the paper's: --data ZeroShotCrossDataset "
                    "--data.auxiliary_root datasets/visa --data.target_root datasets/MVTecAD; to refuse normal-only "
                    "data: --model.synthetic_anomalies 0.",
                    100 * probability,
                )
        elif probability:
            logger.warning(
                "synthetic_anomalies=%s: %.0f%% of the normal training images are replaced by synthetic Perlin "
                "anomalies with masks. This deviates from the paper's protocol, which trains on the real anomalies of "
                "an annotated auxiliary dataset only.",
                probability,
                100 * probability,
            )
        if anomalous is not None and not len(anomalous) and not probability:
            msg = (
                "BayesPFL is trained on an annotated *auxiliary* dataset with anomalous images, then used zero-shot "
                "on unseen categories, but this training set has normal images only. Either evaluate with trained "
                "prompts (no training): --model.prompt_weights <anomalib_train_checkpoint.ckpt or train_visa.pth>; "
                "or train on an auxiliary dataset: --data anomalib_bayes_pfl.ZeroShotCrossDataset "
                "--data.auxiliary_root datasets/visa --data.target_root datasets/MVTecAD; or synthesise anomalies "
                "on the normal images: --model.synthetic_anomalies 0.5."
            )
            raise ValueError(msg)
        if anomalous is not None and "mask_path" in anomalous:
            unmasked = int((anomalous.mask_path.fillna("") == "").sum())
            if unmasked:
                logger.warning(
                    "%d anomalous training image(s) have no mask: their pixel losses are skipped and they teach the "
                    "image head only.",
                    unmasked,
                )
        self.generator = PerlinAnomalyGenerator(probability=probability) if probability else None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, batch_idx: int) -> None:
        """Replace some normal images of the batch, in place, by synthetic anomalies with their masks."""
        del trainer, pl_module, batch_idx
        if self.generator is not None:
            add_synthetic_anomalies(batch, self.generator)


def add_synthetic_anomalies(batch: Batch, generator: PerlinAnomalyGenerator) -> None:
    """Turn some normal images of a pre-processed (CLIP-normalised) batch into labelled, masked anomalies, in place.

    Real anomalies stay as they are. Without masks in the data the batch gets masks: empty for normal images,
    the synthetic ones, and empty but unknown (see :func:`known_masks`) for real anomalies.
    """
    images, labels = batch.image, batch.gt_label
    mean = images.new_tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    augmented, synthetic_masks = generator((images * std + mean).clamp(0, 1))
    synthetic_masks = synthetic_masks.squeeze(1) * (labels == 0).view(-1, 1, 1)
    data_masks = batch.gt_mask
    batch.image = torch.where(synthetic_masks.unsqueeze(1) > 0, (augmented - mean) / std, images)
    batch.gt_mask = synthetic_masks if data_masks is None else torch.maximum(data_masks.float(), synthetic_masks)
    batch.gt_label = torch.where(synthetic_masks.flatten(1).amax(dim=1) > 0, torch.ones_like(labels), labels)
