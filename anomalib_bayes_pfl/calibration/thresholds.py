# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Which thresholds label an image, which class name an exported model scores, and when stored references serve.

One home for each rule: an image's thresholds are its category's calibrated ones when the run calibrates and the
category has them, else the options' fixed ones; its review threshold, with ``review_rate``, is its category's
calibrated one; an exported model scores its ``class_name``, else the one category the head stores references or
thresholds for, else ``object``.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from anomalib_bayes_pfl.data.class_names import DEFAULT_CLASS_NAME
from anomalib_bayes_pfl.model.references import ReferenceMemory
from anomalib_bayes_pfl.settings import BayesPFLSettings


class Thresholds(NamedTuple):
    """Each image's thresholds, ``(N,)`` float64.

    Attributes:
        image: Above it, the image probability labels the image anomalous.
        pixel: Above it, a pixel of the anomaly map is labelled anomalous.
        review: Above it, the image uncertainty marks the image ``needs_review`` (NaN where its category has not
            been calibrated yet); ``None`` without ``review_rate``.
    """

    image: torch.Tensor
    pixel: torch.Tensor
    review: torch.Tensor | None


def thresholds_of(
    references: ReferenceMemory | None, settings: BayesPFLSettings, class_names: Sequence[str]
) -> Thresholds:
    """The thresholds of each class name: its calibrated ones, else the options'.

    Args:
        references: The head's stored references and thresholds (``None`` before the head is built).
        settings: The run's options.
        class_names: One class name per image.
    """
    fixed = (settings.image_threshold, settings.pixel_threshold)
    stored = [references.get(name) if references is not None else None for name in class_names]
    pairs = [
        (category.image_threshold, category.pixel_threshold)
        if settings.false_alarm_rate is not None and category is not None and category.image_threshold is not None
        else fixed
        for category in stored
    ]
    image, pixel = torch.tensor(pairs, dtype=torch.float64).reshape(-1, 2).unbind(dim=1)
    if settings.review_rate is None:
        return Thresholds(image, pixel, None)
    review = [category.review_threshold if category is not None else None for category in stored]
    review = torch.tensor([float("nan") if value is None else value for value in review], dtype=torch.float64)
    return Thresholds(image, pixel, review)


def export_class_name(references: ReferenceMemory | None, settings: BayesPFLSettings) -> str:
    """What an exported model's prompts say.

    The class name; else the one category the head stores references or calibrated thresholds for (a few-shot
    checkpoint of one part); else ``"object"``.
    """
    if settings.class_name is not None:
        return settings.class_name
    stored = list(references.categories) if references is not None else []
    return stored[0] if len(stored) == 1 else DEFAULT_CLASS_NAME


def reference_settings(settings: BayesPFLSettings) -> dict[str, Any]:
    """The options that a category's stored references and thresholds must have been made under to be reused.

    The source folder counts only when it is given now: a checkpoint's references serve without it.
    """
    names = ["k_shot", "eval_seed", "image_size"]
    if settings.calibrates:
        names += ["calibration_images", "false_alarm_confidence"]
    if settings.false_alarm_rate is not None:
        names += ["false_alarm_rate"]
    if settings.review_rate is not None:
        names += ["review_rate", "uncertainty"]
    stored = {name: getattr(settings, name) for name in names}
    if "few_shot_source" in settings.given and settings.few_shot_source is not None:
        stored["few_shot_source"] = str(Path(settings.few_shot_source).expanduser().resolve())
    return stored
