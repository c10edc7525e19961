# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Score every test image exactly once when several processes share the test set.

``DistributedSampler`` (no shuffling, no dropping) pads the test set by repeating its first indices, so that every
process gets ``ceil(n / world)`` samples; the repeated images would be counted twice in every metric.
"""

import dataclasses

import torch
from anomalib.data import Batch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DistributedSampler


def unpadded_share(trainer: Trainer) -> int | None:
    """How many of this process's test samples are real, when a distributed sampler pads the test set; else None.

    Process ``r`` takes indices ``r, r + world, ...``, so its real ones come first.
    """
    loaders = trainer.test_dataloaders
    sampler = getattr(loaders[0] if isinstance(loaders, list) else loaders, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last or sampler.shuffle:
        return None
    return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))


def keep_first_items(batch: Batch, count: int) -> None:
    """Cut every per-item field of ``batch`` to its first ``count`` items, in place."""
    length = len(batch)
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor | list) and len(value) == length:
            setattr(batch, field.name, value[:count])


class DropSamplerPadding(Callback):
    """Cut the padded duplicates from the end of this process's test batches, before they are scored."""

    def __init__(self) -> None:
        self.remaining: int | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count this process's real test samples."""
        del pl_module
        self.remaining = unpadded_share(trainer)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Keep the batch's real samples (in place: the model and every callback read this very batch)."""
        del trainer, pl_module, batch_idx, dataloader_idx
        if self.remaining is not None:
            keep = min(len(batch), self.remaining)
            self.remaining -= keep
            keep_first_items(batch, keep)
