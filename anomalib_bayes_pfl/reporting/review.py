# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Which images a person should look at, and how well the model's uncertainty picks them.

With ``review_fraction`` f, at most ``floor(f * n)`` of a category's n images, the most uncertain, are marked
``needs_review``; the model decides the rest alone. The mark is a rank within the run, so it is decided once the run
has scored all of the category's images, like a review queue for a lot (the prediction table's column and the
visualisations' banner are written then). Images tied with the first one left out are left out too, so that the
marks never depend on the order the images came in, and samples that all agree (every uncertainty zero) mark none.

The sparsification curve (Ilg et al., "Uncertainty Estimates and Multi-Hypotheses Networks for Optical Flow",
ECCV 2018) asks how well the uncertainty ranks the errors: remove the most uncertain images one by one and follow the
mean error of the rest; the oracle removes the largest errors first. The area between the two (AUSE) is 0 for a
perfect ranking; a ranking that knows nothing keeps the mean error flat, and its area is the ``random`` AUSE.
"""

import logging
import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)


def review_flags(uncertainty: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mark at most ``floor(fraction * n)`` of the n images, those strictly more uncertain than all the others."""
    count = math.floor(fraction * uncertainty.numel() + 1e-9)
    if count == 0:
        return torch.zeros_like(uncertainty, dtype=torch.bool)
    first_left_out = uncertainty.flatten().sort(descending=True).values[count]
    return uncertainty > first_left_out


def indices_by_group(groups: Sequence[Hashable]) -> dict[Hashable, torch.Tensor]:
    """The positions of each group's images, the groups in order of first appearance."""
    positions: dict[Hashable, list[int]] = {}
    for position, group in enumerate(groups):
        positions.setdefault(group, []).append(position)
    return {group: torch.tensor(members) for group, members in positions.items()}


def warn_if_uninformative(category: str, uncertainty: torch.Tensor, fraction: float) -> None:
    """Say why review would mark none of a category's images: no disagreement at all, or too few images for f."""
    count = uncertainty.numel()
    if count and not uncertainty.any():
        logger.warning(
            "Category %s: the uncertainty is 0 for all its %d images: the prompt samples agree exactly (with one "
            "prompt set and one sample, num_prompts * num_samples = 1, they always do), so it ranks nothing%s.",
            category,
            count,
            " and review marks none of them" if fraction else "",
        )
    elif fraction and math.floor(fraction * count + 1e-9) == 0:
        logger.warning(
            "Category %s: review_fraction %g marks none of its %d images (at most floor(%g * %d) = 0); it needs at "
            "least %d images.",
            category,
            fraction,
            count,
            fraction,
            count,
            math.ceil(1 / fraction - 1e-9),
        )


def grouped_review_flags(groups: Sequence[Hashable], uncertainty: torch.Tensor, fraction: float) -> torch.Tensor:
    """:func:`review_flags` within each group (category) of the images."""
    flags = torch.zeros_like(uncertainty, dtype=torch.bool)
    for index in indices_by_group(groups).values():
        flags[index] = review_flags(uncertainty[index], fraction)
    return flags


class SparsificationCurves(NamedTuple):
    """The mean error left after removing the k most uncertain images (k = 0 .. n - 1), and after the k largest errors.

    The ranking that knows nothing keeps the mean error flat at ``model[0]``.
    """

    model: torch.Tensor
    oracle: torch.Tensor


class Sparsification(NamedTuple):
    """The area under the sparsification error curve, and the same area for a ranking that knows nothing."""

    ause: float
    random_ause: float


def sparsification_curves(uncertainty: torch.Tensor, error: torch.Tensor) -> SparsificationCurves:
    """The sparsification curves of ``uncertainty`` as a ranking of the per-image ``error`` (both ``(n,)``).

    Images of equal uncertainty are removed as a group's average, so the curve does not depend on their order.
    """
    error = error.double().flatten()
    count = error.numel()
    order = uncertainty.flatten().argsort(descending=True)
    _, groups, sizes = torch.unique_consecutive(uncertainty.flatten()[order], return_inverse=True, return_counts=True)
    group_means = torch.zeros(len(sizes), dtype=error.dtype).index_add_(0, groups, error[order]) / sizes
    remaining = torch.arange(count, 0, -1, dtype=error.dtype)  # n - k images left after removing k

    def mean_error_left(removal_order: torch.Tensor) -> torch.Tensor:
        removed = torch.cat([removal_order.new_zeros(1), removal_order.cumsum(0)[:-1]])
        return (error.sum() - removed) / remaining

    return SparsificationCurves(
        mean_error_left(group_means[groups]), mean_error_left(error.sort(descending=True).values)
    )


def sparsification(uncertainty: torch.Tensor, error: torch.Tensor) -> Sparsification:
    """AUSE of ``uncertainty`` as a ranking of the per-image ``error``, in the error's units.

    Each step of the curves is 1/n wide, so the areas are means over the n steps.
    """
    curves = sparsification_curves(uncertainty, error)
    return Sparsification(
        ause=float((curves.model - curves.oracle).mean()),
        random_ause=float((curves.model[0] - curves.oracle).mean()),
    )
