# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Mixed precision: the same images scored by the same checkpoint in float32 and in ``bf16-mixed``, compared.

Writes the demo's synthetic trees (``anomalib_bayes_pfl.data.synthetic``), trains a head on the auxiliary categories
in float32 (or takes ``--ckpt_path``), then tests the checkpoint twice through anomalib's Engine, as ``anomalib test
--ckpt_path`` does: with ``precision="32-true"`` and with ``precision`` (``bf16-mixed``; ``16-mixed`` on a GPU).
Prints JSON lines: the dtypes of what each run's steps return; each run's scoring time per image (one pass, the test
steps only; speed itself is ``bench_speed.py``'s); the largest and mean absolute difference of the image scores, the
anomaly maps and the image uncertainties, image by image; and every metric of the per-category table side by side,
with its difference (reduced minus float32).

    python benchmarks/bench_precision.py --threads 2      # the tiny CLIP, offline
    python benchmarks/bench_precision.py --clip_model ViT-L-14-336 --image_size 518 --epochs 1 --train_batches 1
        --num_test 3 --target_categories '[slate]' --threads 2   # (one line) the real architecture, random weights
"""

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib.engine import Engine
from jsonargparse import CLI
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_bayes_pfl import BayesPFL, ZeroShotCrossDataset
from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.demo import AUXILIARY_CATEGORIES, TARGET_CATEGORIES
from anomalib_bayes_pfl.reporting import CSV_NAME

REFERENCE = "32-true"
OUTPUTS = ("pred_score", "anomaly_map", "uncertainty")


class ScoreCapture(Callback):
    """Keep each test image's outputs on the CPU, by path, and time the test steps."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, torch.Tensor]] = {}
        self.dtypes: dict[str, str] = {}
        self.seconds = 0.0
        self._started = 0.0

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, *_: Any) -> None:
        """Start the step's clock."""
        del trainer, pl_module
        self._started = time.perf_counter()

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *_: Any) -> None:
        """Stop the clock; keep the batch's scores, maps and uncertainties, and their dtypes."""
        del trainer, pl_module
        self.seconds += time.perf_counter() - self._started
        for name in OUTPUTS:
            self.dtypes[name] = str(getattr(outputs, name).dtype)
        for index, path in enumerate(outputs.image_path):
            self.outputs[path] = {name: getattr(outputs, name)[index].detach().cpu() for name in OUTPUTS}


def _datamodule(datasets: Path, target_categories: Sequence[str]) -> ZeroShotCrossDataset:
    return ZeroShotCrossDataset(
        auxiliary_root=str(datasets / "auxiliary"),
        auxiliary_format="mvtec",
        target_root=str(datasets / "target"),
        target_format="mvtec",
        target_categories=list(target_categories),
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )


def _train(root: Path, datamodule: ZeroShotCrossDataset, epochs: int, train_batches: int | None, **model: Any) -> Path:
    """A float32 head, trained as the demo trains it (its learning rates); the checkpoint's path."""
    module = BayesPFL(
        stage_one_epochs=max(1, epochs - 1),
        stage_two_epochs=1 if epochs > 1 else 0,
        prompt_learning_rate=2e-2,
        flow_learning_rate=2e-2,
        learning_rate=2e-3,
        visualizer=False,
        **model,
    )
    engine = Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False,
                    limit_train_batches=train_batches)  # fmt: skip
    engine.fit(module, datamodule=datamodule)
    return next(root.rglob("model.ckpt"))


def _test(root: Path, checkpoint: Path, datamodule: ZeroShotCrossDataset, precision: str, accelerator: str) -> tuple:
    """``anomalib test --ckpt_path checkpoint --trainer.precision precision``: the captured outputs and the table."""
    capture = ScoreCapture()
    engine = Engine(default_root_dir=root, accelerator=accelerator, devices=1, logger=False, precision=precision,
                    callbacks=[capture])  # fmt: skip
    engine.test(BayesPFL(visualizer=False), datamodule=datamodule, ckpt_path=str(checkpoint))
    return capture, pd.read_csv(next(root.rglob(CSV_NAME)), index_col="category")


def main(
    clip_model: str = TINY_CLIP_CONFIG,
    image_size: int = 64,
    num_samples: int | None = None,
    precision: str = "bf16-mixed",
    accelerator: str = "cpu",
    target_categories: list[str] = list(TARGET_CATEGORIES),  # noqa: B006 - jsonargparse shows it in --help
    num_test: int = 12,
    epochs: int = 4,
    train_batches: int | None = None,
    ckpt_path: str | None = None,
    output: str | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> None:
    """Measure and print the figures as JSON lines.

    Args:
        clip_model: open_clip model name or config JSON; ``ViT-L-14-336`` is built with random weights.
        image_size: Model input size.
        num_samples: R, Monte-Carlo rounds per image; ``None``: the paper's 10.
        precision: The reduced precision compared with ``32-true``.
        accelerator: Lightning accelerator of the two test runs (training runs on the CPU).
        target_categories: Unseen categories scored (the demo's four).
        num_test: Normal and anomalous test images per target category, each.
        epochs: Training epochs of the head (the last one trains the image classifier alone).
        train_batches: Training batches per epoch; ``None``: all.
        ckpt_path: A trained checkpoint to compare with instead (its own CLIP and options); skips training.
        output: Folder for the data and the runs; ``None``: a temporary one, removed at the end.
        seed: Seed of the data and of the head.
        threads: Torch threads (``None``: torch's default).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    logging.getLogger("anomalib").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(output or temporary)
        datasets = root / "datasets"
        size = {"image_size": 64, "num_test_good": num_test, "num_test_defect": num_test}
        write_tree(datasets / "auxiliary", AUXILIARY_CATEGORIES, seed=seed, num_train=2, **size)
        write_tree(datasets / "target", target_categories, seed=seed + 1, num_train=2, **size)
        datamodule = _datamodule(datasets, target_categories)
        if ckpt_path is None:
            seed_everything(seed)
            model = {"clip_model": clip_model, "clip_pretrained": None, "image_size": image_size}
            checkpoint = _train(root / "train", datamodule, epochs, train_batches, num_samples=num_samples, **model)
        else:
            checkpoint = Path(ckpt_path)
        runs = {name: _test(root / name, checkpoint, datamodule, name, accelerator) for name in (REFERENCE, precision)}
        setup = {"clip_model": Path(clip_model).stem, "image_size": image_size, "precision": precision}
        setup |= {"accelerator": accelerator, "threads": torch.get_num_threads(), "checkpoint": str(checkpoint)}
        print(json.dumps({"figure": "setup", **setup}), flush=True)
        _print_figures(runs, precision)


def _print_figures(runs: dict[str, tuple[ScoreCapture, pd.DataFrame]], precision: str) -> None:
    """Dtypes and times per run, then the differences of the outputs and of the tables."""
    (reference, reference_table), (reduced, reduced_table) = runs[REFERENCE], runs[precision]
    for name, (capture, _) in runs.items():
        line = {"figure": f"scoring_{name}", "value": round(capture.seconds / len(capture.outputs) * 1000, 1)}
        print(json.dumps({**line, "unit": "ms/image", "images": len(capture.outputs), "dtypes": capture.dtypes}))
    paths = sorted(reference.outputs)
    if sorted(reduced.outputs) != paths:
        msg = "the two runs scored different images."
        raise RuntimeError(msg)
    for name in OUTPUTS:
        difference = torch.stack([(reduced.outputs[p][name] - reference.outputs[p][name]).abs() for p in paths])
        line = {"figure": f"{name}_difference", "max": float(difference.max()), "mean": float(difference.mean())}
        print(json.dumps({**line, "values": difference.numel()}), flush=True)
    for category in reference_table.index:
        for metric in reference_table.select_dtypes("number").columns:
            value, other = float(reference_table.at[category, metric]), float(reduced_table.at[category, metric])
            line = {"figure": "table", "category": category, "metric": metric, REFERENCE: value, precision: other}
            print(json.dumps({**line, "difference": other - value}))


if __name__ == "__main__":
    CLI(main)
