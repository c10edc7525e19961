# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Which thresholds label an image, when they are refused, and what the paper score's top-k follows."""

import dataclasses
import logging
import math

import pytest
import torch
from anomalib.data import ImageBatch

from anomalib_bayes_pfl.adapter.evaluation import score_and_label
from anomalib_bayes_pfl.calibration import prepare_references, reference_settings, thresholds_of
from anomalib_bayes_pfl.data.class_names import ImageCategory
from anomalib_bayes_pfl.model.references import CategoryReferences, ReferenceMemory
from anomalib_bayes_pfl.model.scoring import top_k_mean
from anomalib_bayes_pfl.settings import BayesPFLSettings

from ..helpers import tiny_module


def _memory(**thresholds: float) -> ReferenceMemory:
    memory = ReferenceMemory()
    for name, value in thresholds.items():
        memory.set(name, CategoryReferences([], {}, image_threshold=value, pixel_threshold=value))
    return memory


def test_without_calibration_every_image_takes_the_fixed_thresholds():
    thresholds = thresholds_of(_memory(gear=0.3), BayesPFLSettings(image_threshold=0.4), ["gear", "bolt"])
    assert thresholds.image.tolist() == [0.4, 0.4]
    assert thresholds.review is None


def test_a_calibrating_run_never_falls_back_to_the_fixed_thresholds():
    """Item 6 of issue 33: a class name without a calibrated threshold gets none (NaN), like a missing review one."""
    settings = BayesPFLSettings(false_alarm_rate=0.25)
    thresholds = thresholds_of(_memory(gear=0.3), settings, ["gear", "bolt"])
    assert thresholds.image[0] == 0.3
    assert math.isnan(thresholds.image[1])
    assert math.isnan(thresholds.pixel[1])
    assert thresholds_of(None, settings, ["gear"]).image.isnan().all()  # before the head is built


def _names(category: str, class_name: str, count: int = 2) -> list[ImageCategory]:
    return [ImageCategory("", category, class_name, "test")] * count


def test_scoring_a_class_name_without_its_calibrated_threshold_is_refused(tiny_model):
    settings = BayesPFLSettings(false_alarm_rate=0.25)
    tiny_model.references.set("gear", CategoryReferences([], {}, image_threshold=0.3, pixel_threshold=0.4))
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64))
    with pytest.raises(RuntimeError, match=r"\['bolt'\] have no calibrated image threshold.*--model.false_alarm_rate"):
        score_and_label(batch, tiny_model, settings, _names("bolt", "bolt"), None)
    labelled = score_and_label(batch, tiny_model, settings, _names("gear", "gear"), None)
    assert labelled.image_threshold.tolist() == [0.3, 0.3]


def test_a_fit_s_validation_labels_before_calibration_with_the_fixed_thresholds(tiny_model):
    """Validation precedes the test's calibration: it labels with the calibrated thresholds it finds, the fixed ones
    elsewhere, and marks nothing for review, where a test refuses the uncalibrated class name."""
    settings = BayesPFLSettings(false_alarm_rate=0.25, review_rate=0.25, image_threshold=0.4)
    tiny_model.references.set("gear", CategoryReferences([], {}, image_threshold=0.3, pixel_threshold=0.35))
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64))
    names = [ImageCategory("", "gear", "gear", "test"), ImageCategory("", "bolt", "bolt", "test")]
    labelled = score_and_label(batch, tiny_model, settings, names, None, few_shot=False, validating=True)
    assert labelled.image_threshold.tolist() == [0.3, 0.4]
    assert labelled.review_threshold is None
    assert labelled.needs_review is None
    with pytest.raises(RuntimeError, match=r"\['bolt'\] have no calibrated image threshold"):
        score_and_label(ImageBatch(image=torch.rand(2, 3, 64, 64)), tiny_model, settings, names, None)


def test_the_paper_score_takes_the_top_k_of_the_category_not_of_the_prompt_word(tiny_model):
    """Item 5 of issue 33: a screw prompted as 'bolt' keeps the authors' k of screw (20, not 2000)."""
    settings = BayesPFLSettings(image_score="paper", class_name="bolt")
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64))
    labelled = score_and_label(batch, tiny_model, settings, _names("screw", "bolt"), None)
    raw = tiny_model.score(batch.image, ["bolt", "bolt"]).raw_anomaly_map
    torch.testing.assert_close(labelled.paper_map_score, top_k_mean(raw, 20))
    assert not torch.allclose(top_k_mean(raw, 20), top_k_mean(raw, 2000))  # the test tells the two apart


def test_references_stored_under_other_options_are_named_when_none_can_be_drawn(tiny_clip_path, caplog):
    """Item 13 of issue 33: the message ends with the stored option that differs, both values, and the fix."""
    module = tiny_module(tiny_clip_path, image_size=63, k_shot=1, false_alarm_rate=0.25, calibration_images=3)
    stored = reference_settings(dataclasses.replace(module.settings, image_size=64))
    module.model.references.set("grain_plank", CategoryReferences([], stored, image_threshold=0.3, pixel_threshold=0.4))
    refused = pytest.raises(ValueError, match="needs")
    with caplog.at_level(logging.WARNING, logger="anomalib_bayes_pfl"), refused as error:
        prepare_references(module.model, module.settings, ["loose/part.png"], class_names_of=module.class_names_of,
                           transform=None, datamodule=None, folder=None)  # fmt: skip
    message = str(error.value)
    assert message.startswith("category 'grain_plank' needs 4 normal images")
    assert message.endswith(
        "The references and thresholds stored with the head for 'grain_plank' were made with image_size 64 (now 63), "
        "so they are not used: leave out --model.image_size (or give the stored value) to use them, or give normal "
        "images of 'grain_plank' to calibrate again."
    )
    assert "image_size 64 (now 63)" in caplog.text


def test_a_zero_shot_calibration_logs_no_reference_images(tiny_clip_path, mvtec_tree, caplog):
    """Item 14 of issue 33: no "0 reference image(s) ()" line; the calibration line lists its images."""
    module = tiny_module(tiny_clip_path, false_alarm_rate=0.25, calibration_images=3, class_name="tile_a",
                         few_shot_source=str(mvtec_tree / "tile_a" / "train" / "good"))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        prepare_references(module.model, module.settings, ["loose/part.png"], class_names_of=module.class_names_of,
                           transform=module.pre_processor.transform, datamodule=None, folder=None)  # fmt: skip
    assert "reference image(s)" not in caplog.text
    assert "calibrated on 3 normal image(s)" in caplog.text
