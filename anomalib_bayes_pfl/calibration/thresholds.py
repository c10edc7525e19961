# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Which thresholds label an image, which class name an exported model scores, and when stored references serve.

One home for each rule: an image's thresholds are its class name's calibrated ones when the run calibrates (refused
where it has none), else the options' fixed ones; its review threshold, with ``review_rate``, is its class name's
calibrated one; an exported model scores the category an image without a path gets (``data/class_names.py``): its
``class_name``, else the one category the head stores references or thresholds for, else ``object``. References
and thresholds are stored and looked up by class name, the word in the prompts, as the few-shot memory is.
"""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from anomalib_bayes_pfl.data.class_names import fallback_category
from anomalib_bayes_pfl.model.references import ReferenceMemory
from anomalib_bayes_pfl.settings import BayesPFLSettings


class Thresholds(NamedTuple):
    """Each image's thresholds, ``(N,)`` float64.

    Attributes:
        image: Above it, the image probability labels the image anomalous (NaN, with ``false_alarm_rate``, where its
            class name has not been calibrated yet).
        pixel: Above it, a pixel of the anomaly map is labelled anomalous (NaN where ``image`` is).
        review: Above it, the image uncertainty marks the image ``needs_review`` (NaN where its class name has not
            been calibrated yet); ``None`` without ``review_rate``.
    """

    image: torch.Tensor
    pixel: torch.Tensor
    review: torch.Tensor | None


def thresholds_of(
    references: ReferenceMemory | None,
    settings: BayesPFLSettings,
    class_names: Sequence[str],
    *,
    validating: bool = False,
) -> Thresholds:
    """The thresholds of each class name: its calibrated ones when the run calibrates, else the options' fixed ones.

    A calibrating run never falls back to the fixed thresholds: a class name without calibrated ones gets NaN, and
    :func:`check_calibrated` refuses to label it. Before calibration has run, nothing is labelled with them. Validation
    in a fit precedes calibration (a test's), and its labels are never reported as the run's: it takes the fixed
    thresholds where none are calibrated, and marks nothing for review.

    Args:
        references: The head's stored references and thresholds (``None`` before the head is built).
        settings: The run's options.
        class_names: One class name per image.
        validating: Label for validation metrics (see above).
    """
    stored = [references.get(name) if references is not None else None for name in class_names]
    missing = (math.nan, math.nan) if settings.false_alarm_rate is not None and not validating else None
    pairs = [
        (category.image_threshold, category.pixel_threshold)
        if settings.false_alarm_rate is not None and category is not None and category.image_threshold is not None
        else missing or (settings.image_threshold, settings.pixel_threshold)
        for category in stored
    ]
    image, pixel = torch.tensor(pairs, dtype=torch.float64).reshape(-1, 2).unbind(dim=1)
    if settings.review_rate is None or validating:
        return Thresholds(image, pixel, None)
    review = [category.review_threshold if category is not None else None for category in stored]
    review = torch.tensor([math.nan if value is None else value for value in review], dtype=torch.float64)
    return Thresholds(image, pixel, review)


def uncalibrated(
    references: ReferenceMemory | None,
    class_names: Sequence[str],
    kind: Literal["image_threshold", "review_threshold"],
) -> list[str]:
    """The class names among ``class_names`` that have no calibrated ``kind`` threshold, sorted.

    Read from the stored values, never from threshold tensors, which may be fake while a graph is traced.
    """
    stored = {name: references.get(name) if references is not None else None for name in class_names}
    return sorted(name for name, category in stored.items() if category is None or getattr(category, kind) is None)


def check_calibrated(
    references: ReferenceMemory | None, settings: BayesPFLSettings, class_names: Sequence[str], *, review: bool
) -> None:
    """Refuse to label images whose class name lacks a threshold that the run calibrates.

    Args:
        references: The head's stored references and thresholds.
        settings: The run's options.
        class_names: One class name per image.
        review: Whether the images are marked for review (then ``review_rate``'s threshold is needed too).

    Raises:
        RuntimeError: Naming the class names, the rate and how to calibrate them.
    """
    rates = [("image", "false_alarm_rate", settings.false_alarm_rate)]
    rates += [("review", "review_rate", settings.review_rate)] if review else []
    for kind, option, rate in rates:
        missing = uncalibrated(references, class_names, f"{kind}_threshold") if rate is not None else []
        if missing:
            msg = (
                f"class names {missing} have no calibrated {kind} threshold, and --model.{option} {rate} labels each "
                f"image with its own. Calibrate them on their normal images (the datamodule's training split or "
                f"--model.few_shot_source), or leave out --model.{option}."
            )
            raise RuntimeError(msg)


def export_class_name(references: ReferenceMemory | None, settings: BayesPFLSettings) -> str:
    """What an exported model's prompts say: the category an image without a path gets in predict.

    The class name; else the one category the head stores references or calibrated thresholds for (a few-shot
    checkpoint of one part); else ``"object"`` (:func:`~anomalib_bayes_pfl.data.class_names.fallback_category`).
    """
    stored = list(references.categories) if references is not None else []
    return fallback_category(settings.class_name, stored)[0]


class ExportThresholds(NamedTuple):
    """The class name an exported model scores, and the thresholds its post-processor labels it with."""

    class_name: str
    image: float
    pixel: float
    review: float | None


def export_thresholds(references: ReferenceMemory | None, settings: BayesPFLSettings) -> ExportThresholds:
    """The export's class name (:func:`export_class_name`) and its thresholds (:func:`thresholds_of`).

    A class name not calibrated (yet) gets the options' fixed thresholds here, which no export ships: the export
    refuses it (``deploy/export.py``).
    """
    name = export_class_name(references, settings)
    thresholds = thresholds_of(references, settings, [name])
    image, pixel = float(thresholds.image), float(thresholds.pixel)
    if math.isnan(image):
        image, pixel = settings.image_threshold, settings.pixel_threshold
    review = float(thresholds.review) if thresholds.review is not None else math.nan
    return ExportThresholds(name, image, pixel, None if math.isnan(review) else review)


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
