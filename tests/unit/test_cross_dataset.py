# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""ZeroShotCrossDataset on synthetic MVTec AD, VisA and folder trees."""

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from anomalib.data import MPDD, MVTecAD
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.layouts import EXPECTED_LAYOUTS, discover_categories
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
    empty = tmp_path / "own"
    (empty / "gear" / "defect").mkdir(parents=True)  # a category folder without its normal folder
    own = _module({"folder": empty, "mvtec": trees["mvtec"]}, auxiliary="folder")
    with pytest.raises(FileNotFoundError, match=r"each category folder needs a 'good' folder\.$") as error:
        own.prepare_data()
    assert "download" not in str(error.value)  # nothing to download for one's own data


def test_partial_masks_are_rejected(trees, tmp_path):
    root = write_tree(tmp_path / "partial", ["gear"], layout="folder")
    shutil.copytree(root / "gear" / "defect", root / "gear" / "scratch")  # a second defect folder without masks
    data = _module({"folder": root, "mvtec": trees["mvtec"]}, auxiliary="folder")
    with pytest.raises(
        FileNotFoundError, match=r"3 anomalous image\(s\) of category 'gear' have no mask: \[.*scratch/000\.png"
    ):
        data.setup()


def _folder_target(trees, root, **kwargs) -> ZeroShotCrossDataset:
    return _module({"visa": trees["visa"], "folder": root}, target="folder", **kwargs)


def test_write_tree_writes_anomalib_folder_layout(tmp_path):
    root = write_tree(tmp_path, ["gear"], layout="anomalib_folder", num_test_good=2, num_test_defect=2)
    files = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.png"))
    assert files == [f"gear/{folder}/{index:03d}.png" for folder in ("bad", "good", "masks") for index in range(2)]
    bare = write_tree(tmp_path / "bare", ["gear"], layout="anomalib_folder", masks=False)
    assert sorted(path.name for path in (bare / "gear").iterdir()) == ["bad", "good"]
    with pytest.raises(ValueError, match="always has masks"):
        write_tree(tmp_path / "visa", ["gear"], layout="visa", masks=False)


@pytest.mark.parametrize("side", ["target", "auxiliary"])
def test_anomalib_folder_layout_pairs_flat_masks_by_stem(trees, tmp_path, side):
    root = write_tree(tmp_path / "own", ["gear"], layout="anomalib_folder", num_test_good=2, num_test_defect=3)
    masks = (root / "gear" / "masks").resolve()
    (masks / "001.png").rename(masks / "001_mask.png")  # anomalib's other naming of the same stem
    shutil.copy(masks / "000.png", masks / "999.png")  # a mask of no image: anomalib's positional pairing fails on it
    if side == "target":
        data = _folder_target(trees, root)
    else:
        data = _module({"folder": root, "mvtec": trees["mvtec"]}, auxiliary="folder")
    data.setup()
    dataset = data.test_data if side == "target" else data.train_data
    samples = dataset.samples
    assert len(samples) == 2 + 3  # good + bad: the masks are not images
    assert not samples.image_path.str.contains("/masks/").any()
    anomalous = samples[samples.label_index == 1]
    assert list(anomalous.image_path.map(lambda path: Path(path).parent.name)) == ["bad"] * 3
    pairs = {
        Path(image).stem: Path(mask) for image, mask in zip(anomalous.image_path, anomalous.mask_path, strict=True)
    }
    assert pairs == {"000": masks / "000.png", "001": masks / "001_mask.png", "002": masks / "002.png"}
    assert (samples[samples.label_index == 0].mask_path == "").all()
    assert dataset.task.value == "segmentation"
    item = dataset[int(anomalous.index[0])]
    assert item.gt_mask.sum() > 0


def test_mask_folder_names_and_options(trees, tmp_path):
    root = write_tree(tmp_path / "own", ["gear"], layout="anomalib_folder")
    (root / "gear" / "masks").rename(root / "gear" / "mask")
    data = _folder_target(trees, root)
    data.setup()
    assert len(data.test_data) == 6
    assert data.test_data.samples.mask_path.str.contains("/mask/").sum() == 3
    (root / "gear" / "mask").rename(root / "gear" / "annotations")
    (root / "gear" / "good").rename(root / "gear" / "ok")
    named = _folder_target(trees, root, target_mask_dir="annotations", target_normal_dir="ok")
    named.setup()
    assert len(named.test_data) == 6
    assert named.test_data.samples.mask_path.str.contains("/annotations/").sum() == 3
    with pytest.raises(FileNotFoundError, match=r"gear/elsewhere \(--data\.target_mask_dir\) not found"):
        _folder_target(trees, root, target_mask_dir="elsewhere", target_normal_dir="ok").setup()
    with pytest.raises(ValueError, match=r"--data\.auxiliary_mask_dir applies to the folder format only"):
        _module(trees, auxiliary_mask_dir="masks")
    shutil.copytree(root / "gear" / "annotations", root / "gear" / "masks")
    shutil.copytree(root / "gear" / "annotations", root / "gear" / "ground_truth")
    with pytest.raises(ValueError, match=r"several mask folders .*name one with --data\.target_mask_dir"):
        _folder_target(trees, root, target_normal_dir="ok").setup()


def test_anomalib_folder_without_masks_is_classification(trees, tmp_path):
    root = write_tree(tmp_path / "own", ["gear"], layout="anomalib_folder", masks=False)
    data = _folder_target(trees, root)
    data.setup()
    assert len(data.test_data) == 6
    assert data.test_data.task.value == "classification"


def test_flat_masks_missing_for_an_image_are_named(trees, tmp_path):
    root = write_tree(tmp_path / "own", ["gear"], layout="anomalib_folder")
    (root / "gear" / "masks" / "002.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"1 anomalous image\(s\) of category 'gear' have no mask: \[.*bad/002\.png"
    ):
        _folder_target(trees, root).setup()


def test_test_stages_never_read_the_auxiliary_dataset(trees, tmp_path):
    data = _module(trees, auxiliary_root=str(tmp_path / "nowhere"))
    for stage in (TrainerFn.TESTING, TrainerFn.PREDICTING):
        data.trainer = SimpleNamespace(state=SimpleNamespace(fn=stage))
        data.prepare_data()
    data.setup(TrainerFn.TESTING)
    assert len(data.test_data) == 12
    assert not hasattr(data, "train_data")
    assert len(data.val_data) == 0  # validation comes from the auxiliary dataset, which is not there
    data.setup(TrainerFn.VALIDATING)
    assert len(data.val_data) == 0
    data.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*for the auxiliary dataset"):
        data.prepare_data()
    with pytest.raises(FileNotFoundError, match=r"nowhere.*for the auxiliary dataset"):
        data.setup(TrainerFn.FITTING)


def test_a_fit_after_a_test_gets_its_training_data(trees):
    data = _module(trees)
    data.setup(TrainerFn.TESTING)
    assert not hasattr(data, "train_data")
    data.setup(TrainerFn.FITTING)
    assert len(data.train_data) == 12
    assert len(data.val_data) == 12
    assert len(data.test_data) == 12
    validating = _module(trees)
    validating.setup(TrainerFn.VALIDATING)  # validation data comes from the auxiliary dataset when it is there
    assert len(validating.val_data) == 12


@pytest.mark.parametrize(
    ("tree", "given", "expected"),
    [
        ("mvtec", "visa", "mvtec"),
        ("visa", "mvtec", "visa"),
        ("folder", "mvtec", "folder"),
        ("mvtec", "folder", "mvtec"),
    ],
)
def test_a_wrong_format_names_the_option_and_the_right_one(trees, tree, given, expected):
    data = _module(trees, target=tree, target_format=given)
    pattern = (
        rf"no {given} categories found under .*for the target dataset: --data\.target_format {given} expects "
        rf".*{re.escape(EXPECTED_LAYOUTS[given])}.*{re.escape(str(trees[tree]))} looks like an? {expected} layout: "
        rf"pass --data\.target_format {expected}\."
    )
    with pytest.raises(FileNotFoundError, match=pattern):
        data.setup()


def test_a_category_given_as_root_is_pointed_to_its_parent(trees):
    category = trees["folder"] / "gear"
    data = _module(trees, auxiliary="folder", auxiliary_root=str(category))
    pattern = (
        rf"{re.escape(str(category))} looks like a single folder category: pass --data\.auxiliary_root "
        rf"{re.escape(str(trees['folder']))} --data\.auxiliary_categories \[gear\]\."
    )
    with pytest.raises(FileNotFoundError, match=pattern):
        data.setup()
    mvtec = _module(trees, target_root=str(trees["mvtec"] / "bottle"))
    with pytest.raises(FileNotFoundError, match=r"single mvtec category: .*--data\.target_categories \[bottle\]\.$"):
        mvtec.setup()
    visa = _module(trees, target_root=str(trees["visa"] / "visa_pytorch" / "candle"), target_format="mvtec")
    with pytest.raises(FileNotFoundError, match=r"single visa category: .*\[candle\] --data\.target_format visa\.$"):
        visa.setup()


def test_either_side_takes_anomalib_datamodules(mvtec_tree):
    """Any anomalib datamodule, one per category: its test subset, its category as class name, its name as dataset."""
    data = ZeroShotCrossDataset(
        auxiliary_root=str(mvtec_tree),
        auxiliary_format="mvtec",
        auxiliary_categories=["tile_a"],
        target_datamodules=[
            MVTecAD(root=mvtec_tree, category="tile_b", num_workers=0),
            MVTecAD(root=mvtec_tree, category="tile_c", num_workers=0),
        ],
        num_workers=0,
    )
    data.setup()
    own = MVTecAD(root=mvtec_tree, category="tile_c", num_workers=0)
    own.setup()
    target = data.test_data.samples
    assert set(target.image_path) >= set(own.test_data.samples.image_path)
    assert len(target) == 2 * len(own.test_data)  # tile_b and tile_c, unsplit
    assert {data.class_name_of(path) for path in target.image_path} == {"tile_b", "tile_c"}
    assert {data.dataset_of(path) for path in target.image_path} == {"MVTecAD"}
    assert data.dataset_of(data.train_data.samples.image_path.iloc[0]) == mvtec_tree.name
    assert data.name == "MVTecAD"


def test_a_datamodule_side_with_a_missing_root_names_it(tmp_path, mvtec_tree):
    data = ZeroShotCrossDataset(
        auxiliary_datamodules=[MVTecAD(root=tmp_path / "absent", category="bottle")],
        target_root=str(mvtec_tree),
        target_format="mvtec",
        num_workers=0,
    )
    with pytest.raises(FileNotFoundError, match=r"auxiliary_datamodules\[0\] \(MVTecAD\): .*absent does not exist"):
        data.setup()


def test_the_auxiliary_side_combines_several_datasets(tmp_path, mvtec_tree):
    mpdd = write_tree(tmp_path / "MPDD", ["tubes"], layout="mpdd", seed=3)
    data = ZeroShotCrossDataset(
        auxiliary_datamodules=[
            MVTecAD(root=mvtec_tree, category="tile_a", num_workers=0),
            MPDD(root=mpdd, category="tubes", num_workers=0),
        ],
        target_root=str(mvtec_tree),
        target_format="mvtec",
        target_categories=["tile_c"],
        num_workers=0,
    )
    data.setup()
    train = data.train_data.samples
    assert {data.class_name_of(path) for path in train.image_path} == {"tile_a", "tubes"}
    assert {data.dataset_of(path) for path in train.image_path} == {"MVTecAD", "MPDD"}
    assert set(train.label_index) == {0, 1}  # their test subsets: normal and anomalous images


def test_a_datamodule_side_with_a_missing_category_names_the_entry(mvtec_tree):
    data = ZeroShotCrossDataset(
        target_datamodules=[
            MVTecAD(root=mvtec_tree, category="tile_a", num_workers=0),
            MVTecAD(root=mvtec_tree, category="bottle", num_workers=0),
        ],
        num_workers=0,
    )
    named = r"target_datamodules\[1\] \(MVTecAD\): category 'bottle' cannot be read"
    with pytest.raises(FileNotFoundError, match=named):
        data.setup("test")


@pytest.mark.parametrize("target", ["mvtec", "visa", "folder"])
def test_few_shot_candidates_are_the_targets_normal_training_images(trees, target):
    """MVTec AD and VisA give train/good, registered under their category; the folder layout has no training split."""
    data = _module(trees, auxiliary="mvtec" if target == "visa" else "visa", target=target)
    data.setup("test")
    candidates = data.few_shot_candidates()
    if target == "folder":
        assert candidates == []
        return
    assert candidates
    assert all(Path(path).parent.parts[-2:] == ("train", "good") for path in candidates)
    assert {data.class_name_of(path) for path in candidates} == set(
        data.test_data.samples.image_path.map(data.class_name_of)
    )
    assert not set(candidates) & set(data.test_data.samples.image_path)


def test_few_shot_candidates_of_target_datamodules_are_their_training_subsets(mvtec_tree):
    data = ZeroShotCrossDataset(target_datamodules=[MVTecAD(root=mvtec_tree, category="tile_b", num_workers=0)])
    data.setup("test")
    own = MVTecAD(root=mvtec_tree, category="tile_b", num_workers=0)
    own.setup()
    assert sorted(data.few_shot_candidates()) == sorted(own.train_data.samples.image_path)
    assert {data.class_name_of(path) for path in data.few_shot_candidates()} == {"tile_b"}


def test_one_root_moves_every_datamodule_of_a_side(mvtec_tree, tmp_path):
    """A config's datamodules read another folder with one --data.target_root; several roots cannot share it."""
    config = [MVTecAD(root="./datasets/MVTecAD", category=category) for category in ("tile_a", "tile_b")]
    data = ZeroShotCrossDataset(target_datamodules=config, target_root=str(mvtec_tree), num_workers=0)
    assert [Path(datamodule.root) for datamodule in data.target_datamodules] == [mvtec_tree, mvtec_tree]
    data.setup("test")
    assert len(data.test_data) == 12
    mixed = [MVTecAD(root="a", category="tile_a"), MVTecAD(root="b", category="tile_b")]
    with pytest.raises(ValueError, match=r"--data.target_root .* they read several \(\['a', 'b'\]\); set each"):
        ZeroShotCrossDataset(target_datamodules=mixed, target_root=str(mvtec_tree))
