# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Test helpers: the tiny CLIP config and tiny head configurations."""

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
from anomalib_bayes_pfl.model import BayesPFLConfig, ScoringConfig
from anomalib_bayes_pfl.model.config import FlowConfig, PromptConfig

TINY_CLIP = Path(TINY_CLIP_CONFIG)
TINY_IMAGE_SIZE = 64


def tiny_config(**overrides) -> BayesPFLConfig:
    """A small head: B=2 prompts, P=2, Q=2, K=3 steps, R=3 samples at 64 px."""
    prompt = overrides.pop("prompt", PromptConfig(num_prompts=2, context_len=2, state_len=2))
    flow = overrides.pop("flow", FlowConfig(num_flow_steps=3))
    scoring = overrides.pop("scoring", ScoringConfig(num_samples=3, smoothing_sigma=1.0))
    return BayesPFLConfig(
        image_size=TINY_IMAGE_SIZE,
        tap_layers=(1, 2, 3, 4),
        prompt=prompt,
        flow=flow,
        scoring=scoring,
        **overrides,
    )


class SaveHeadPerRank(Callback):
    """Save each process's trained head, to compare the ranks of a distributed run."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.model.head_state_dict(), self.folder / f"rank{trainer.global_rank}.pt")
