# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Review marks and the sparsification error, against straightforward computations."""

import pytest
import torch

from anomalib_bayes_pfl.reporting.review import review_flags, sparsification, warn_if_uninformative

from ..helpers import sparsification_by_hand


def test_review_marks_the_most_uncertain_share():
    uncertainty = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.2, 0.0, 0.5, 0.4, 0.6, 0.7])
    assert review_flags(uncertainty, 0.2).nonzero().flatten().tolist() == [1, 3]
    assert review_flags(uncertainty, 0.25).sum() == 2  # at most the share: floor(2.5)
    assert review_flags(uncertainty, 0.05).sum() == 0


def test_review_marks_do_not_depend_on_order_and_leave_ties_at_the_cut_out():
    uncertainty = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1, 0.2, 0.3, 0.0, 0.05, 0.6])
    flags = review_flags(uncertainty, 0.3)  # the third most uncertain ties with two more: only two are marked
    assert flags.nonzero().flatten().tolist() == [0, 9]
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(review_flags(uncertainty[permutation], 0.3), flags[permutation])
    assert not review_flags(torch.zeros(20), 0.5).any()  # samples that all agree: nothing to review


def test_sparsification_matches_the_step_by_step_definition():
    generator = torch.Generator().manual_seed(1)
    uncertainty, error = torch.rand(25, generator=generator), torch.rand(25, generator=generator)
    result = sparsification(uncertainty, error)
    expected = sparsification_by_hand(uncertainty.tolist(), error.tolist())
    assert result.ause == pytest.approx(expected[0], abs=1e-12)
    assert result.random_ause == pytest.approx(expected[1], abs=1e-12)
    assert result.ause > 0


def test_a_perfect_ranking_has_no_sparsification_error_and_a_reversed_one_the_most():
    error = torch.tensor([0.9, 0.1, 0.4, 0.0, 0.7])
    assert sparsification(error, error).ause == pytest.approx(0.0, abs=1e-12)
    reversed_ranking = sparsification(-error, error)
    assert reversed_ranking.ause > reversed_ranking.random_ause > 0


def test_equal_uncertainties_count_as_their_average_in_any_order():
    """With every uncertainty equal, the curve stays at the mean error: the AUSE of a ranking that knows nothing."""
    error = torch.tensor([0.9, 0.1, 0.4, 0.0, 0.7])
    tied = sparsification(torch.zeros(5), error)
    assert tied.ause == pytest.approx(tied.random_ause, abs=1e-12)
    assert sparsification(torch.zeros(5), error.flip(0)) == tied


def test_a_review_that_would_mark_nothing_says_why(caplog):
    warn_if_uninformative("gear", torch.zeros(8), 0.25)
    assert "Category gear: the uncertainty is 0 for all its 8 images" in caplog.text
    assert "review marks none of them" in caplog.text
    caplog.clear()
    warn_if_uninformative("gear", torch.rand(12), 0.05)
    assert "review_fraction 0.05 marks none of its 12 images (at most floor(0.05 * 12) = 0); it needs at least 20" in (
        caplog.text
    )
    caplog.clear()
    warn_if_uninformative("gear", torch.rand(20), 0.05)  # one image to mark: nothing to say
    warn_if_uninformative("gear", torch.rand(12), 0.0)  # no review asked for
    assert not caplog.text
