# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Each MVTec AD -> <dataset> config runs as shipped on tiny trees in that dataset's real on-disk layout.

The trees sit where the configs look (``./datasets/...`` under the working directory); anomalib's own datamodule of
each target reads its tree as it is, and nothing is downloaded.
"""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from anomalib_bayes_pfl.data.synthetic import write_tree

from ..helpers import TINY_MODEL, anomalib_cli

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).parents[2] / "configs"
TINY_RUN = (
    "--trainer.accelerator=cpu",
    "--data.train_batch_size=4",
    "--data.eval_batch_size=8",
    "--data.num_workers=0",
)
# config -> (its anomalib datamodule's name, the layout of its tree, the folder the config reads)
TARGETS = {
    "btech": ("BTech", "btech", "BTech"),
    "mpdd": ("MPDD", "mpdd", "MPDD"),
    "kolektor": ("Kolektor", "kolektor", "kolektor"),
    "mvtecad2": ("MVTecAD2", "mvtec_ad2", "MVTecAD2"),
    "bmad": ("BMAD", "bmad", "BMAD"),
}


def _categories(config: dict) -> list[str]:
    return [entry["init_args"].get("category", "") for entry in config["data"]["init_args"]["target_datamodules"]]


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_config_runs_on_the_datasets_layout(tmp_path, target):
    """As shipped, with the target dataset elsewhere than the config says: one --data.target_root moves them all."""
    name, layout, folder = TARGETS[target]
    config_path = CONFIGS / f"bayes_pfl_mvtec_to_{target}.yaml"
    categories = _categories(yaml.safe_load(config_path.read_text()))
    write_tree(tmp_path / "datasets" / "MVTecAD", ["bottle", "metal_nut"], num_train=0)
    written = ["kos01", "kos02"] if layout == "kolektor" else categories  # Kolektor's items are not categories
    write_tree(tmp_path / "elsewhere" / folder, written, layout=layout, seed=1)
    moved = f"--data.target_root=elsewhere/{folder}"
    result = anomalib_cli("train", "--config", str(config_path), *TINY_MODEL, *TINY_RUN, moved, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(next(tmp_path.rglob("per_category_metrics.csv")), index_col="category")
    expected = {"kolektor": ["Kolektor"], "btech": ["metal1", "wood", "metal2"]}.get(layout, categories)  # authors
    assert list(table.index) == [*sorted(expected), "mean"]
    assert set(table.dataset) == {name}
    assert table[["image_AUROC", "pixel_AUROC"]].notna().all().all()  # every target here has masks
    assert (tmp_path / "results" / "BayesPFL" / name).is_dir()


def test_several_target_datasets_give_a_mean_each(tmp_path):
    """BTech and MPDD in one run: the table names each row's dataset and averages each dataset, then all."""
    config = yaml.safe_load((CONFIGS / "bayes_pfl_mvtec_to_btech.yaml").read_text())
    targets = config["data"]["init_args"]["target_datamodules"]
    targets[1:] = [{"class_path": "anomalib.data.MPDD", "init_args": {"root": "./datasets/MPDD", "category": "tubes"}}]
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    write_tree(tmp_path / "datasets" / "MVTecAD", ["bottle", "metal_nut"], num_train=0)
    write_tree(tmp_path / "datasets" / "BTech", ["01"], layout="btech", seed=1)
    write_tree(tmp_path / "datasets" / "MPDD", ["tubes"], layout="mpdd", seed=2)
    result = anomalib_cli("train", "--config", "two.yaml", *TINY_MODEL, *TINY_RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(next(tmp_path.rglob("per_category_metrics.csv")), index_col="category")
    assert list(table.index) == ["metal1", "tubes", "mean BTech", "mean MPDD", "mean"]
    assert table.loc[["metal1", "tubes", "mean"], "dataset"].tolist() == ["BTech", "MPDD", "all"]
    assert table.loc["mean", "image_AUROC"] == pytest.approx(table.loc[["metal1", "tubes"], "image_AUROC"].mean())
    assert table.loc["mean", "images"] == table.loc[["mean BTech", "mean MPDD"], "images"].sum()
    assert (tmp_path / "results" / "BayesPFL" / "BTech+MPDD").is_dir()
