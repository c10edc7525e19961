# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The home of BayesPFL's thresholds: labels are the trained head's probabilities above fixed thresholds.

Scores are already probabilities, so there is no normalisation (min-max normalisation would also clamp scores
outside the validation range and tie them), and the thresholds are options of the run, not statistics of its
validation data. anomalib's post-processor without normalisation labels a score ``s`` anomalous when
``s > 1 - sensitivity``: the sensitivity is set from the threshold.
"""

from anomalib.post_processing import PostProcessor

from .options import PAPER_DEFAULTS


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
