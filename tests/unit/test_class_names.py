# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""One rule for the category of an image that nothing names: predict's loose files and exported models alike."""

import logging
from types import SimpleNamespace

import pytest

from anomalib_bayes_pfl.calibration.thresholds import export_class_name
from anomalib_bayes_pfl.data.class_names import fallback_category, image_categories, log_categories
from anomalib_bayes_pfl.model.references import CategoryReferences, ReferenceMemory
from anomalib_bayes_pfl.settings import BayesPFLSettings

from ..helpers import tiny_module


def _memory(*categories: str) -> ReferenceMemory:
    memory = ReferenceMemory()
    for category in categories:
        memory.set(category, CategoryReferences([], {}, image_threshold=0.3, pixel_threshold=0.4))
    return memory


@pytest.mark.parametrize("class_name", [None, "gear"])
@pytest.mark.parametrize("stored", [(), ("grain_plank",), ("tile_c", "tile_d")])
def test_a_loose_image_gets_the_category_that_an_export_scores(class_name, stored):
    """Item 4 of issue 33: predict and export follow one rule (class name, the one stored category, ``object``)."""
    loose = image_categories(["upload/part.png"], 1, class_name=class_name, datamodule=None, stored_categories=stored)
    settings = BayesPFLSettings(class_name=class_name)
    assert loose[0].category == export_class_name(_memory(*stored), settings)
    assert loose[0].class_name == (class_name or loose[0].category)
    expected = class_name or (stored[0] if len(stored) == 1 else "object")
    assert loose[0].category == expected


def test_the_stored_category_never_replaces_one_the_data_names():
    paths = ["MVTecAD/screw/test/good/0.png", "upload/part.png"]
    names = image_categories(paths, 2, class_name=None, datamodule=None, stored_categories=["grain_plank"])
    assert [name.category for name in names] == ["screw", "grain_plank"]
    assert names[1].source == "the one category the checkpoint stores"


def test_a_datamodule_s_images_without_a_category_never_take_the_checkpoint_s():
    """anomalib's ``Folder`` has no category: its images are a product of their own, not the checkpoint's part."""
    folder = SimpleNamespace(name="bottles", category="")
    names = image_categories(["/data/bottles/good/1.png"], 1, class_name=None, datamodule=folder,
                             stored_categories=["grain_plank"])  # fmt: skip
    assert (names[0].dataset, names[0].category) == ("bottles", "object")


def test_the_module_names_a_loose_image_by_its_checkpoints_one_category(tiny_clip_path):
    """The module's rule (predict) and its export's class name agree once the head stores one category."""
    module = tiny_module(tiny_clip_path)
    assert module.class_names_of(["upload/part.png"]) == ["object"]
    module.model.references.set("grain_plank", CategoryReferences([], {}))
    module.apply_export_thresholds()
    assert module.class_names_of(["upload/part.png"]) == ["grain_plank"] == [module.model.default_class_name]


def test_the_log_says_where_the_class_name_came_from(tiny_clip_path, caplog):
    """Item 14 of issue 33: a class name stored in the checkpoint is not credited to the command line."""
    module = tiny_module(tiny_clip_path)
    module.options.settings = BayesPFLSettings.resolve({}, {"class_name": "gear"}, "checkpoint line.ckpt")
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        log_categories(module.image_categories(["upload/part.png"]))
    assert "(category from the class_name stored in checkpoint line.ckpt)" in caplog.text
    given, stored = {"class_name": "gear"}, {"class_name": "bolt"}
    module.options.settings = BayesPFLSettings.resolve(given, stored, "checkpoint line.ckpt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        log_categories(module.image_categories(["upload/part.png"]))
    assert "(category from --model.class_name)" in caplog.text


def test_fallback_category_names_its_source():
    assert fallback_category("gear", ["tile_c"], "the class_name stored in x") == ("gear", "the class_name stored in x")
    assert fallback_category(None)[0] == "object"
