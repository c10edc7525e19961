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
def test_paper_config_as_shipped_trains_then_tests_and_predicts_with_its_checkpoint(tmp_path, visa_and_mvtec):
    """The config's own loader workers, batch sizes, accelerator and data options; only roots, CLIP and model size
    overridden."""
    config = CONFIGS / "bayes_pfl_visa_to_mvtec.yaml"
    assert yaml.safe_load(config.read_text())["data"]["init_args"]["num_workers"] >= 2
    common = (
        f"--config={config}",
        *TINY_MODEL,
        f"--data.auxiliary_root={visa_and_mvtec[0]}",
        f"--data.target_root={visa_and_mvtec[1]}",
    )
    trained = anomalib_cli("train", *common, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    tables = list((tmp_path / "results").rglob("per_category_metrics.csv"))
    assert len(tables) == 1
    table = pd.read_csv(tables[0], index_col="category")
    assert list(table.index) == ["bottle", "metal_nut", "mean"]
    assert table.loc["mean"].notna().all()
    checkpoint = next((tmp_path / "results").rglob("model.ckpt"))

    (tmp_path / "test").mkdir()
    tested = anomalib_cli("test", *common, f"--ckpt_path={checkpoint}", cwd=tmp_path / "test")
    assert tested.returncode == 0, tested.stderr[-3000:]
    table_again = pd.read_csv(next((tmp_path / "test").rglob("per_category_metrics.csv")), index_col="category")
    pd.testing.assert_frame_equal(table_again, table)  # the checkpoint scores as the run that wrote it

    (tmp_path / "predict").mkdir()
    predicted = anomalib_cli("predict", *common, f"--ckpt_path={checkpoint}", cwd=tmp_path / "predict")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    predictions = pd.read_csv(next((tmp_path / "predict").rglob("predictions.csv")))
    test_images = sorted(visa_and_mvtec[1].glob("*/test/*/*.png"))
    assert sorted(map(Path, predictions["image_path"])) == test_images
    assert predictions["pred_score"].between(0, 1).all()


@pytest.mark.slow
def test_the_other_paper_protocol_config_runs(tmp_path, visa_and_mvtec):
    result = anomalib_cli(
        "train",
        "--config",
        str(CONFIGS / "bayes_pfl_mvtec_to_visa.yaml"),
        *TINY_MODEL,
        f"--data.auxiliary_root={visa_and_mvtec[1]}",
        f"--data.target_root={visa_and_mvtec[0]}",
        *TINY_DATA,
        "--trainer.accelerator=cpu",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(next((tmp_path / "results").rglob("per_category_metrics.csv")), index_col="category")
    assert list(table.index) == ["candle", "pcb1", "mean"]
    assert table.loc["mean"].notna().all()
