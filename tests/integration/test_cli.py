# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib train --model BayesPFL`` in a fresh process, exactly as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..helpers import TINY_CLIP

pytestmark = pytest.mark.slow

# The script of the environment running the tests, whether or not that environment is activated.
ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def anomalib_cli(*args: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "ANOMALIB_BAYES_PFL_NO_AUTOLOAD"}
    if pythonpath is not None:
        environment["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [ANOMALIB, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=600, check=False
    )


TINY_MODEL = (
    f"--model.clip_model={TINY_CLIP}",
    "--model.clip_pretrained=null",
    "--model.image_size=64",
    "--model.num_samples=2",
    "--model.stage_one_epochs=1",
    "--model.stage_two_epochs=1",
)


def test_help_lists_the_model_arguments(tmp_path):
    result = anomalib_cli("train", "--model.help", "BayesPFL", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for argument in ("--model.clip_pretrained", "--model.prompt_weights", "--model.num_flow_steps"):
        assert argument in result.stdout


def test_out_of_range_values_are_refused_by_the_parser_with_their_name(tmp_path):
    """A short parser error (exit 2) naming the option and its range, not a traceback from inside the model."""
    result = anomalib_cli(
        "train", "--model", "BayesPFL", *TINY_MODEL, "--model.image_threshold=1.5", "--model.synthetic_anomalies=2",
        "--data", "MVTecAD", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    last_lines = "\n".join(result.stderr.splitlines()[-12:])
    assert 'Parser key "image_threshold"' in last_lines
    assert "does not conform to restriction v>0 and v<1" in last_lines
    assert "Traceback" not in result.stderr
    for option, message in (
        ("review_fraction=1", "v>=0 and v<1"),
        ("uncertainty=entropy", "'mutual_information', 'std'"),
    ):
        result = anomalib_cli("test", "--model", "BayesPFL", *TINY_MODEL, f"--model.{option}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        last_lines = "\n".join(result.stderr.splitlines()[-12:])
        assert f'Parser key "{option.split("=")[0]}"' in last_lines, last_lines
        assert message in last_lines, last_lines


@pytest.mark.parametrize(
    ("model", "data"),
    [("BayesPFL", "ZeroShotCrossDataset"), ("anomalib_bayes_pfl.BayesPFL", "anomalib_bayes_pfl.ZeroShotCrossDataset")],
)
def test_train_prints_metrics_and_writes_images(tmp_path, mvtec_tree, model, data):
    result = anomalib_cli(
        "train",
        "--model",
        model,
        *TINY_MODEL,
        "--data",
        data,
        f"--data.auxiliary_root={mvtec_tree}",
        "--data.auxiliary_format=mvtec",
        "--data.auxiliary_categories=[tile_a, tile_b]",
        f"--data.target_root={mvtec_tree}",
        "--data.target_format=mvtec",
        "--data.target_categories=[tile_c]",
        "--data.train_batch_size=2",
        "--data.eval_batch_size=3",
        "--data.num_workers=0",
        "--trainer.accelerator=cpu",
        "--default_root_dir=results",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in (
        "image_AUROC",
        "image_AUPR",
        "image_F1Max",
        "pixel_AUROC",
        "pixel_AUPRO",
        "category_mean_image_AUROC",
    ):
        assert metric in result.stdout
    assert "Per-category test metrics" in result.stdout
    run = tmp_path / "results" / "BayesPFL" / mvtec_tree.name / "tile_c" / "latest"
    images = list((run / "images").rglob("*.png"))
    assert len([image for image in images if not image.stem.endswith("_uncertainty")]) == 6
    assert len(images) == 12  # each with its uncertainty image beside it
    assert (run / "per_category_metrics.csv").is_file()
    state = torch.load(run / "weights" / "lightning" / "model.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    assert not any(key.startswith("model.clip.") for key in state)
