# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The paper's scale through the command line, once: ViT-L-14-336 (random weights), 518 px, R = 10.

Every other test runs the tiny CLIP at 64 px; this one runs the shapes users run (a 37 x 37 patch grid from a
position embedding made for 24 x 24, four taps of width 1024, 3 x 10 text samples per image), in ``test`` and in
``predict``, with the defaults of every option but the weights: two images in ``test`` (image metrics need a normal
and an anomalous one), one loose file in ``predict`` (each image costs about 15 s of a core).
"""

from pathlib import Path

import pandas as pd
import pytest
import torch

from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.model import BayesPFLConfig, BayesPFLModel, load_clip

from ..helpers import anomalib_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def paper_head(tmp_path_factory) -> Path:
    """A randomly initialised head of the paper's configuration, as a bare head state dict (``prompt_weights``)."""
    torch.manual_seed(0)
    model = BayesPFLModel(BayesPFLConfig(), load_clip("ViT-L-14-336", pretrained=None))
    path = tmp_path_factory.mktemp("weights") / "paper_head.pt"
    torch.save(model.head_state_dict(), path)
    return path


def test_paper_scale_tests_and_predicts_through_the_command_line(tmp_path, paper_head):
    tree = write_tree(tmp_path / "MVTecAD", ["part"], num_test_good=1, num_test_defect=1, seed=3)
    data = ("--data=MVTecAD", f"--data.root={tree}", "--data.category=part", "--data.eval_batch_size=1")
    (tmp_path / "test").mkdir()
    tested = anomalib_cli(
        "test", "--model=BayesPFL", "--model.clip_pretrained=null", f"--model.prompt_weights={paper_head}", *data,
        "--data.num_workers=0", "--trainer.accelerator=cpu", cwd=tmp_path / "test",
    )  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-3000:]
    table = pd.read_csv(next((tmp_path / "test").rglob("per_category_metrics.csv")), index_col="category")
    assert table.loc["part", "images"] == 2
    assert table.loc["part", ["image_AUROC", "pixel_AUROC", "pixel_AUPRO"]].between(0, 1).all()
    assert not list((tmp_path / "test").rglob("model.ckpt"))  # a test writes no checkpoint: anomalib validates none

    (tmp_path / "predict").mkdir()
    [defect] = [path for path in (tree / "part" / "test").rglob("*.png") if path.parent.name != "good"]
    predicted = anomalib_cli(
        "predict", "--model=BayesPFL", "--model.clip_pretrained=null", f"--model.prompt_weights={paper_head}",
        "--data", str(defect), "--trainer.accelerator=cpu", cwd=tmp_path / "predict",
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    predictions = pd.read_csv(next((tmp_path / "predict").rglob("predictions.csv")))
    assert list(map(Path, predictions["image_path"])) == [defect]
    assert predictions["pred_score"].between(0, 1).all()
    assert predictions["uncertainty"].gt(0).all()
