# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Test helpers: the tiny CLIP, tiny modules and head configurations, the command line in a fresh process."""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl import BayesPFL, ZeroShotCrossDataset
from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
from anomalib_bayes_pfl.model import BayesPFLConfig, ScoringConfig
from anomalib_bayes_pfl.model.config import FlowConfig, PromptConfig

TINY_CLIP = Path(TINY_CLIP_CONFIG)
TINY_IMAGE_SIZE = 64
# BayesPFL arguments of a small, fast head on the tiny CLIP: B=2, P=2, Q=2, K=2, R=2 at 64 px.
TINY_ARGUMENTS = {
    "clip_model": str(TINY_CLIP),
    "clip_pretrained": None,
    "image_size": TINY_IMAGE_SIZE,
    "num_prompts": 2,
    "prompt_context_len": 2,
    "prompt_state_len": 2,
    "num_flow_steps": 2,
    "num_samples": 2,
    "smoothing_sigma": 1.0,
}
# The same as anomalib CLI options.
TINY_CLI = tuple(f"--model.{name}={'null' if value is None else value}" for name, value in TINY_ARGUMENTS.items())
# A tiny model for fresh-process CLI runs: one epoch per stage.
TINY_MODEL = (
    f"--model.clip_model={TINY_CLIP}",
    "--model.clip_pretrained=null",
    "--model.image_size=64",
    "--model.num_samples=2",
    "--model.stage_one_epochs=1",
    "--model.stage_two_epochs=1",
)
# The script of the environment running the tests, whether or not that environment is activated.
ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def tiny_module(tiny_clip_path: str | Path = TINY_CLIP, **kwargs) -> BayesPFL:
    """``BayesPFL`` with the tiny head on the tiny CLIP; ``kwargs`` replace or add arguments."""
    return BayesPFL(**{**TINY_ARGUMENTS, "clip_model": str(tiny_clip_path), **kwargs})


def anomalib_cli(*args: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """``anomalib <args>`` in a fresh process, as a user runs it (the autoload hook on)."""
    environment = {key: value for key, value in os.environ.items() if key != "ANOMALIB_BAYES_PFL_NO_AUTOLOAD"}
    if pythonpath is not None:
        environment["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [ANOMALIB, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=600, check=False
    )


def cross_data_cli(tree: Path) -> tuple[str, ...]:
    """``cross_dataset(tree)`` as anomalib CLI options."""
    return (
        "--data=ZeroShotCrossDataset",
        f"--data.auxiliary_root={tree}",
        "--data.auxiliary_format=mvtec",
        "--data.auxiliary_categories=[tile_a, tile_b]",
        f"--data.target_root={tree}",
        "--data.target_format=mvtec",
        "--data.target_categories=[tile_c]",
        "--data.train_batch_size=2",
        "--data.num_workers=0",
    )


def sparsification_by_hand(uncertainty: list[float], error: list[float]) -> tuple[float, float]:
    """AUSE and random AUSE step by step: remove one image at a time, most uncertain or largest error first."""
    count = len(error)
    by_uncertainty = [e for _, e in sorted(zip(uncertainty, error, strict=True), reverse=True)]
    by_error = sorted(error, reverse=True)
    model = [sum(by_uncertainty[k:]) / (count - k) for k in range(count)]
    oracle = [sum(by_error[k:]) / (count - k) for k in range(count)]
    mean = sum(error) / count
    return (
        sum(m - o for m, o in zip(model, oracle, strict=True)) / count,
        sum(mean - o for o in oracle) / count,
    )


def cross_dataset(tree: Path, target_categories: Sequence[str] = ("tile_c",)) -> ZeroShotCrossDataset:
    """Train on tile_a and tile_b of a synthetic MVTec AD tree, test on tile_c (or ``target_categories``)."""
    return ZeroShotCrossDataset(
        auxiliary_root=str(tree),
        auxiliary_format="mvtec",
        auxiliary_categories=["tile_a", "tile_b"],
        target_root=str(tree),
        target_format="mvtec",
        target_categories=list(target_categories),
        train_batch_size=2,
        eval_batch_size=3,
        num_workers=0,
    )


def tiny_config(**overrides) -> BayesPFLConfig:
    """A small head: B=2 prompts, P=2, Q=2, K=3 steps, R=3 samples at 64 px."""
    prompt = overrides.pop("prompt", PromptConfig(num_prompts=2, context_len=2, state_len=2))
    flow = overrides.pop("flow", FlowConfig(num_flow_steps=3))
    scoring = overrides.pop("scoring", ScoringConfig(num_samples=3, smoothing_sigma=1.0))
    return BayesPFLConfig(
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
