# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Residual cross-modal attention against a direct implementation of the authors' formula."""

import pytest
import torch
from torch.nn import functional as F

from anomalib_bayes_pfl.model.rca import ResidualCrossModalAttention


def reference_attention(rca: ResidualCrossModalAttention, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Per-head softmax(q k^T * D^-0.5) v with keys = values = patches, plus the residual, normalised."""
    num_images, num_texts, dim = text.shape
    heads = rca.num_heads
    query = rca.query(text).reshape(num_images, num_texts, heads, dim // heads)
    keys = patches.reshape(num_images, -1, heads, dim // heads)
    scores = torch.einsum("nthc,nlhc->nhtl", query, keys) * dim**-0.5
    attended = torch.einsum("nhtl,nlhc->nthc", scores.softmax(dim=-1), keys).reshape(num_images, num_texts, dim)
    return F.normalize(attended + text, dim=-1)


def test_matches_reference_and_has_unit_norm():
    torch.manual_seed(0)
    rca = ResidualCrossModalAttention(vision_width=16, embed_dim=12, num_layers=4)
    text = F.normalize(torch.randn(2, 6, 12), dim=-1)
    patches = rca.project_patches(torch.randn(2, 9, 16), layer=2)
    torch.testing.assert_close(patches.norm(dim=-1), torch.ones(2, 9))
    updated = rca(text, patches)
    torch.testing.assert_close(updated, reference_attention(rca, text, patches), rtol=0, atol=1e-6)
    torch.testing.assert_close(updated.norm(dim=-1), torch.ones(2, 6))


def test_layers_have_their_own_projection():
    rca = ResidualCrossModalAttention(vision_width=16, embed_dim=12, num_layers=4)
    tokens = torch.randn(1, 4, 16)
    assert not torch.allclose(rca.project_patches(tokens, 0), rca.project_patches(tokens, 1))
    assert rca.patch_projections[0].bias is None


def test_disabled_rca_passes_text_through():
    rca = ResidualCrossModalAttention(vision_width=16, embed_dim=12, num_layers=4, enabled=False)
    text = torch.randn(2, 6, 12)
    assert rca(text, torch.randn(2, 9, 12)) is text
    assert rca.query is None


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="attention_heads=5"):
        ResidualCrossModalAttention(vision_width=16, embed_dim=12, num_layers=4, num_heads=5)
