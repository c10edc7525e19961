# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' transductive image score, by hand-computed values."""

import pytest
import torch

from anomalib_bayes_pfl.model.scoring import paper_top_k, top_k_mean
from anomalib_bayes_pfl.reporting.paper_score import fuse_paper_scores


def test_top_k_mean_of_each_map_and_of_small_maps():
    maps = torch.tensor([[[1.0, 5.0], [3.0, 2.0]], [[0.0, 0.0], [4.0, 8.0]]])
    assert top_k_mean(maps, 2).tolist() == [4.0, 6.0]  # (5 + 3) / 2 and (8 + 4) / 2
    assert top_k_mean(maps, 2000).tolist() == [2.75, 3.0]  # k above the map size: every value


def test_paper_top_k_follows_the_authors_categories():
    assert paper_top_k("screw") == paper_top_k("macaroni2") == 20
    assert paper_top_k("bottle") == paper_top_k("anything else") == 2000


def test_fusion_is_the_mean_of_min_max_normalised_scores():
    probabilities = torch.tensor([0.2, 0.4, 0.6])
    map_scores = torch.tensor([10.0, 30.0, 20.0])
    fused = fuse_paper_scores(probabilities, map_scores)
    # minmax(p) = (0, 0.5, 1), minmax(s) = (0, 1, 0.5)
    assert fused.tolist() == pytest.approx([0.0, 0.75, 0.75])
    constant = fuse_paper_scores(torch.full((3,), 0.3), map_scores)  # a constant score adds nothing, not NaN
    assert constant.tolist() == pytest.approx([0.0, 0.5, 0.25])
