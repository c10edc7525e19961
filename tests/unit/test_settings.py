# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Where each scoring option comes from: the command line, the trained head's checkpoint, or the paper."""

import logging

import pytest
import torch

from anomalib_bayes_pfl.model.checkpoint_files import PROMPT_WEIGHTS, read_checkpoint
from anomalib_bayes_pfl.settings import AUTO, PAPER, PAPER_DEFAULTS, BayesPFLSettings

UNSET = {name: AUTO if name == "clip_pretrained" else None for name in BayesPFLSettings.option_names()}
STORED = {**PAPER_DEFAULTS, "clip_pretrained": "/old/ViT-L-14-336px.pt", "image_size": 64, "num_prompts": 2}


def test_unset_options_come_from_the_checkpoint_then_the_paper():
    assert BayesPFLSettings.resolve(UNSET) == BayesPFLSettings()
    resolved = BayesPFLSettings.resolve(UNSET, {"image_size": 64, "tap_layers": [1, 2]}, "ckpt")
    assert (resolved.image_size, resolved.tap_layers, resolved.num_samples) == (64, (1, 2), 10)
    assert (resolved.source_of("image_size"), resolved.source_of("num_samples")) == ("ckpt", "ckpt")
    assert BayesPFLSettings.resolve({**UNSET, "num_samples": 4}).source_of("num_samples") == "the command line"
    assert BayesPFLSettings.resolve(UNSET).source_of("num_samples") == PAPER
    assert resolved.hyperparameters()["tap_layers"] == [1, 2]  # plain lists, as checkpoints store them


def test_a_moved_weights_file_is_applied_with_both_values_named(caplog):
    given = {**UNSET, "clip_pretrained": "/new/ViT-L-14-336px.pt", "num_samples": 10}
    with caplog.at_level(logging.WARNING):
        resolved = BayesPFLSettings.resolve(given, STORED, "checkpoint x.ckpt")
    assert resolved.clip_pretrained == "/new/ViT-L-14-336px.pt"
    assert resolved.image_size == 64
    assert "'/new/ViT-L-14-336px.pt' from the command line instead of '/old/ViT-L-14-336px.pt'" in caplog.text
    assert "num_samples" not in caplog.text  # equal to the stored value: nothing to say


def test_options_that_shape_the_head_are_refused_with_both_values():
    with pytest.raises(ValueError, match=r"num_prompts: 2 there, 3 given"):
        BayesPFLSettings.resolve({**UNSET, "num_prompts": 3}, STORED, "checkpoint x.ckpt")


def test_fixed_thresholds_given_with_a_calibrated_checkpoint_label_instead(caplog):
    stored = {**PAPER_DEFAULTS, "false_alarm_rate": 0.1}
    with caplog.at_level(logging.WARNING):
        resolved = BayesPFLSettings.resolve({**UNSET, "image_threshold": 0.3}, stored, "checkpoint c.ckpt")
    assert (resolved.image_threshold, resolved.false_alarm_rate) == (0.3, None)
    assert "labelling with fixed thresholds, not with the thresholds calibrated for a false-alarm rate" in caplog.text
    both = BayesPFLSettings.resolve({**UNSET, "image_threshold": 0.3, "false_alarm_rate": 0.1})
    with pytest.raises(ValueError, match=r"--model.image_threshold and --model.false_alarm_rate 0.1 cannot both"):
        both.check_labels()


def test_checkpoint_files_and_other_files(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": {"image_size": 64}, "state_dict": {}}, checkpoint)
    assert read_checkpoint(checkpoint, "--model.prompt_weights", PROMPT_WEIGHTS)["hyper_parameters"] == {
        "image_size": 64
    }
    picture = tmp_path / "photo.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"photo.png is not a checkpoint: it is a PNG image. Pass the model.ckpt that"):
        read_checkpoint(picture, "--model.prompt_weights", PROMPT_WEIGHTS)
    with pytest.raises(FileNotFoundError, match=r"--model.prompt_weights .*missing.ckpt does not exist. Pass the"):
        read_checkpoint(tmp_path / "missing.ckpt", "--model.prompt_weights", PROMPT_WEIGHTS)


def test_review_is_switched_off_by_zero_and_report_options_are_replaced_without_a_warning(caplog):
    """A checkpoint that stores a review share or a measure never forces them on a later run."""
    stored = {**PAPER_DEFAULTS, "review_fraction": 0.2, "uncertainty": "mutual_information"}
    given = {**UNSET, "review_fraction": 0.0, "uncertainty": "std"}
    with caplog.at_level(logging.INFO):
        resolved = BayesPFLSettings.resolve(given, stored, "checkpoint c.ckpt")
    assert (resolved.review_fraction, resolved.uncertainty) == (0.0, "std")
    assert "review_fraction: using 0.0 from the command line instead of 0.2 stored in checkpoint c.ckpt" in caplog.text
    assert all(record.levelno == logging.INFO for record in caplog.records)
    assert BayesPFLSettings.resolve(UNSET, stored, "checkpoint c.ckpt").review_fraction == 0.2
    assert not resolved.differs_in_scores_from(BayesPFLSettings.resolve(UNSET, stored, "c"))  # nothing to rebuild


def test_values_out_of_range_are_refused_by_name():
    for name, value in (("k_shot", -1), ("false_alarm_rate", 1.0), ("review_fraction", 1.0), ("uncertainty", "x")):
        with pytest.raises(ValueError, match=name):
            BayesPFLSettings.resolve({**UNSET, name: value})


def test_one_review_rule_at_a_time_and_a_confidence_needs_a_rate(caplog):
    """review_rate (per part) and review_fraction (a share of a run) cannot both mark; one given replaces the other
    stored with a head; a confidence with nothing calibrated would change nothing, so it is refused."""
    both = BayesPFLSettings.resolve({**UNSET, "review_rate": 0.1, "review_fraction": 0.2})
    with pytest.raises(ValueError, match=r"--model.review_rate 0.1 .*--model.review_fraction 0.2 .*cannot both mark"):
        both.check_labels()
    stored = {**PAPER_DEFAULTS, "review_fraction": 0.2}
    with caplog.at_level(logging.INFO, logger="anomalib_bayes_pfl"):
        resolved = BayesPFLSettings.resolve({**UNSET, "review_rate": 0.1}, stored, "checkpoint c.ckpt")
    assert (resolved.review_rate, resolved.review_fraction) == (0.1, 0.0)
    resolved.check_labels()
    assert "the review_fraction stored with the head is not used" in caplog.text
    stored = {**PAPER_DEFAULTS, "review_rate": 0.1}
    resolved = BayesPFLSettings.resolve({**UNSET, "review_fraction": 0.2}, stored, "checkpoint c.ckpt")
    assert (resolved.review_rate, resolved.review_fraction) == (None, 0.2)
    alone = BayesPFLSettings.resolve({**UNSET, "false_alarm_confidence": 0.9})
    with pytest.raises(ValueError, match=r"false_alarm_confidence 0.9 holds for a calibrated rate: add"):
        alone.check_labels()
    with pytest.raises(ValueError, match=r"review_rate must be a number in \(0, 1\), got 1.5"):
        BayesPFLSettings(review_rate=1.5)


def test_too_few_calibration_images_for_a_confidence_are_refused_before_scoring():
    from anomalib_bayes_pfl.calibration import check_calibration

    settings = BayesPFLSettings(review_rate=0.1, false_alarm_confidence=0.9, calibration_images=21)
    with pytest.raises(ValueError, match=r"review rate of 0.1 with confidence 0.9 needs at least 22 calibration .*"
                       r"pass --model.calibration_images 22"):  # fmt: skip
        check_calibration(settings)
    check_calibration(BayesPFLSettings(review_rate=0.1, false_alarm_confidence=0.9, calibration_images=22))
