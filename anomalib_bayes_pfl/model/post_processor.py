# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The home of BayesPFL's thresholds: fixed probability thresholds, or conformal ones with a known false-alarm rate.

Scores are already probabilities, so there is no normalisation (min-max normalisation would also clamp scores
outside the validation range and tie them), and the thresholds are options of the run or statistics of a few normal
images of the category, never of its test data. anomalib's post-processor without normalisation labels a score
``s`` anomalous when ``s > 1 - sensitivity``: the sensitivity is set from the threshold.

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
from anomalib.data import Batch
from anomalib.post_processing import PostProcessor

from .options import PAPER_DEFAULTS


def minimum_calibration_images(false_alarm_rate: float) -> int:
    """The fewest calibration images for which a conformal threshold at ``false_alarm_rate`` exists."""
    return math.ceil(1 / false_alarm_rate - 1 - 1e-9)


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


class ProbabilityPostProcessor(PostProcessor):
    """Label images and pixels whose abnormal probability exceeds ``image_threshold`` / ``pixel_threshold``."""

    def __init__(
        self,
        image_threshold: float = PAPER_DEFAULTS["image_threshold"],
        pixel_threshold: float = PAPER_DEFAULTS["pixel_threshold"],
    ) -> None:
        super().__init__(enable_normalization=False)
        self.set_thresholds(image_threshold, pixel_threshold)

    def set_thresholds(self, image_threshold: float, pixel_threshold: float) -> None:
        """Label with these thresholds from now on (a loaded checkpoint or the command line supplies them)."""
        for name, value in (("image_threshold", image_threshold), ("pixel_threshold", pixel_threshold)):
            if not 0.0 < value < 1.0:
                msg = f"{name} is a probability threshold in (0, 1), got {value}."
                raise ValueError(msg)
        self.image_sensitivity = 1.0 - image_threshold
        self.pixel_sensitivity = 1.0 - pixel_threshold

    @property
    def thresholds(self) -> tuple[float, float]:
        """The image and pixel thresholds in use."""
        return 1.0 - self.image_sensitivity, 1.0 - self.pixel_sensitivity

    @staticmethod
    def label(batch: Batch, image_thresholds: torch.Tensor, pixel_thresholds: torch.Tensor) -> None:
        """Label each image of ``batch`` with its own (its category's) thresholds ``(N,)``.

        anomalib's thresholding then keeps these labels.
        """
        batch.pred_label = batch.pred_score > image_thresholds.to(batch.pred_score)
        batch.pred_mask = batch.anomaly_map > pixel_thresholds.to(batch.anomaly_map).view(-1, 1, 1)
