# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Each side's datasets: anomalib datamodules read through their datasets' public constructors, masks matched once."""

from pathlib import Path

import pandas as pd
import pytest
from anomalib.data import MVTecAD, Tabular, Visa

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data import sources
from anomalib_bayes_pfl.data.masks import match_masks
from anomalib_bayes_pfl.data.sources import DataModuleSource, DataSource
from anomalib_bayes_pfl.data.synthetic import write_tree


def _refuse_set_up(_datamodule, _stage=None) -> None:
    msg = "the datamodule's own set-up was called"
    raise AssertionError(msg)


class _Renamed(MVTecAD):
    """A user's MVTecAD under another name: it builds its subsets as MVTecAD does."""


class _OwnSetUp(MVTecAD):
    """A user's MVTecAD that builds its subsets its own way."""

    def _setup(self, _stage=None) -> None:
        _refuse_set_up(self)


def test_datamodules_are_read_as_on_disk_without_their_set_up_and_left_untouched(mvtec_tree, monkeypatch):
    """Every test image in path order, unsplit, training normals too; anomalib's private set-up is never called."""
    monkeypatch.setattr(MVTecAD, "_setup", _refuse_set_up)  # the public setup() calls it
    for kind in (MVTecAD, _Renamed):
        datamodule = kind(root=mvtec_tree, category="tile_b", num_workers=0)
        source = DataModuleSource(side="target", datamodules=[datamodule])
        [(category, _, dataset)] = source.datasets(source.resolve())
        assert category == "tile_b"
        test = mvtec_tree / "tile_b" / "test"
        paths = dataset.samples.image_path.tolist()
        assert paths == [str(path) for path in sorted(test.rglob("*.png"))]
        assert dataset.samples.label_index.tolist() == [int(Path(path).parent.name != "good") for path in paths]
        train = sorted((mvtec_tree / "tile_b" / "train" / "good").glob("*.png"))
        assert source.normal_training_images("tile_b") == train
        assert not any(hasattr(datamodule, subset) for subset in ("train_data", "val_data", "test_data"))


def test_a_subclass_with_its_own_set_up_is_refused_not_read_as_its_parent(mvtec_tree):
    named = r"target_datamodules\[0\] \(_OwnSetUp\) cannot be read as it is on disk"
    with pytest.raises(ValueError, match=named):
        ZeroShotCrossDataset(target_datamodules=[_OwnSetUp(root=mvtec_tree, category="tile_b")])


def test_a_new_root_moves_visa_s_processed_tree_with_it(tmp_path):
    """``--data.target_root`` with VisA datamodules: their images are read below the new root, not the config's."""
    datamodules = [Visa(root=tmp_path / "config_root", category=name) for name in ("candle", "pcb1")]
    sources.move_datamodules(datamodules, str(tmp_path / "given"), "--data.target_root")
    assert [datamodule.split_root for datamodule in datamodules] == [tmp_path / "given" / "visa_pytorch"] * 2


def test_a_datamodule_that_cannot_be_read_as_it_is_is_named_at_once(tmp_path):
    """anomalib's Tabular keeps its samples private: only its own set-up could read them."""
    samples = pd.DataFrame({"image_path": [], "label_index": [], "split": []})
    table = Tabular(name="table", samples=samples, root=tmp_path)
    named = r"target_datamodules\[0\] \(Tabular\) cannot be read as it is on disk; give one of .*'MVTecAD'"
    with pytest.raises(ValueError, match=named):
        ZeroShotCrossDataset(target_datamodules=[table])


@pytest.mark.parametrize("layout", ["mvtec", "visa", "folder"])
def test_masks_are_matched_once_and_are_the_ones_read(tmp_path, monkeypatch, layout):
    """In every layout the stem-matched masks are what the dataset reads (anomalib would pair MVTec AD's alike)."""
    results = []

    def recording(category: str, defects: list) -> dict[str, str]:
        results.append(match_masks(category, defects))
        return results[-1]

    monkeypatch.setattr(sources, "match_masks", recording)
    root = write_tree(tmp_path, ["gear"], layout=layout)
    samples = DataSource(side="target", root=root, dataset_format=layout).dataset("gear").samples
    anomalous = samples[samples.label_index == 1]
    assert len(results) == 1
    assert dict(zip(anomalous.image_path, anomalous.mask_path, strict=True)) == results[0]
    assert len(results[0]) == len(anomalous) > 0
