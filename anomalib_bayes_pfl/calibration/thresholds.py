# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Which thresholds label an image, which class name an exported model scores, and when stored references serve.

One home for each rule: an image's thresholds are its category's calibrated ones when the run calibrates and the
category has them, else the options' fixed ones; an exported model scores its ``class_name``, else the one category the
head stores references or thresholds for, else ``object``.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anomalib_bayes_pfl.data.class_names import DEFAULT_CLASS_NAME
from anomalib_bayes_pfl.model.references import ReferenceMemory
from anomalib_bayes_pfl.settings import BayesPFLSettings


def thresholds_of(
    references: ReferenceMemory | None, settings: BayesPFLSettings, class_names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and pixel threshold ``(N,)`` of each class name: its calibrated ones, else the options'.

    Args:
        references: The head's stored references and thresholds (``None`` before the head is built).
        settings: The run's options.
        class_names: One class name per image.
    """
    fixed = (settings.image_threshold, settings.pixel_threshold)
    calibrated = settings.false_alarm_rate is not None and references is not None
    pairs = []
    for name in class_names:
        stored = references.get(name) if calibrated else None
        has_thresholds = stored is not None and stored.image_threshold is not None
        pairs.append((stored.image_threshold, stored.pixel_threshold) if has_thresholds else fixed)
    image, pixel = torch.tensor(pairs, dtype=torch.float64).reshape(-1, 2).unbind(dim=1)
    return image, pixel


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
    if settings.false_alarm_rate is not None:
        names += ["false_alarm_rate", "calibration_images"]
    stored = {name: getattr(settings, name) for name in names}
    if "few_shot_source" in settings.given and settings.few_shot_source is not None:
        stored["few_shot_source"] = str(Path(settings.few_shot_source).expanduser().resolve())
    return stored
