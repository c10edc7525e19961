# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' fused image score, for comparison with published numbers only.

Per category, min-max normalise the image probability and the mean of the top-k values of the unsmoothed anomaly
map, and average the two (authors: metric_and_visualization.py L161-189). It is transductive (it needs the whole
test set of a category) and its k is tuned per category by the authors, so it is an offline evaluation option,
never the model's own score. The model hands the map score to the metrics as a field of its output batch
(:class:`~anomalib_bayes_pfl.batch.BayesPFLBatch`).
"""

import torch

# The authors' top-k for the map score: 20 for these categories, 2000 for all others.
PAPER_SMALL_TOP_K_CATEGORIES = frozenset(
    {"capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw", "cashew", "chewinggum"}
)


def paper_top_k(category: str) -> int:
    """The authors' k for ``category`` (tuned on the test categories; see the module docstring)."""
    return 20 if category in PAPER_SMALL_TOP_K_CATEGORIES else 2000


def top_k_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values of each map ``(N, H, W)`` (all values when a map is smaller)."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def paper_map_scores(raw_maps: torch.Tensor, categories: list[str]) -> torch.Tensor:
    """Each unsmoothed map's top-k mean, with the authors' k for its category."""
    pairs = zip(raw_maps, categories, strict=True)
    return torch.cat([top_k_mean(raw_map.unsqueeze(0), paper_top_k(name)) for raw_map, name in pairs])


def fuse_paper_scores(probabilities: torch.Tensor, map_scores: torch.Tensor) -> torch.Tensor:
    """``0.5 * minmax(p) + 0.5 * minmax(s)`` over one category's test images."""

    def min_max(values: torch.Tensor) -> torch.Tensor:
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else torch.zeros_like(values)

    return 0.5 * min_max(probabilities) + 0.5 * min_max(map_scores)
