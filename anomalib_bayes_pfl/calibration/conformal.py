# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Thresholds with a known false-alarm rate, from the scores of a few normal calibration images.

Calibrated thresholds (``false_alarm_rate`` = alpha, on n normal calibration images of a category that are not its
references; Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction", 2021):

- Image: split conformal. The threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest calibration score, so a
  further normal image of the category, exchangeable with the calibration images, scores above it with probability
  at most alpha.
- Pixel: pixels of one image are not exchangeable, images are. Conformal risk control (Angelopoulos et al.,
  "Conformal Risk Control", ICLR 2024) on each image's share of pixels above the threshold: the smallest threshold
  with ``(n * mean share + 1) / (n + 1) <= alpha``. Then the expected share of flagged pixels on a further normal
  image is at most alpha.
"""

import math

import torch

from anomalib_bayes_pfl.settings import BayesPFLSettings


def minimum_calibration_images(false_alarm_rate: float) -> int:
    """The fewest calibration images for which a conformal threshold at ``false_alarm_rate`` exists."""
    return math.ceil(1 / false_alarm_rate - 1 - 1e-9)


def check_calibration(settings: BayesPFLSettings) -> None:
    """Refuse a false-alarm rate that the run's calibration images cannot reach, before anything is scored."""
    rate = settings.false_alarm_rate
    if rate is not None and settings.calibration_images < minimum_calibration_images(rate):
        msg = (
            f"a false-alarm rate of {rate} needs at least {minimum_calibration_images(rate)} calibration images per "
            f"category, got calibration_images={settings.calibration_images}; raise it or the false-alarm rate."
        )
        raise ValueError(msg)


def _check_count(count: int, false_alarm_rate: float) -> None:
    needed = minimum_calibration_images(false_alarm_rate)
    if count < needed:
        msg = (
            f"a false-alarm rate of {false_alarm_rate} needs at least {needed} normal calibration images per "
            f"category, got {count}; raise --model.calibration_images (and give that many more normal images) or "
            f"the false-alarm rate."
        )
        raise ValueError(msg)


def conformal_image_threshold(scores: torch.Tensor, false_alarm_rate: float) -> float:
    """Split-conformal threshold on the image scores ``(n,)`` of normal calibration images."""
    count = scores.numel()
    _check_count(count, false_alarm_rate)
    rank = math.ceil((count + 1) * (1 - false_alarm_rate) - 1e-9)
    return float(scores.flatten().sort().values[rank - 1])


def conformal_pixel_threshold(maps: torch.Tensor, false_alarm_rate: float) -> float:
    """Risk-controlling threshold on the anomaly maps ``(n, H, W)`` of normal calibration images.

    All maps have the same size, so the mean share of flagged pixels is the share among all their pixels: the
    threshold is the value above which at most ``((n + 1) * alpha - 1) / n`` of them lie.
    """
    count = maps.shape[0]
    _check_count(count, false_alarm_rate)
    allowed_share = ((count + 1) * false_alarm_rate - 1) / count
    values = maps.flatten()
    rank = values.numel() - math.floor(allowed_share * values.numel() + 1e-9)
    return float(values.kthvalue(max(rank, 1)).values)
