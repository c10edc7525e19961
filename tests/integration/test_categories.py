# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""One rule names an image's category: a loose file scores as the same image given through a datamodule."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from anomalib.data import MVTecAD, PredictDataset
from anomalib.engine import Engine

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.reporting import PREDICTIONS_CSV

from ..helpers import tiny_module

pytestmark = pytest.mark.slow


def _module(tiny_clip_path: str, **options) -> BayesPFL:
    """The same untrained head every time."""
    torch.manual_seed(0)
    return tiny_module(tiny_clip_path, **options)


def _predict(root: Path, module: BayesPFL, **data) -> pd.DataFrame:
    Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False).predict(module, **data)
    return pd.read_csv(next(root.rglob(PREDICTIONS_CSV)), index_col="image_path")


def test_loose_files_prompts_and_table_name_the_same_category(tiny_clip_path, tmp_path):
    tree = write_tree(tmp_path / "data", ["grain_plank"], num_train=2)
    defects = tree / "grain_plank" / "test" / "defect"
    datamodule = MVTecAD(root=tree, category="grain_plank", eval_batch_size=4, num_workers=0)
    through_datamodule = _predict(tmp_path / "datamodule", _module(tiny_clip_path), datamodule=datamodule)
    loose = _predict(tmp_path / "loose", _module(tiny_clip_path), dataset=PredictDataset(defects))
    assert set(loose.category) == set(loose.class_name) == {"grain_plank"}  # from the MVTec AD layout of the path
    pd.testing.assert_series_equal(loose.pred_score, through_datamodule.loc[loose.index, "pred_score"])
    named = _predict(
        tmp_path / "named", _module(tiny_clip_path, class_name="grain_plank"), dataset=PredictDataset(defects)
    )
    pd.testing.assert_series_equal(named.pred_score, loose.pred_score)
    other = _predict(tmp_path / "other", _module(tiny_clip_path, class_name="object"), dataset=PredictDataset(defects))
    assert set(other.category) == {"grain_plank"}  # the data's category, prompted as the class name given
    assert set(other.class_name) == {"object"}
    assert (other.pred_score != loose.pred_score).all()
    flat = tmp_path / "flat"
    shutil.copytree(defects, flat)
    unnamed = _predict(tmp_path / "flat_run", _module(tiny_clip_path), dataset=PredictDataset(flat))
    assert set(unnamed.category) == set(unnamed.class_name) == {"object"}  # nothing names it: the table says so
    assert unnamed.pred_score.tolist() == other.pred_score.tolist()
