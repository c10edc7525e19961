# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The evaluation step (validation, test, predict): a batch of images in, the scored and labelled ``BayesPFLBatch`` out.

Each image's dataset, category, class name and thresholds are set here, once, for everything that reports on it. The
prompts, references and thresholds follow the class name; the authors' paper score, like the table, the category.
"""

import dataclasses

import torch
from anomalib.data import Batch
from torch import nn

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.calibration.post_processor import ProbabilityPostProcessor
from anomalib_bayes_pfl.calibration.thresholds import check_calibrated, thresholds_of
from anomalib_bayes_pfl.data.class_names import ImageCategory
from anomalib_bayes_pfl.model.scoring import paper_map_scores
from anomalib_bayes_pfl.model.torch_model import BayesPFLModel
from anomalib_bayes_pfl.settings import BayesPFLSettings


def score_and_label(
    batch: Batch,
    model: BayesPFLModel,
    settings: BayesPFLSettings,
    names: list[ImageCategory],
    post_processor: nn.Module | None,
    *,
    few_shot: bool = True,
    uncertainty: bool = True,
    validating: bool = False,
) -> BayesPFLBatch:
    """Score ``batch`` (pre-processed images) with each image's class name and label it with its thresholds.

    Args:
        batch: The batch to score.
        model: The torch model.
        settings: The run's options.
        names: Each image's dataset, category and class name.
        post_processor: BayesPFL's post-processor labels the images; another one is left to anomalib.
        few_shot: Fuse the references' memory, where the model has one.
        uncertainty: Measure the prompt samples' disagreement (``settings.uncertainty``).
        validating: Label for a fit's validation metrics, which precede calibration (``thresholds_of``).
    """
    class_names = [name.class_name for name in names]
    thresholds = thresholds_of(model.references, settings, class_names, validating=validating)
    reviews = uncertainty and thresholds.review is not None
    if not validating:
        check_calibrated(model.references, settings, class_names, review=reviews)
    fields = {
        "dataset": [name.dataset for name in names],
        "category": [name.category for name in names],
        "class_name": class_names,
        "image_threshold": thresholds.image,
        "pixel_threshold": thresholds.pixel,
        "review_threshold": thresholds.review if reviews else None,
    }
    if not len(batch):  # a process's share of a distributed test set can end in an empty batch
        image = batch.image
        empty_maps = image.new_zeros(0, *image.shape[-2:])
        batch.update(pred_score=image.new_zeros(0), anomaly_map=empty_maps)
        extras = {"uncertainty": image.new_zeros(0), "uncertainty_map": empty_maps} if uncertainty else {}
        if reviews:
            extras["needs_review"] = torch.zeros(0, dtype=torch.bool, device=image.device)
        return _as_bayes_pfl_batch(batch, **fields, **extras)
    measure = settings.uncertainty if uncertainty else None
    scores = model.score(batch.image, class_names, few_shot=few_shot and model.few_shot, uncertainty=measure)
    batch.update(pred_score=scores.pred_score, anomaly_map=scores.anomaly_map)
    if isinstance(post_processor, ProbabilityPostProcessor):
        post_processor.label(batch, thresholds.image, thresholds.pixel)
    paper = paper_map_scores(scores.raw_anomaly_map, fields["category"]) if settings.image_score == "paper" else None
    needs_review = None
    if reviews:
        needs_review = ProbabilityPostProcessor.review(scores.uncertainty, thresholds.review)
    return _as_bayes_pfl_batch(
        batch,
        **fields,
        uncertainty=scores.uncertainty,
        uncertainty_map=scores.uncertainty_map,
        needs_review=needs_review,
        paper_map_score=paper,
    )


def _as_bayes_pfl_batch(batch: Batch, **extras: torch.Tensor | list[str] | None) -> BayesPFLBatch:
    fields = {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)}
    return BayesPFLBatch(**fields, **extras)
