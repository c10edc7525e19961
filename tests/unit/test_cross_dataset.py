# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""ZeroShotCrossDataset on synthetic MVTec AD, VisA and folder trees."""

import shutil

import pytest

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.cross_dataset import discover_categories
from anomalib_bayes_pfl.data.synthetic import write_tree


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    return {
        "visa": write_tree(root / "visa", ["candle", "pcb1"], layout="visa"),
        "mvtec": write_tree(root / "MVTecAD", ["bottle", "metal_nut"], layout="mvtec"),
        "folder": write_tree(root / "own", ["gear"], layout="folder"),
        "folder_no_masks": write_tree(root / "own_no_masks", ["gear"], layout="folder", masks=False),
    }


def _module(trees, auxiliary="visa", target="mvtec", **kwargs) -> ZeroShotCrossDataset:
    arguments = {
        "auxiliary_root": str(trees[auxiliary]),
        "auxiliary_format": auxiliary.removesuffix("_no_masks"),
        "target_root": str(trees[target]),
        "target_format": target.removesuffix("_no_masks"),
        "num_workers": 0,
    }
    return ZeroShotCrossDataset(**{**arguments, **kwargs})


def test_visa_to_mvtec_uses_annotated_test_splits(trees):
    data = _module(trees)
    data.setup()
    assert discover_categories(trees["visa"], "visa") == ["candle", "pcb1"]
    assert len(data.train_data) == 2 * 6  # test split of each auxiliary category: 3 normal + 3 anomalous
    assert (data.train_data.samples.label_index == 1).sum() == 6
    assert data.train_data.samples.mask_path.str.len().gt(0).sum() == 6
    assert len(data.test_data) == 2 * 6
    assert data.name == "MVTecAD"
    assert data.category == ""
    path = data.test_data.samples.image_path.iloc[0]
    assert data.class_name_of(path) == "bottle"
    assert data.class_name_of("elsewhere.png") is None


def test_category_selection_and_validation_modes(trees):
    data = _module(trees, auxiliary_categories=["pcb1"], target_categories=["metal_nut"], val_split_mode="auxiliary")
    data.setup()
    assert set(data.train_data.samples.image_path.map(data.class_name_of)) == {"pcb1"}
    assert set(data.test_data.samples.image_path.map(data.class_name_of)) == {"metal_nut"}
    assert len(data.val_data) == len(data.train_data)
    assert data.val_data is not data.train_data
    assert data.category == "metal_nut"
    same = _module(trees, val_split_mode="same_as_test")
    same.setup()
    assert len(same.val_data) == len(same.test_data)


def test_folder_layouts_with_and_without_masks(trees):
    with_masks = _module(trees, auxiliary="folder", target="mvtec")
    with_masks.setup()
    assert with_masks.train_data.task.value == "segmentation"
    assert len(with_masks.train_data) == 6
    without = _module(trees, auxiliary="folder_no_masks", target="folder")
    without.setup()
    assert without.train_data.task.value == "classification"
    assert (without.train_data.samples.label_index == 1).sum() == 3
    assert without.class_name_of(without.test_data.samples.image_path.iloc[0]) == "gear"


def test_missing_data_is_named_and_never_downloaded(trees, tmp_path):
    missing = _module(trees, auxiliary_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/visa_pytorch.*--data\.download true"):
        missing.prepare_data()
    assert not (tmp_path / "nowhere").exists()
    unknown = _module(trees, target_categories=["bottle", "carpet"])
    with pytest.raises(
        FileNotFoundError, match=r"target categories \['carpet'\] not found.*found: \['bottle', 'metal_nut'\]"
    ):
        unknown.setup()


def test_partial_masks_are_rejected(trees, tmp_path):
    root = write_tree(tmp_path / "partial", ["gear"], layout="folder")
    shutil.copytree(root / "gear" / "defect", root / "gear" / "scratch")  # a second defect folder without masks
    data = _module({"folder": root, "mvtec": trees["mvtec"]}, auxiliary="folder")
    with pytest.raises(
        FileNotFoundError, match=r"3 anomalous image\(s\) of category 'gear' have no mask: \[.*scratch/000\.png"
    ):
        data.setup()
