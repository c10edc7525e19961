# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib train --model BayesPFL`` in a fresh process, exactly as a user runs it."""

import pytest
import torch

from ..helpers import TINY_MODEL, anomalib_cli

pytestmark = pytest.mark.slow


def test_help_lists_the_model_arguments(tmp_path):
    result = anomalib_cli("train", "--model.help", "BayesPFL", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for argument in ("--model.clip_pretrained", "--model.prompt_weights", "--model.num_flow_steps"):
        assert argument in result.stdout


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
    checkpoint = f"results/BayesPFL/{mvtec_tree.name}/tile_c/v0/weights/lightning/model.ckpt"
    assert f"Checkpoint written to {checkpoint}: test it with anomalib test --model BayesPFL --ckpt_path" in " ".join(
        result.stdout.split()
    )
    images = list((run / "images").rglob("*.png"))
    assert len([image for image in images if not image.stem.endswith("_uncertainty")]) == 6
    assert len(images) == 12  # each with its uncertainty image beside it
    assert (run / "per_category_metrics.csv").is_file()
    state = torch.load(run / "weights" / "lightning" / "model.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    assert not any(key.startswith("model.clip.") for key in state)
