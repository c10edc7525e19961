# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Residual cross-modal attention (RCA): text embeddings attend to one layer's patch features.

Per tapped layer l: ``F_s = normalize(W_l patch_l)`` (bias-free, one projection per layer), a query projection of
the text embeddings shared across layers, keys = values = ``F_s`` with no projection, 4 heads scaled by the *full*
width ``D**-0.5``, and ``F_t' = normalize(Attn(q, F_s, F_s) + F_t)`` (paper §3.5;
authors: VPB.py L82-109).

Shape legend: N images, T text embeddings per image, L patch tokens, C vision width, D joint width.
"""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class ResidualCrossModalAttention(nn.Module):
    """Align text embeddings with patch features of each tapped layer.

    Args:
        vision_width: C, width of the raw patch tokens.
        embed_dim: D, width of the text embeddings.
        num_layers: Number of tapped layers (one patch projection each).
        num_heads: Attention heads.
        enabled: ``False`` is the "RCA off" ablation: text embeddings pass through unchanged, the patch
            projections remain.
    """

    def __init__(
        self,
        vision_width: int,
        embed_dim: int,
        num_layers: int,
        *,
        num_heads: int = 4,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            msg = f"attention_heads={num_heads} must divide the embedding width {embed_dim}."
            raise ValueError(msg)
        self.num_heads = num_heads
        self.scale = embed_dim**-0.5
        self.patch_projections = nn.ModuleList(
            nn.Linear(vision_width, embed_dim, bias=False) for _ in range(num_layers)
        )
        # PyTorch's default init, as the authors' Conv1d query keeps it (their re-init touches only nn.Linear).
        self.query = nn.Linear(embed_dim, embed_dim) if enabled else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) patch projections (authors: VPB.py L241-250)."""
        for projection in self.patch_projections:
            nn.init.normal_(projection.weight, std=0.02)

    def project_patches(self, patch_tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Project raw tokens ``(N, L, C)`` of tapped layer ``layer`` (0-based) to unit vectors ``(N, L, D)``."""
        return F.normalize(self.patch_projections[layer](patch_tokens), dim=-1)

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Return unit-norm updated text embeddings ``(N, T, D)`` from ``text`` ``(N, T, D)``.

        Args:
            text: Unit-norm text embeddings.
            patches: Unit-norm projected patch features ``(N, L, D)`` from :meth:`project_patches`.
        """
        if self.query is None:
            return text
        num_images, num_texts, embed_dim = text.shape
        head_dim = embed_dim // self.num_heads
        query = self.query(text).view(num_images, num_texts, self.num_heads, head_dim).transpose(1, 2)
        keys = patches.view(num_images, -1, self.num_heads, head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(query, keys, keys, scale=self.scale)
        attended = attended.transpose(1, 2).reshape(num_images, num_texts, embed_dim)
        return F.normalize(attended + text, dim=-1)
