# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Thresholds with a known rate on normal parts, from a few normal calibration images of each category.

A rate alpha (``false_alarm_rate`` for the image score, ``review_rate`` for the image uncertainty) is calibrated on
the values of n normal calibration images of a category that are not its references. The threshold is the k-th
smallest of them, and a further normal image of the category (exchangeable with the calibration images) is flagged
when its value is strictly above it. Two promises, two ranks k (Angelopoulos & Bates, "A Gentle Introduction to
Conformal Prediction", 2021; Vovk, "Conditional Validity of Inductive Conformal Predictors", ACML 2012):

- Marginal (split conformal, the default): ``k = ceil((n + 1)(1 - alpha))``. Averaged over the draw of the
  calibration images, a further normal image is flagged with probability at most alpha. The rate of one shipped
  threshold varies around that (about Beta(n + 1 - k, k), so with n = 32 and alpha = 0.1 about one threshold in
  five flags more than 0.13 of normal parts).
- Training-conditional (``false_alarm_confidence`` = delta): the smallest k with ``P(Binomial(n, 1 - alpha) <= k - 1)
  >= delta``. With probability at least delta over the draw of the calibration images, the threshold that is shipped
  flags at most a share alpha of normal parts: its rate is ``1 - F(t_k)`` and ``F(t_k)`` is the k-th of n uniform
  order statistics, which is below ``1 - alpha`` exactly when at least k of the n values are. It exists when
  ``(1 - alpha)^n <= 1 - delta``, that is from ``n = ceil(log(1 - delta) / log(1 - alpha))`` images on.

Both hold for continuous values and are conservative with ties. The pixel threshold is marginal only: pixels of one
image are not exchangeable, images are. Conformal risk control (Angelopoulos et al., "Conformal Risk Control", ICLR
2024) on each image's share of pixels above the threshold takes the smallest threshold with ``(n * mean share + 1) /
(n + 1) <= alpha``; then the expected share of flagged pixels on a further normal image is at most alpha.
"""

import math

import torch
from scipy.stats import binom

from anomalib_bayes_pfl.settings import BayesPFLSettings


def threshold_rank(count: int, rate: float, confidence: float | None = None) -> int | None:
    """The rank (1-based, ascending) of the calibration value that is the threshold, or ``None`` if none serves."""
    if confidence is None:
        rank = math.ceil((count + 1) * (1 - rate) - 1e-9)
        return rank if rank <= count else None
    ranks = torch.arange(1, count + 1, dtype=torch.float64)
    held = torch.from_numpy(binom.cdf(ranks.numpy() - 1, count, 1 - rate)) >= confidence - 1e-12
    return int(ranks[held][0]) if held.any() else None


def minimum_calibration_images(rate: float, confidence: float | None = None) -> int:
    """The fewest calibration images for which a threshold at ``rate`` (with ``confidence``) exists."""
    if confidence is None:
        return math.ceil(1 / rate - 1 - 1e-9)
    count = max(1, math.ceil(math.log(1 - confidence) / math.log(1 - rate) - 1e-9))
    while threshold_rank(count, rate, confidence) is None:  # rounding of the logarithms
        count += 1
    return count


def promise(name: str, rate: float, confidence: float | None) -> str:
    """The promise in words, as messages name it: ``a false-alarm rate of 0.1 with confidence 0.9``."""
    return f"a {name} of {rate}" + (f" with confidence {confidence}" if confidence is not None else "")


def calibrated_rates(settings: BayesPFLSettings) -> dict[str, float]:
    """The rates a run calibrates, by the name messages give them."""
    rates = {"false-alarm rate": settings.false_alarm_rate, "review rate": settings.review_rate}
    return {name: rate for name, rate in rates.items() if rate is not None}


def fewest_calibration_images(settings: BayesPFLSettings) -> int:
    """The fewest calibration images that serve every rate the run calibrates (the marginal pixel threshold's too)."""
    counts = [
        minimum_calibration_images(rate, settings.false_alarm_confidence)
        for rate in calibrated_rates(settings).values()
    ]
    if settings.false_alarm_rate is not None:
        counts.append(minimum_calibration_images(settings.false_alarm_rate))
    return max(counts, default=0)


def check_calibration(settings: BayesPFLSettings) -> None:
    """Refuse rates that the run's calibration images cannot reach, before anything is scored."""
    needed = fewest_calibration_images(settings)
    if settings.calibration_images < needed:
        confidence = settings.false_alarm_confidence
        promises = " and ".join(promise(name, rate, confidence) for name, rate in calibrated_rates(settings).items())
        msg = (
            f"{promises} need{'s' if ' and ' not in promises else ''} at least {needed} calibration images per "
            f"category, got calibration_images={settings.calibration_images}; pass --model.calibration_images "
            f"{needed} (or more), or raise the rate{' or lower the confidence' if confidence is not None else ''}."
        )
        raise ValueError(msg)


def conformal_threshold(
    values: torch.Tensor, rate: float, confidence: float | None = None, name: str = "false-alarm rate"
) -> float:
    """The threshold on the values ``(n,)`` of normal calibration images (image scores or uncertainties).

    Raises:
        ValueError: If the n values are too few for ``rate`` (and ``confidence``), naming the fewest that serve.
    """
    count = values.numel()
    rank = threshold_rank(count, rate, confidence)
    if rank is None:
        raise _too_few(count, rate, confidence, name)
    return float(values.flatten().sort().values[rank - 1])


def conformal_pixel_threshold(maps: torch.Tensor, false_alarm_rate: float) -> float:
    """Risk-controlling threshold on the anomaly maps ``(n, H, W)`` of normal calibration images.

    All maps have the same size, so the mean share of flagged pixels is the share among all their pixels: the
    threshold is the value above which at most ``((n + 1) * alpha - 1) / n`` of them lie.
    """
    count = maps.shape[0]
    if threshold_rank(count, false_alarm_rate) is None:
        raise _too_few(count, false_alarm_rate, None, "false-alarm rate")
    allowed_share = ((count + 1) * false_alarm_rate - 1) / count
    values = maps.flatten()
    rank = values.numel() - math.floor(allowed_share * values.numel() + 1e-9)
    return float(values.kthvalue(max(rank, 1)).values)


def _too_few(count: int, rate: float, confidence: float | None, name: str) -> ValueError:
    needed = minimum_calibration_images(rate, confidence)
    return ValueError(
        f"{promise(name, rate, confidence)} needs at least {needed} normal calibration images per category, got "
        f"{count}; raise --model.calibration_images (and give that many more normal images) or the rate."
    )
