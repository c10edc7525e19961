# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Training: one step's loss, and the two stages' epochs and optimisers (authors: train.py).

Stage 1 trains every head parameter with Adam over four learning-rate groups and a warm-up cosine schedule; stage 2
trains the image classifier alone at a constant rate. Like the authors' schedule, warm-up and cosine span every
epoch, so the rate is still above zero when stage 2 takes over (authors: train.py L183-187). A ``LambdaLR`` holds
the schedule: torch's ``LinearLR`` cannot start from a rate of 0 as the authors' warm-up does, and its chained
cosine drifts from the closed form by rounding.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
from anomalib.data import Batch
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR

from anomalib_bayes_pfl.data.synthetic_anomalies import known_masks

from .loss import BayesPFLLoss, LossTerms
from .precision import head_precision
from .torch_model import BayesPFLModel, BayesPFLTrainOutput, TrainingNoise

ADAM_BETAS = (0.5, 0.999)


def training_loss(
    model: BayesPFLModel,
    loss: BayesPFLLoss,
    batch: Batch,
    class_names: list[str],
    stage: int,
    *,
    noise: TrainingNoise | None = None,
    prompt_index: int | None = None,
) -> tuple[BayesPFLTrainOutput, LossTerms]:
    """The forward pass and loss terms of a batch at ``stage``, with one prompt set of the bank for it.

    Args:
        model: The torch model, in training mode.
        loss: The loss.
        batch: Pre-processed images with labels and masks.
        class_names: One class name per image.
        stage: 1 or 2.
        noise: The step's draws (from the global generator when ``None``).
        prompt_index: The prompt set the losses use (drawn from the global generator when ``None``).
    """
    output = model(batch.image, class_names, noise)
    if prompt_index is None:
        prompt_index = int(torch.randint(model.config.prompt.num_prompts, (1,)))
    with head_precision(batch.image.device):  # float32 losses under the trainer's mixed precision too
        terms = loss(
            output.image_logits,
            output.pixel_logits,
            output.text_embeddings,
            output.kl,
            batch.gt_label,
            batch.gt_mask.float() if batch.gt_mask is not None else None,
            prompt_index=prompt_index,
            stage=stage,
            has_mask=known_masks(batch),
        )
    return output, terms


def stage_optimizers(
    model: BayesPFLModel, learning_rates: dict[str, float], warmup_ratio: float, total_steps: int
) -> tuple[list[Adam], list[dict[str, Any]]]:
    """Stage 1: Adam over the learning-rate groups with a warm-up cosine schedule per step; stage 2: the classifier.

    Args:
        model: The torch model.
        learning_rates: By group: ``prompts``, ``temperatures``, ``flows``, ``other`` (also stage 2's rate).
        warmup_ratio: Share of all steps with a linear warm-up from 0.
        total_steps: Optimiser steps of the whole training, both stages.
    """
    groups = model.parameter_groups()
    stage_one = Adam(
        [{"params": groups[name], "lr": lr} for name, lr in learning_rates.items() if groups[name]],
        betas=ADAM_BETAS,
    )
    stage_two = Adam(groups["classifier"], lr=learning_rates["other"], betas=ADAM_BETAS)
    total_steps = max(1, total_steps)
    warmup_steps = int(warmup_ratio * total_steps)

    def warmup_cosine(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return [stage_one, stage_two], [{"scheduler": LambdaLR(stage_one, warmup_cosine), "interval": "step"}]


@dataclass(frozen=True)
class TrainingStages:
    """The two stages of training: their epochs, the learning rates by group and the warm-up share.

    Args:
        stage_one_epochs: Epochs of stage 1 (all losses, all head parameters).
        stage_two_epochs: Epochs of stage 2 (classification loss, image classifier only); 0 skips stage 2.
        learning_rates: By group, as :func:`stage_optimizers` takes them.
        warmup_ratio: Share of all steps with a linear warm-up from 0.
    """

    stage_one_epochs: int
    stage_two_epochs: int
    learning_rates: dict[str, float]
    warmup_ratio: float

    def __post_init__(self) -> None:
        if self.stage_one_epochs < 0 or self.stage_two_epochs < 0 or self.epochs == 0:
            msg = (
                f"stage_one_epochs={self.stage_one_epochs}, stage_two_epochs={self.stage_two_epochs}: both >= 0, one "
                f"positive."
            )
            raise ValueError(msg)

    @property
    def epochs(self) -> int:
        """Epochs of the whole training."""
        return self.stage_one_epochs + self.stage_two_epochs

    def stage(self, epoch: int) -> int:
        """The stage of ``epoch`` (0-based): 1, then 2."""
        return 1 if epoch < self.stage_one_epochs else 2

    def optimizers(self, model: BayesPFLModel, total_steps: int) -> tuple[list[Adam], list[dict[str, Any]]]:
        """Both stages' optimisers and stage 1's schedule over ``total_steps`` (:func:`stage_optimizers`)."""
        return stage_optimizers(model, self.learning_rates, self.warmup_ratio, total_steps)
