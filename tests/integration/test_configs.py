# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The shipped configs run as they are, with only their paths (and sizes, for speed) overridden."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from anomalib.engine import Engine

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import write_tree

from ..helpers import TINY_ARGUMENTS, TINY_CLIP
from ..unit.test_lightning_model import tiny_module
from .test_cli import TINY_MODEL, anomalib_cli

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).parents[2] / "configs"
TINY_DATA = ("--data.train_batch_size=4", "--data.eval_batch_size=4", "--data.num_workers=0")


@pytest.fixture(scope="module")
def visa_and_mvtec(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return write_tree(root / "visa", ["candle", "pcb1"], layout="visa"), write_tree(
        root / "MVTecAD", ["bottle", "metal_nut"], layout="mvtec", seed=1
    )


@pytest.mark.parametrize(
    ("config", "auxiliary", "target"), [("bayes_pfl_visa_to_mvtec.yaml", 0, 1), ("bayes_pfl_mvtec_to_visa.yaml", 1, 0)]
)
def test_paper_protocol_configs_run(tmp_path, visa_and_mvtec, config, auxiliary, target):
    result = anomalib_cli(
        "train",
        "--config",
        str(CONFIGS / config),
        *TINY_MODEL,
        "--model.tap_layers=null",  # the config's (6, 12, 18, 24) need 24 blocks; the tiny CLIP has 4
        f"--data.auxiliary_root={visa_and_mvtec[auxiliary]}",
        f"--data.target_root={visa_and_mvtec[target]}",
        *TINY_DATA,
        "--trainer.accelerator=cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(next((tmp_path / "results").rglob("per_category_metrics.csv")), index_col="category")
    target_categories = ["bottle", "metal_nut"] if target == 1 else ["candle", "pcb1"]
    assert list(table.index) == [*target_categories, "mean"]
    assert table.loc["mean"].notna().all()


def test_benchmark_compares_bayes_pfl_with_padim(tmp_path, visa_and_mvtec):
    visa, mvtec = visa_and_mvtec
    torch.manual_seed(0)
    module = tiny_module(str(TINY_CLIP), stage_one_epochs=1, stage_two_epochs=1)
    data = ZeroShotCrossDataset(auxiliary_root=str(visa), target_root=str(mvtec), num_workers=0, train_batch_size=4)
    Engine(default_root_dir=tmp_path / "train", accelerator="cpu", devices=1, logger=False).train(
        module, datamodule=data
    )
    checkpoint = next((tmp_path / "train").rglob("model.ckpt"))

    config = yaml.safe_load((CONFIGS / "benchmark_zero_shot_mvtec.yaml").read_text())
    config["accelerator"] = ["cpu"]
    bayes_pfl = config["benchmark"]["model"]["grid"][0]
    assert bayes_pfl["class_path"] == "BayesPFL"
    bayes_pfl["init_args"] = {**TINY_ARGUMENTS, "prompt_weights": str(checkpoint)}
    padim = {"class_path": "Padim", "init_args": {"backbone": "resnet18", "pre_trained": False}}
    config["benchmark"]["model"]["grid"] = [bayes_pfl, padim]
    config["benchmark"]["data"]["init_args"].update(root=str(mvtec), num_workers=0, train_batch_size=4)
    config["benchmark"]["data"]["init_args"]["category"]["grid"] = ["bottle", "metal_nut"]
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config))

    result = subprocess.run(
        [sys.executable, "-m", "anomalib_bayes_pfl.benchmark", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = pd.read_csv(next((tmp_path / "runs").rglob("results.csv")))
    assert len(results) == 4, results  # failed jobs leave no row: anomalib's exit code does not tell
    rows = results.set_index(["model.class_path", "data.init_args.category"])
    assert sorted(rows.index) == [
        ("BayesPFL", "bottle"),
        ("BayesPFL", "metal_nut"),
        ("Padim", "bottle"),
        ("Padim", "metal_nut"),
    ]
    assert rows["image_AUROC"].between(0, 1).all()
    assert rows.loc["BayesPFL", "category_mean_image_AUROC"].between(0, 1).all()
