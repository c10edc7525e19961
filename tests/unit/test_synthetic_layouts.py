# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Synthetic trees in the BTech, MPDD, Kolektor, MVTec AD 2 and BMAD layouts, read as they are by anomalib's own
datamodules (``setup`` only: ``prepare_data`` would download)."""

import hashlib
from pathlib import Path

import pytest
import torch
from anomalib.data import BMAD, MPDD, BTech, Kolektor, MVTecAD2
from anomalib.data.datasets.image.bmad import make_bmad_dataset
from PIL import Image

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import KOLEKTOR_MAX_PARTS, write_tree

SIZE = 32
COUNTS = {"num_train": 4, "num_test_good": 2, "num_test_defect": 3}


def _write(root: Path, layout: str, categories: tuple[str, ...], **kwargs) -> Path:
    return write_tree(root, categories, layout=layout, image_size=SIZE, **COUNTS, **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _digest(root: Path) -> str:
    return hashlib.sha256(repr(sorted(_files(root).items())).encode()).hexdigest()


def _check_loader(loader: torch.utils.data.DataLoader, num_good: int, num_defect: int) -> None:
    """All images load at their size; anomalous ones have a mask marking some pixels, normal ones an empty mask."""
    batches = list(loader)
    labels = torch.cat([batch.gt_label for batch in batches]).bool()
    masks = torch.cat([batch.gt_mask for batch in batches]).flatten(1)
    assert torch.cat([batch.image for batch in batches]).shape == (num_good + num_defect, 3, SIZE, SIZE)
    assert sorted(labels.tolist()) == [False] * num_good + [True] * num_defect
    marked = masks.sum(dim=1)
    assert (marked[labels] > 0).all()
    assert (marked[labels] < SIZE * SIZE).all()
    assert (marked[~labels] == 0).all()


@pytest.mark.parametrize(
    ("datamodule", "layout", "categories"),
    [
        pytest.param(BTech, "btech", ("01", "02"), id="btech"),
        pytest.param(MPDD, "mpdd", ("bracket_black", "metal_plate"), id="mpdd"),
        pytest.param(BMAD, "bmad", ("Brain", "Liver"), id="bmad"),
    ],
)
def test_anomalib_datamodule_reads_the_tree(tmp_path, datamodule, layout, categories):
    root = _write(tmp_path, layout, categories)
    for category in categories:
        data = datamodule(root=root, category=category, num_workers=0)
        data.setup()
        assert len(data.train_data) == COUNTS["num_train"]
        assert not data.train_data.has_anomalous
        assert data.test_data.samples.label_index.value_counts().to_dict() == {0: 2, 1: 3}
        _check_loader(data.test_dataloader(), num_good=2, num_defect=3)
        assert next(iter(data.train_dataloader())).image.shape[1:] == (3, SIZE, SIZE)


def test_btech_tree_has_bmp_images_png_masks_and_no_normal_masks(tmp_path):
    """anomalib gives BTech's normal training images a ground_truth/ok mask path that does not exist, and never reads
    it; normal test images get none."""
    root = _write(tmp_path, "btech", ("01",))
    assert {path.suffix for path in (root / "01").glob("t*/*/*")} == {".bmp"}
    assert sorted(path.name for path in (root / "01/ground_truth/ko").iterdir()) == ["000.png", "001.png", "002.png"]
    data = BTech(root=root, category="01", num_workers=0)
    data.setup()
    train_masks = [Path(path) for path in data.train_data.samples.mask_path]
    assert train_masks == [root / f"01/ground_truth/ok/{index:03d}.png" for index in range(COUNTS["num_train"])]
    assert not any(path.exists() for path in train_masks)
    test = data.test_data.samples
    assert (test.mask_path[test.label_index == 0] == "").all()


def test_kolektor_items_are_split_by_anomalib_and_labelled_by_their_masks(tmp_path):
    """Kolektor has no category and no split on disk: every PartN.jpg has a PartN_label.bmp, an image is anomalous
    when its mask marks a pixel, all anomalous images are tested, and 80% of the normal ones train (seeded split)."""
    root = _write(tmp_path, "kolektor", ("kos01", "kos02"))
    parts = COUNTS["num_train"] + COUNTS["num_test_good"] + COUNTS["num_test_defect"]
    for item in ("kos01", "kos02"):
        assert sorted(path.name for path in (root / item).glob("*.jpg")) == [
            f"Part{index}.jpg" for index in range(parts)
        ]
        masks = [Image.open(root / item / f"Part{index}_label.bmp") for index in range(parts)]
        marked = [bool(mask.getbbox()) for mask in masks]
        assert marked == [False] * (parts - COUNTS["num_test_defect"]) + [True] * COUNTS["num_test_defect"]
    data = Kolektor(root=root, num_workers=0)
    data.setup()
    num_good = 2 * (COUNTS["num_train"] + COUNTS["num_test_good"])
    assert len(data.train_data) == int(0.8 * num_good)
    assert not data.train_data.has_anomalous
    _check_loader(data.test_dataloader(), num_good=num_good - int(0.8 * num_good), num_defect=2 * 3)


def test_kolektor_items_hold_at_most_ten_parts(tmp_path):
    with pytest.raises(ValueError, match=f"at most {KOLEKTOR_MAX_PARTS} images"):
        write_tree(tmp_path, ["kos01"], layout="kolektor", num_train=6, num_test_good=3, num_test_defect=2)


def _mvtec_ad2(root: Path, category: str) -> MVTecAD2:
    data = MVTecAD2(root=root, category=category, num_workers=0)
    data.setup()
    return data


def test_mvtec_ad2_tree_has_all_its_splits(tmp_path):
    """Public test set (the default of ``test_dataloader``) with masks, validation normals, unlabelled private sets.

    ``test_data`` itself keeps only the anomalous public images: with no test split mode, anomalib's base datamodule
    splits off the normal ones and does not add them back.
    """
    root = _write(tmp_path, "mvtec_ad2", ("can", "vial"))
    for category in ("can", "vial"):
        data = _mvtec_ad2(root, category)
        assert len(data.train_data) == COUNTS["num_train"]
        assert data.val_data.samples.label_index.tolist() == [0, 0]
        public = data.test_dataloader().dataset
        assert public is data.test_public_data
        assert public.samples.label.value_counts().to_dict() == {"bad": 3, "good": 2}
        assert data.test_data.samples.label_index.tolist() == [1, 1, 1]
        for test_type in ("private", "private_mixed"):
            private = next(iter(data.test_dataloader(test_type=test_type)))
            assert private.image.shape == (5, 3, SIZE, SIZE)
            assert private.gt_label is None
            assert private.gt_mask is None


def test_mvtec_ad2_public_test_images_and_masks_load(tmp_path):
    root = _write(tmp_path, "mvtec_ad2", ("can",))
    data = _mvtec_ad2(root, "can")
    public = data.test_public_data
    # Under pandas 3 anomalib's mask paths of normal images are NaN, which it cannot read (next test): make them "".
    public.samples = public.samples.assign(mask_path=public.samples.mask_path.fillna(""))
    _check_loader(data.test_dataloader(), num_good=2, num_defect=3)


def test_the_zero_shot_datamodule_reads_mvtec_ad2_normal_images(tmp_path):
    """anomalib 2.7 leaves MVTec AD 2's normal images without a mask path, which pandas 3 stores as NaN and anomalib's
    own loader then refuses; ZeroShotCrossDataset reads them."""
    root = _write(tmp_path, "mvtec_ad2", ("can",))
    data = ZeroShotCrossDataset(target_datamodules=[MVTecAD2(root=root, category="can")], num_workers=0)
    data.setup("test")
    _check_loader(data.test_dataloader(), num_good=2, num_defect=3)


def test_bmad_validation_split_has_masks_too(tmp_path):
    root = _write(tmp_path, "bmad", ("Brain",))
    data = BMAD(root=root, category="Brain", num_workers=0)
    data.setup()
    _check_loader(data.val_dataloader(), num_good=2, num_defect=3)


def test_bmad_image_level_categories_are_flat_and_maskless(tmp_path):
    root = _write(tmp_path, "bmad", ("Chest",), masks=False)
    folders = {path.parent.relative_to(root).as_posix() for path in root.rglob("*.png")}
    assert folders == {
        "Chest/train/good",
        *(f"Chest/{split}/{label}" for split in ("valid", "test") for label in ("good", "Ungood")),
    }


def test_anomalib_cannot_read_bmad_image_level_categories(tmp_path):
    """anomalib 2.7 reads the split of ``test/good/000.png`` two folders up, here the category: BMAD's image-level
    categories get no test images. Make this test positive when anomalib reads them."""
    root = _write(tmp_path, "bmad", ("Chest",), masks=False)
    assert set(make_bmad_dataset(root / "Chest").split) == {"train", "Chest"}
    data = BMAD(root=root, category="Chest", num_workers=0)
    data.setup()
    assert not data.test_data.has_anomalous


@pytest.mark.parametrize(
    ("layout", "categories", "masks"),
    [
        ("btech", ("01", "02"), True),
        ("mpdd", ("bracket_black", "metal_plate"), True),
        ("kolektor", ("kos01", "kos02"), True),
        ("mvtec_ad2", ("can", "vial"), True),
        ("bmad", ("Brain", "Liver"), True),
        ("bmad", ("Chest", "Histopathology"), False),
    ],
)
def test_same_seed_same_files_and_the_global_rng_untouched(tmp_path, layout, categories, masks):
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = _write(tmp_path / "first", layout, categories, masks=masks, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    second = _write(tmp_path / "second", layout, categories, masks=masks, seed=3)
    third = _write(tmp_path / "third", layout, categories, masks=masks, seed=4)
    assert _digest(first) == _digest(second)
    assert _files(first).keys() == _files(third).keys()
    assert _digest(first) != _digest(third)


def test_only_folder_and_bmad_layouts_go_without_masks(tmp_path):
    with pytest.raises(ValueError, match="the btech layout always has masks"):
        write_tree(tmp_path, ["01"], layout="btech", masks=False)
