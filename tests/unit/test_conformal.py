# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Calibrated thresholds keep their promise on held-out normal images of the model's own scores.

The scores are those of the tiny model (with a 2-shot memory) on 120 normal images of one synthetic category. Over
many random calibration / held-out splits of them, the mean false-alarm rate is at most alpha plus the Monte-Carlo
tolerance, and not far below what the rule allows either (the thresholds are not vacuous), for alpha = 0.05 and 0.1.
``pytest tests/unit/test_conformal.py -s`` prints the measured rates.
"""

import math

import pytest
import torch
from anomalib.data.utils import read_image

from anomalib_bayes_pfl.calibration.conformal import (
    conformal_image_threshold,
    conformal_pixel_threshold,
    minimum_calibration_images,
)
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.model.references import CategoryReferences, memory_tokens

SPLITS = 2000
# Five standard errors of a mean of 2000 splits, whose per-split false-alarm rate has a standard deviation below 0.05.
TOLERANCE = 5 * 0.05 / math.sqrt(SPLITS)


@pytest.fixture(scope="module")
def normal_scores(tmp_path_factory, tiny_clip):
    """Image scores (120,) and anomaly maps (120, 64, 64) of normal images, from a 2-shot tiny model."""
    from anomalib_bayes_pfl.model import BayesPFLModel

    from ..helpers import tiny_config

    tree = write_tree(tmp_path_factory.mktemp("normals"), ["tile"], num_train=122, num_test_good=1, num_test_defect=1)
    paths = sorted((tree / "tile" / "train" / "good").iterdir())
    images = torch.stack([read_image(path, as_tensor=True) for path in paths])
    images = (images - 0.45) / 0.27
    torch.manual_seed(0)
    model = BayesPFLModel(tiny_config(), tiny_clip).eval()
    model.references.set("tile", CategoryReferences(memory_tokens(model.encode_images(images[:2]).patch_tokens), {}))
    model.few_shot = True
    scores = model.score(images[2:], ["tile"] * 120)
    return scores.pred_score, scores.anomaly_map


@pytest.mark.parametrize(("alpha", "count"), [(0.05, 19), (0.05, 39), (0.1, 9), (0.1, 29)])
def test_image_threshold_bounds_the_false_alarm_rate_of_held_out_normal_images(normal_scores, alpha, count):
    scores = normal_scores[0]
    generator = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(SPLITS):
        order = torch.randperm(len(scores), generator=generator)
        threshold = conformal_image_threshold(scores[order[:count]], alpha)
        rates.append(float((scores[order[count:]] > threshold).float().mean()))
    mean_rate = sum(rates) / SPLITS
    print(f"image: alpha {alpha}, {count} calibration images: mean held-out false-alarm rate {mean_rate:.4f}")
    # Conformal prediction: the held-out rate is at most alpha, and at least alpha - 1/(count + 1), in expectation.
    assert mean_rate <= alpha + TOLERANCE
    assert mean_rate >= alpha - 1 / (count + 1) - TOLERANCE


@pytest.mark.parametrize(("alpha", "count"), [(0.05, 19), (0.05, 59), (0.1, 9), (0.1, 29)])
def test_pixel_threshold_bounds_the_share_of_flagged_pixels_of_held_out_normal_images(normal_scores, alpha, count):
    maps = normal_scores[1]
    generator = torch.Generator().manual_seed(1)
    rates = []
    for _ in range(SPLITS // 4):  # each split flags ~4000 pixels per held-out image: less Monte-Carlo noise
        order = torch.randperm(len(maps), generator=generator)
        threshold = conformal_pixel_threshold(maps[order[:count]], alpha)
        rates.append(float((maps[order[count:]] > threshold).float().mean()))
    mean_rate = sum(rates) / len(rates)
    print(f"pixel: alpha {alpha}, {count} calibration images: mean held-out share of flagged pixels {mean_rate:.4f}")
    assert mean_rate <= alpha + TOLERANCE
    # Risk control allows a share ((count + 1) * alpha - 1) / count of the calibration pixels above the threshold
    # (0 at the fewest images: then it is their maximum); held-out images come close to it.
    allowed_share = ((count + 1) * alpha - 1) / count
    assert mean_rate >= allowed_share / 2


def test_the_image_threshold_is_the_conformal_order_statistic():
    scores = torch.arange(1, 20, dtype=torch.float32) / 20  # 19 scores: rank ceil(20 * 0.95) = 19, the largest
    assert conformal_image_threshold(scores, 0.05) == pytest.approx(0.95)
    assert conformal_image_threshold(scores, 0.2) == pytest.approx(0.8)  # rank ceil(20 * 0.8) = 16


def test_too_few_calibration_images_are_refused_with_the_count_needed():
    assert minimum_calibration_images(0.05) == 19
    assert minimum_calibration_images(0.1) == 9
    with pytest.raises(ValueError, match=r"needs at least 19 normal calibration images per category, got 10"):
        conformal_image_threshold(torch.rand(10), 0.05)
    with pytest.raises(ValueError, match=r"needs at least 9"):
        conformal_pixel_threshold(torch.rand(5, 4, 4), 0.1)
