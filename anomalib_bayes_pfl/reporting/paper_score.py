# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The authors' fused image score, for comparison with published numbers only.

Per category, min-max normalise the image probability and the map's top-k score (``model/scoring.py``, handed to the
metrics as a field of each :class:`~anomalib_bayes_pfl.batch.BayesPFLBatch`), and average the two (authors:
metric_and_visualization.py L161-189). It is transductive (it needs the whole test set of a category) and its k is
tuned per category by the authors, so it is an offline evaluation option, never the model's own score.
"""

import torch


def fuse_paper_scores(probabilities: torch.Tensor, map_scores: torch.Tensor) -> torch.Tensor:
    """``0.5 * minmax(p) + 0.5 * minmax(s)`` over one category's test images."""

    def min_max(values: torch.Tensor) -> torch.Tensor:
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else torch.zeros_like(values)

    return 0.5 * min_max(probabilities) + 0.5 * min_max(map_scores)
