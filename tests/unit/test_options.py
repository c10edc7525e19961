# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Where each scoring option comes from: the command line, the trained head's checkpoint, or the paper."""

import logging

import pytest
import torch

from anomalib_bayes_pfl.model.options import AUTO, PAPER_DEFAULTS, resolve_options, stored_options

UNSET = {name: AUTO if name == "clip_pretrained" else None for name in PAPER_DEFAULTS}
STORED = {**PAPER_DEFAULTS, "clip_pretrained": "/old/ViT-L-14-336px.pt", "image_size": 64, "num_prompts": 2}


def test_unset_options_come_from_the_checkpoint_then_the_paper():
    assert resolve_options(UNSET, None, "nothing") == PAPER_DEFAULTS
    resolved = resolve_options(UNSET, {"image_size": 64, "tap_layers": (1, 2)}, "ckpt")
    assert (resolved["image_size"], resolved["tap_layers"], resolved["num_samples"]) == (64, [1, 2], 10)


def test_a_moved_weights_file_is_applied_with_both_values_named(caplog):
    given = {**UNSET, "clip_pretrained": "/new/ViT-L-14-336px.pt", "num_samples": 10}
    with caplog.at_level(logging.WARNING):
        resolved = resolve_options(given, STORED, "checkpoint x.ckpt")
    assert resolved["clip_pretrained"] == "/new/ViT-L-14-336px.pt"
    assert resolved["image_size"] == 64
    assert "'/new/ViT-L-14-336px.pt' from the command line instead of '/old/ViT-L-14-336px.pt'" in caplog.text
    assert "num_samples" not in caplog.text  # equal to the stored value: nothing to say


def test_options_that_shape_the_head_are_refused_with_both_values():
    with pytest.raises(ValueError, match=r"num_prompts: 2 there, 3 given"):
        resolve_options({**UNSET, "num_prompts": 3}, STORED, "checkpoint x.ckpt")


def test_stored_options_of_checkpoints_and_other_files(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": {"image_size": 64}, "state_dict": {}}, checkpoint)
    assert stored_options(str(checkpoint)) == {"image_size": 64}
    authors = tmp_path / "train_visa.pth"
    torch.save({"MyModel": {}}, authors)
    assert stored_options(str(authors)) is None
    picture = tmp_path / "photo.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match=r"photo.png is not a checkpoint: it is a PNG image. Pass the model.ckpt that"):
        stored_options(str(picture))


def test_review_is_switched_off_by_zero_and_report_options_are_replaced_without_a_warning(caplog):
    """A checkpoint that stores a review share or a measure never forces them on a later run."""
    stored = {**PAPER_DEFAULTS, "review_fraction": 0.2, "uncertainty": "mutual_information"}
    with caplog.at_level(logging.INFO):
        options = resolve_options({"review_fraction": 0.0, "uncertainty": "std"}, stored, "checkpoint c.ckpt")
    assert (options["review_fraction"], options["uncertainty"]) == (0.0, "std")
    assert "review_fraction: using 0.0 from the command line instead of 0.2 stored in checkpoint c.ckpt" in caplog.text
    assert all(record.levelno == logging.INFO for record in caplog.records)
    assert resolve_options({}, stored, "checkpoint c.ckpt")["review_fraction"] == 0.2
    assert PAPER_DEFAULTS["review_fraction"] == 0.0  # no review unless asked for
