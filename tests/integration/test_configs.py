# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The shipped configs parse as the CLI parses them, and run as they are with only paths and sizes overridden."""

from pathlib import Path

import pandas as pd
import pytest
import yaml
from anomalib.data import AnomalibDataModule
from jsonargparse import ArgumentParser

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.augmentation import AuthorsAugmentations
from anomalib_bayes_pfl.data.synthetic import write_tree

from ..helpers import TINY_MODEL, anomalib_cli

CONFIGS = Path(__file__).parents[2] / "configs"
TINY_DATA = ("--data.train_batch_size=4", "--data.eval_batch_size=4", "--data.num_workers=0")


@pytest.fixture(scope="module")
def visa_and_mvtec(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return write_tree(root / "visa", ["candle", "pcb1"], layout="visa"), write_tree(
        root / "MVTecAD", ["bottle", "metal_nut"], layout="mvtec", seed=1
    )


@pytest.mark.parametrize(
    ("config", "mosaic_probability"), [("bayes_pfl_visa_to_mvtec.yaml", 0.0), ("bayes_pfl_mvtec_to_visa.yaml", 0.4)]
)
def test_paper_protocol_configs_train_with_the_authors_augmentations(config, mosaic_probability):
    """The mosaic is the authors' only with MVTec AD as the auxiliary set (their datasets.py:286)."""
    parser = ArgumentParser()
    parser.add_argument("--data", type=AnomalibDataModule)  # as anomalib's CLI: any datamodule, by class_path
    section = yaml.safe_load((CONFIGS / config).read_text())["data"]
    data = parser.instantiate_classes(parser.parse_object({"data": section})).data
    assert isinstance(data, ZeroShotCrossDataset)
    assert isinstance(data.train_augmentations, AuthorsAugmentations)
    assert data.mosaic_probability == mosaic_probability


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "auxiliary", "target"), [("bayes_pfl_visa_to_mvtec.yaml", 0, 1), ("bayes_pfl_mvtec_to_visa.yaml", 1, 0)]
)
def test_paper_protocol_configs_run(tmp_path, visa_and_mvtec, config, auxiliary, target):
    result = anomalib_cli(
        "train",
        "--config",
        str(CONFIGS / config),
        *TINY_MODEL,
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
