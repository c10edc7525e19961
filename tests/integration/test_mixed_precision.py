# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``--trainer.precision bf16-mixed`` on a CPU: train, test and predict run, write float32 values close to float32's.

Under Lightning's mixed precision the frozen CLIP towers compute in bfloat16 and the head in float32
(``model/precision.py``), as ``--model.clip_precision bf16`` does. ``16-mixed`` on a CPU, which Lightning would turn
into ``bf16-mixed`` behind the user's back, and ``bf16-true`` or ``64-true``, which would cast the head, are refused
with the fix.

Tolerances, from the same tiny setting (R = 2, one epoch per stage, 3 normal and 3 anomalous test images) trained under
``bf16-mixed`` with seeds 0 to 11 and tested in both precisions: image scores differed by at most 0.011, anomaly-map
pixels by 0.0021, pixel AUROC / AUPRO / AP by 0.0034 (bfloat16 keeps 8 bits of each tower activation, 0.4 %; the
head's logit scale of about 14 amplifies them). The tests allow about three times that. Image metrics rank only 3 x 3
pairs, and neighbouring scores of this barely trained model lie as little as 0.0001 apart, so one pair may swap: image
AUROC may move by 1/9.
"""

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.data.utils import read_image

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.model import BayesPFLLoss, BayesPFLModel
from anomalib_bayes_pfl.model.training import training_loss
from anomalib_bayes_pfl.reporting import CSV_NAME

from ..helpers import TINY_MODEL, anomalib_cli, cross_data_cli, tiny_config

BF16 = "--trainer.precision=bf16-mixed"
COMMON = ("--model=BayesPFL", "--trainer.accelerator=cpu", "--default_root_dir=results")
SCORE_TOLERANCE = 0.03
MAP_TOLERANCE = 0.006
PIXEL_METRIC_TOLERANCE = 0.01
ONE_SWAPPED_PAIR = 1 / 9 + 1e-6
PIXEL_METRICS = ["pixel_AUROC", "pixel_AUPRO", "pixel_AUPR"]


def _table(root: Path) -> pd.DataFrame:
    return pd.read_csv(next(root.rglob(CSV_NAME)), index_col="category")


def _last_lines(stderr: str) -> str:
    """The last lines the user sees, as one line (rich wraps long messages)."""
    return " ".join(" ".join(stderr.strip().splitlines()[-6:]).split())


@pytest.fixture(scope="module")
def bf16_training(tmp_path_factory, mvtec_tree) -> tuple[Path, str]:
    """``anomalib train`` under ``bf16-mixed``: its results folder and its log."""
    cwd = tmp_path_factory.mktemp("bf16_train")
    result = anomalib_cli(
        "train", *COMMON, *TINY_MODEL, "--seed_everything=7", *cross_data_cli(mvtec_tree), BF16, cwd=cwd
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "results", result.stderr


def test_the_head_computes_in_float32_under_any_autocast(tiny_clip):
    """Under the trainer's autocast, the scores are those of ``clip_precision bf16``: only CLIP ran in bfloat16."""
    torch.manual_seed(0)
    model = BayesPFLModel(tiny_config(), tiny_clip).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.score(images, ["tile", "wood"], uncertainty="std")
    plain = model.score(images, ["tile", "wood"], uncertainty="std")
    model.config = dataclasses.replace(model.config, clip_precision="bf16")
    towers_only = model.score(images, ["tile", "wood"], uncertainty="std")
    for name, value in mixed._asdict().items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, getattr(towers_only, name), rtol=0, atol=0, msg=name)
    assert not torch.equal(mixed.pred_score, plain.pred_score)  # the towers did run in bfloat16
    assert (mixed.pred_score != mixed.pred_score.bfloat16().float()).any()  # not bfloat16 values


def test_training_under_autocast_gives_float32_losses_and_gradients(tiny_clip):
    torch.manual_seed(0)
    model = BayesPFLModel(tiny_config(), tiny_clip).train()
    masks = torch.zeros(2, 64, 64)
    masks[1, 20:40, 20:40] = 1
    batch = ImageBatch(image=torch.randn(2, 3, 64, 64), gt_label=torch.tensor([0, 1]), gt_mask=masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, terms = training_loss(model, BayesPFLLoss(), batch, ["tile", "tile"], stage=1, prompt_index=0)
    assert all(value.dtype == torch.float32 for value in terms), terms
    assert output.image_logits.dtype == torch.float32
    assert all(logits.dtype == torch.float32 for logits in output.pixel_logits)
    terms.total.backward()
    gradients = [parameter.grad for parameter in model.prompts.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)  # through the text tower, which ran in bfloat16


@pytest.mark.slow
def test_bf16_mixed_training_writes_a_float32_head_and_a_finite_table(bf16_training):
    results, log = bf16_training
    assert "Using bfloat16 Automatic Mixed Precision" in log
    table = _table(results)
    assert {"tile_c", "mean"} <= set(table.index)
    assert table.select_dtypes("number").map(math.isfinite).all().all()
    checkpoint = torch.load(next(results.rglob("model.ckpt")), map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    assert state
    assert not any(key.startswith("model.clip.") for key in state)
    assert {value.dtype for value in state.values() if isinstance(value, torch.Tensor)} == {torch.float32}


@pytest.mark.slow
def test_bf16_mixed_test_of_a_checkpoint_matches_its_run_and_is_close_to_float32(tmp_path, mvtec_tree, bf16_training):
    results, _ = bf16_training
    checkpoint = next(results.rglob("model.ckpt"))
    tables = {}
    for name, precision in (("bf16", (BF16,)), ("fp32", ())):
        cwd = tmp_path / name
        cwd.mkdir()
        result = anomalib_cli(
            "test", *COMMON, f"--ckpt_path={checkpoint}", *cross_data_cli(mvtec_tree), *precision, cwd=cwd
        )
        assert result.returncode == 0, result.stderr[-3000:]
        tables[name] = _table(cwd / "results")
    bf16, fp32 = tables["bf16"], tables["fp32"]
    # The same checkpoint in the same precision: the training run's own table.
    pd.testing.assert_frame_equal(bf16, _table(results), check_exact=False, rtol=0, atol=1e-6)
    assert bf16.select_dtypes("number").map(math.isfinite).all().all()
    difference = (bf16[PIXEL_METRICS] - fp32[PIXEL_METRICS]).abs()
    assert (difference <= PIXEL_METRIC_TOLERANCE).all().all(), difference
    assert abs(bf16.at["mean", "image_AUROC"] - fp32.at["mean", "image_AUROC"]) <= ONE_SWAPPED_PAIR


@pytest.mark.slow
def test_bf16_mixed_predict_writes_float32_scores_close_to_float32(tmp_path, mvtec_tree, bf16_training):
    results, _ = bf16_training
    checkpoint = next(results.rglob("model.ckpt"))
    images = mvtec_tree / "tile_c" / "test" / "defect"
    result = anomalib_cli("predict", "--model=BayesPFL", f"--ckpt_path={checkpoint}", "--data", str(images), BF16,
                          cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = pd.read_csv(next(tmp_path.rglob("predictions.csv"))).sort_values("image_path")
    written = torch.tensor(predicted.pred_score.to_numpy(), dtype=torch.float32)
    module = BayesPFL.load_from_checkpoint(checkpoint).eval()
    raw = torch.stack([read_image(path, as_tensor=True) for path in sorted(images.glob("*.png"))])
    inputs = module.pre_processor.transform(raw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.model.score(inputs, ["tile_c"] * len(raw))
    fp32 = module.model.score(inputs, ["tile_c"] * len(raw))
    torch.testing.assert_close(written, mixed.pred_score, rtol=0, atol=1e-6)  # what the model computed, unrounded
    assert (written != written.bfloat16().float()).any()  # float32 values, not bfloat16 ones
    assert predicted.uncertainty.map(math.isfinite).all()
    torch.testing.assert_close(written, fp32.pred_score, rtol=0, atol=SCORE_TOLERANCE)
    torch.testing.assert_close(mixed.anomaly_map, fp32.anomaly_map, rtol=0, atol=MAP_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "reason"),
    [
        ("16-mixed", "--trainer.precision 16-mixed: float16 mixed precision needs a GPU"),
        ("bf16-true", "--trainer.precision bf16-true casts the weights: BayesPFL keeps its head in float32"),
        ("64-true", "--trainer.precision 64-true casts the weights: BayesPFL keeps its head in float32"),
    ],
    ids=["16-mixed", "bf16-true", "64-true"],
)
def test_a_precision_the_run_would_not_get_is_refused_with_the_fix_before_any_image_is_read(
    tmp_path, mvtec_tree, precision, reason
):
    """``16-mixed`` would become ``bf16-mixed`` on a CPU; ``bf16-true`` and ``64-true`` would cast the head (a dtype
    error)."""
    result = anomalib_cli(
        "train", *COMMON, *TINY_MODEL, *cross_data_cli(mvtec_tree), f"--trainer.precision={precision}", cwd=tmp_path
    )
    assert result.returncode != 0
    last_lines = _last_lines(result.stderr)
    assert reason in last_lines
    assert "--trainer.precision bf16-mixed" in last_lines
    written = {path.name for path in (tmp_path / "results").rglob("*") if path.is_file()}
    assert written <= {"config.yaml"}  # the command line's config only: no checkpoint, image or table
