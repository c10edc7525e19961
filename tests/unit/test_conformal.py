# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Calibrated thresholds keep their promise on held-out normal images.

The model's own scores: those of the tiny model (with a 2-shot memory) on 120 normal images of one synthetic category.
Over many random calibration / held-out splits of them, the mean false-alarm rate is at most alpha plus the
Monte-Carlo tolerance, and not far below what the rule allows either (the thresholds are not vacuous), for alpha =
0.05 and 0.1.

Both promises, against the whole population: a pool of 200,000 values (image scores, and uncertainties with ties)
stands for every normal part; 2000 times, n calibration values are drawn from it, and the rate of their threshold is
the share of the pool above it. The marginal rule's mean rate is at most alpha; the training-conditional rule's rate
exceeds alpha in at most a share 1 - delta of the draws. A plain empirical quantile breaks each promise in the same
test. ``pytest tests/unit/test_conformal.py -s`` prints the measured rates.
"""

import math

import pytest
import torch
from anomalib.data.utils import read_image

from anomalib_bayes_pfl.calibration.conformal import (
    conformal_pixel_threshold,
    conformal_threshold,
    minimum_calibration_images,
    threshold_rank,
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
        threshold = conformal_threshold(scores[order[:count]], alpha)
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
    assert conformal_threshold(scores, 0.05) == pytest.approx(0.95)
    assert conformal_threshold(scores, 0.2) == pytest.approx(0.8)  # rank ceil(20 * 0.8) = 16


def test_too_few_calibration_images_are_refused_with_the_count_needed():
    assert minimum_calibration_images(0.05) == 19
    assert minimum_calibration_images(0.1) == 9
    # ceil(log(1 - delta) / log(1 - alpha)): (1 - alpha)^n <= 1 - delta from there on, not before.
    assert minimum_calibration_images(0.1, 0.9) == 22
    assert minimum_calibration_images(0.05, 0.9) == 45
    assert 0.9**21 > 0.1 >= 0.9**22
    with pytest.raises(ValueError, match=r"needs at least 19 normal calibration images per category, got 10"):
        conformal_threshold(torch.rand(10), 0.05)
    with pytest.raises(ValueError, match=r"needs at least 9"):
        conformal_pixel_threshold(torch.rand(5, 4, 4), 0.1)
    with pytest.raises(ValueError, match=r"review rate of 0.1 with confidence 0.9 needs at least 22 normal.*got 21"):
        conformal_threshold(torch.rand(21), 0.1, 0.9, "review rate")


def test_the_conditional_rank_is_the_smallest_with_a_binomial_tail_of_delta():
    from scipy.stats import binom

    for count, alpha, delta in [(22, 0.1, 0.9), (32, 0.1, 0.9), (100, 0.1, 0.9), (200, 0.05, 0.95)]:
        rank = threshold_rank(count, alpha, delta)
        assert binom.cdf(rank - 1, count, 1 - alpha) >= delta > binom.cdf(rank - 2, count, 1 - alpha)
    assert threshold_rank(32, 0.1, 0.9) == 32  # the default 32 images: their maximum
    assert threshold_rank(100, 0.1, 0.9) == 95
    assert threshold_rank(100, 0.1) == 91  # marginal: ceil(101 * 0.9)


POOL = 200_000


def _pool(kind: str) -> torch.Tensor:
    """Values of normal images: continuous probabilities, or uncertainties that are often exactly zero (ties)."""
    generator = torch.Generator().manual_seed(3)
    if kind == "image scores":
        return torch.sigmoid(torch.randn(POOL, generator=generator, dtype=torch.float64) - 2)
    values = torch.rand(POOL, generator=generator, dtype=torch.float64) ** 3 / 2
    return torch.where(torch.rand(POOL, generator=generator) < 0.3, 0.0, values)


def _held_out_rates(pool: torch.Tensor, count: int, threshold_of) -> torch.Tensor:
    """The share of the pool above the threshold of each of 2000 draws of ``count`` calibration values from it."""
    draws = pool[torch.randint(POOL, (SPLITS, count), generator=torch.Generator().manual_seed(4))]
    thresholds = torch.tensor([threshold_of(values) for values in draws], dtype=pool.dtype)
    return (POOL - torch.searchsorted(pool.sort().values, thresholds, right=True)).double() / POOL


def _empirical_quantile(values: torch.Tensor, alpha: float) -> float:
    return float(torch.quantile(values, 1 - alpha))


@pytest.mark.parametrize("kind", ["image scores", "uncertainties"])
@pytest.mark.parametrize(("alpha", "count"), [(0.1, 32), (0.05, 60)])
def test_the_marginal_rule_bounds_the_mean_held_out_rate(kind, alpha, count):
    pool = _pool(kind)
    rates = _held_out_rates(pool, count, lambda values: conformal_threshold(values, alpha))
    empirical = _held_out_rates(pool, count, lambda values: _empirical_quantile(values, alpha))
    print(f"{kind}, alpha {alpha}, n {count}: mean held-out rate {rates.mean():.4f}, empirical {empirical.mean():.4f}")
    assert rates.mean() <= alpha + TOLERANCE
    assert empirical.mean() > alpha + TOLERANCE  # the test tells the two apart


# Three standard errors of a share near 1 - delta = 0.1 over 2000 splits.
SHARE_TOLERANCE = 3 * math.sqrt(0.1 * 0.9 / SPLITS)


@pytest.mark.parametrize("kind", ["image scores", "uncertainties"])
@pytest.mark.parametrize(("alpha", "delta", "count"), [(0.1, 0.9, 32), (0.1, 0.9, 100), (0.05, 0.9, 150)])
def test_the_conditional_rule_holds_for_the_threshold_shipped_with_confidence_delta(kind, alpha, delta, count):
    pool = _pool(kind)
    exceeded = (_held_out_rates(pool, count, lambda values: conformal_threshold(values, alpha, delta)) > alpha).double()
    marginal = (_held_out_rates(pool, count, lambda values: conformal_threshold(values, alpha)) > alpha).double()
    empirical = (_held_out_rates(pool, count, lambda values: _empirical_quantile(values, alpha)) > alpha).double()
    print(
        f"{kind}, alpha {alpha}, delta {delta}, n {count}: share of thresholds above alpha {exceeded.mean():.4f}, "
        f"marginal rule {marginal.mean():.4f}, empirical quantile {empirical.mean():.4f}"
    )
    assert exceeded.mean() <= 1 - delta + SHARE_TOLERANCE
    assert empirical.mean() > 1 - delta + SHARE_TOLERANCE  # the test tells the two apart
    assert marginal.mean() > 1 - delta + SHARE_TOLERANCE  # the average promise is not this one
