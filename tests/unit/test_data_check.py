# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The file check judges what anomalib reads: the subsets a stage uses, and masks of anomalous images only."""

from types import SimpleNamespace

import pytest
from anomalib.data import MVTecAD

from anomalib_bayes_pfl.data.validation import DataCheck


@pytest.fixture
def datamodule(tmp_path, mvtec_tree):
    data = MVTecAD(root=mvtec_tree, category="tile_a", num_workers=0)
    data.setup()
    test = data.test_data.samples
    # As BTech lists them: a mask path for every normal image, to a file that does not exist (anomalib never reads it).
    normal = test.label_index == 0
    test.loc[normal, "mask_path"] = [str(tmp_path / f"missing_{i}.png") for i in range(int(normal.sum()))]
    return data


def test_mask_paths_of_normal_images_are_not_judged(datamodule):
    DataCheck().setup(SimpleNamespace(datamodule=datamodule), None, "test")


def test_a_missing_mask_of_an_anomalous_image_is_named(datamodule):
    test = datamodule.test_data.samples
    anomalous = test.index[test.label_index == 1][0]
    test.loc[anomalous, "mask_path"] = "gone_mask.png"
    with pytest.raises(ValueError, match=r"mask gone_mask\.png does not exist"):
        DataCheck().setup(SimpleNamespace(datamodule=datamodule), None, "test")


def test_each_stage_checks_the_subsets_it_reads(datamodule):
    datamodule.train_data.samples.loc[0, "image_path"] = "gone_train.png"
    trainer = SimpleNamespace(datamodule=datamodule)
    for stage in ("test", "predict", "validate"):  # none reads the training images (validation: the test images)
        DataCheck().setup(trainer, None, stage)
    with pytest.raises(ValueError, match=r"image gone_train\.png does not exist"):
        DataCheck().setup(trainer, None, "fit")


def test_truncated_and_16_bit_files_are_all_named_at_setup(datamodule, tmp_path):
    """Before any scoring (PIL's verify() passes a cut JPEG; anomalib would fail on it inside a loader worker)."""
    from PIL import Image

    whole, cut, deep = tmp_path / "whole.jpg", tmp_path / "cut.jpg", tmp_path / "deep.png"
    Image.effect_noise((600, 400), 64).convert("RGB").save(whole)
    cut.write_bytes(whole.read_bytes()[:2000])
    Image.new("I;16", (8, 8), 40000).save(deep)
    test = datamodule.test_data.samples
    test.loc[test.index[test.label_index == 0][:3], "image_path"] = [str(whole), str(cut), str(deep)]
    with pytest.raises(ValueError, match=r"^2 problem\(s\) with the dataset files") as error:
        DataCheck().setup(SimpleNamespace(datamodule=datamodule), None, "test")
    assert f"image {cut} cannot be read (image file is truncated" in str(error.value)
    assert f"image {deep} has I;16 pixels" in str(error.value)
