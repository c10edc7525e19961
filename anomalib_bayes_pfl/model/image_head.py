# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Image-level classification head: the stage-1 and stage-2 image-text logits.

Stage 1 compares ``text_mapping(text)`` with the CLIP global feature. Stage 2, the classifier-only training stage
that the released checkpoints use, compares it with ``image_mapping(global + pool(patches))``, where the pooling
attends over the concatenated patch tokens of all tapped layers (paper §3.5;
authors: VPB.py L113-130, L314-356).

Shape legend: N images, T text embeddings per image, L patch tokens, C vision width, D joint width.
"""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .initialisation import init_linear_layers


class PatchAttentionPooling(nn.Module):
    """Pool the concatenated multi-layer patch tokens into one vector with a learned per-patch attention.

    Args:
        in_features: Number of tapped layers times C.
        hidden_features: Width of the pooled representation (C / 2 in the authors' code).
        out_features: D.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.project = nn.Linear(in_features, hidden_features)
        self.score = nn.Linear(hidden_features, 1)
        self.output = nn.Linear(hidden_features, out_features)

    def forward(self, patch_tokens: list[torch.Tensor]) -> torch.Tensor:
        """Pool ``(N, L, C)`` tokens of every tapped layer into ``(N, D)``."""
        hidden = self.project(torch.cat(patch_tokens, dim=-1))
        weights = self.score(hidden).softmax(dim=1)
        return self.output((weights * hidden).sum(dim=1))


class ImageClassificationHead(nn.Module):
    """Scaled cosine logits between mapped text embeddings and the (stage-dependent) image embedding.

    Args:
        vision_width: C.
        embed_dim: D.
        num_layers: Number of tapped layers.
    """

    def __init__(self, vision_width: int, embed_dim: int, num_layers: int) -> None:
        super().__init__()
        self.text_mapping = nn.Linear(embed_dim, embed_dim)
        self.image_mapping = nn.Linear(embed_dim, embed_dim)
        self.patch_pooling = PatchAttentionPooling(vision_width * num_layers, vision_width // 2, embed_dim)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) linear weights, zero biases, and a temperature of 0.07 (authors: VPB.py L202-250)."""
        init_linear_layers(self)
        nn.init.constant_(self.logit_scale, torch.log(torch.tensor(1 / 0.07)).item())

    def image_embedding(
        self, global_features: torch.Tensor, patch_tokens: list[torch.Tensor], stage: int
    ) -> torch.Tensor:
        """Return the unit-norm image embedding ``(N, D)`` that stage ``stage`` compares with the text."""
        if stage == 1:
            return F.normalize(global_features, dim=-1)
        return F.normalize(self.image_mapping(global_features + self.patch_pooling(patch_tokens)), dim=-1)

    def forward(
        self,
        text: torch.Tensor,
        global_features: torch.Tensor,
        patch_tokens: list[torch.Tensor],
        *,
        stage: int,
    ) -> torch.Tensor:
        """Return logits ``(N, T)`` between unit-norm ``text`` ``(N, T, D)`` and the image."""
        mapped_text = F.normalize(self.text_mapping(text), dim=-1)
        image = self.image_embedding(global_features, patch_tokens, stage)
        return self.logit_scale.exp() * (mapped_text @ image.unsqueeze(-1)).squeeze(-1)
