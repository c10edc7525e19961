# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Synthetic anomalies are made where training batches are, and say which masks the pixel losses may use."""

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision.transforms.v2 import Normalize

from anomalib_bayes_pfl.data.synthetic_anomalies import SyntheticAnomalies, add_synthetic_anomalies, known_masks

NORMALIZE = Normalize(mean=list(OPENAI_DATASET_MEAN), std=list(OPENAI_DATASET_STD))


def _batch(labels: list[int], *, masks: bool, mask_paths: list[str] | None) -> ImageBatch:
    torch.manual_seed(0)
    count = len(labels)
    return ImageBatch(
        image=NORMALIZE(torch.rand(count, 3, 32, 32)),
        gt_label=torch.tensor(labels),
        gt_mask=torch.zeros(count, 32, 32, dtype=torch.bool) if masks else None,
        mask_path=mask_paths,
        image_path=[f"{i}.png" for i in range(count)],
    )


def test_normal_images_become_labelled_masked_anomalies_only_inside_their_masks():
    batch = _batch([0, 0], masks=True, mask_paths=["", ""])
    before = batch.image.clone()
    add_synthetic_anomalies(batch, PerlinAnomalyGenerator(probability=1.0))
    assert batch.gt_label.tolist() == [True, True]
    assert (batch.gt_mask.flatten(1).any(dim=1)).all()
    changed = (batch.image != before).any(dim=1)
    assert changed.any()
    assert not changed[~batch.gt_mask].any()
    assert known_masks(batch) is None  # every mask is known: the pixel losses use them all


def test_real_anomalies_stay_and_without_masks_in_the_data_their_masks_are_unknown():
    batch = _batch([0, 1], masks=False, mask_paths=["", ""])
    before = batch.image.clone()
    add_synthetic_anomalies(batch, PerlinAnomalyGenerator(probability=1.0))
    assert torch.equal(batch.image[1], before[1])
    assert batch.gt_label.tolist() == [True, True]
    assert batch.gt_mask.shape == (2, 32, 32)
    assert not batch.gt_mask[1].any()
    assert known_masks(batch).tolist() == [True, False]  # no pixel loss teaches the real defect is normal


def test_a_mask_is_known_for_normal_images_mask_files_and_marked_pixels():
    with_files = _batch([0, 1], masks=True, mask_paths=["", "defect_mask.png"])
    assert known_masks(with_files) is None
    mosaic = _batch([0, 1, 1], masks=True, mask_paths=None)  # e.g. a mosaic: masks made in memory, no file
    mosaic.gt_mask[1, :4, :4] = True
    assert known_masks(mosaic).tolist() == [True, True, False]
    assert known_masks(_batch([0, 1], masks=False, mask_paths=["", ""])) is None  # no masks: no pixel loss at all


def test_probability_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"synthetic_anomalies is a probability in \[0, 1\], got 1.5"):
        SyntheticAnomalies(1.5)
