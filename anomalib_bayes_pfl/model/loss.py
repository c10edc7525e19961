# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Bayes-PFL training losses (paper Eq. 7, the "Prompt Flow Loss"; authors: train.py L218-242, loss.py).

Stage 1: ``CE + sum_layers (focal + dice) + kl_weight * KL + orthogonality``, where one prompt set ``b`` of the
bank, drawn per step and shared by the batch, feeds the classification and segmentation terms. Stage 2: the
classification term alone.

Shape legend: N images, B prompt sets, D joint width, g patch grid, H x W mask size.
"""

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .scoring import upsample

FOCAL_EPS = 1e-8
DICE_EPS = 1e-5


class LossTerms(NamedTuple):
    """The total loss and its unweighted-by-stage terms (0-d tensors), for logging."""

    total: torch.Tensor
    classification: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    distribution: torch.Tensor
    orthogonality: torch.Tensor


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss averaged separately over foreground and background pixels of the batch, then added.

    Args:
        probabilities: ``(N, 2, H, W)`` normal/abnormal probabilities.
        target: ``(N, H, W)`` binary mask.
        gamma: Focusing exponent.
    """
    foreground = target > 0.5
    true_class_probability = torch.where(foreground, probabilities[:, 1], probabilities[:, 0])
    loss = -((1 - true_class_probability) ** gamma) * torch.log(true_class_probability + FOCAL_EPS)
    foreground_loss = (loss * foreground).sum() / (foreground.sum() + FOCAL_EPS)
    background_loss = (loss * ~foreground).sum() / ((~foreground).sum() + FOCAL_EPS)
    return foreground_loss + background_loss


def dice_loss(abnormal_probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-global soft Dice loss on the abnormal channel ``(N, H, W)`` against a binary mask."""
    target = target.to(abnormal_probability.dtype)
    intersection = (abnormal_probability * target).sum()
    union = abnormal_probability.sum() + target.sum()
    return 1 - (2 * intersection + DICE_EPS) / (union + DICE_EPS)


def orthogonality_loss(text: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal cosine within the normal and within the abnormal embeddings ``(N, 2B, D)``."""
    loss = text.new_zeros(())
    for half in text.chunk(2, dim=1):
        half = F.normalize(half, dim=-1)
        cosine = half @ half.transpose(1, 2)
        off_diagonal = 1 - torch.eye(cosine.shape[-1], device=text.device, dtype=text.dtype)
        loss = loss + (cosine.square() * off_diagonal).mean()
    return loss


class BayesPFLLoss(nn.Module):
    """Combine the Bayes-PFL loss terms.

    Args:
        kl_weight: Weight of the distribution (KL) term (0.01 in the authors' code).
        orthogonality: Add the orthogonality term (code-only in the authors' repository).
    """

    def __init__(self, *, kl_weight: float = 0.01, orthogonality: bool = True) -> None:
        super().__init__()
        self.kl_weight = kl_weight
        self.orthogonality = orthogonality

    def forward(
        self,
        image_logits: torch.Tensor,
        pixel_logits: list[torch.Tensor],
        text: torch.Tensor,
        kl: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None,
        *,
        prompt_index: int,
        stage: int,
        has_mask: torch.Tensor | None = None,
    ) -> LossTerms:
        """Compute the loss of one training step.

        Args:
            image_logits: ``(N, 2B)`` image logits, normal half first.
            pixel_logits: Per tapped layer ``(N, 2B, g, g)`` pixel logits (empty in stage 2).
            text: ``(N, 2B, D)`` unit-norm text embeddings.
            kl: Unweighted sum of the KL terms.
            labels: ``(N,)`` image labels, 1 = anomalous.
            masks: ``(N, H, W)`` binary masks, or ``None`` when the data has none (pixel terms are skipped).
            prompt_index: The prompt set ``b`` trained in this step.
            stage: 1 or 2.
            has_mask: ``(N,)`` which images' masks are known; the pixel terms use only those (all when ``None``).
        """
        bank = image_logits.shape[1] // 2
        pair = [prompt_index, prompt_index + bank]
        classification = F.cross_entropy(image_logits[:, pair], labels.long())
        zero = classification.new_zeros(())
        if stage == 2:
            return LossTerms(classification, classification, zero, zero, zero, zero)
        focal = dice = zero
        if masks is not None and has_mask is not None:
            masks, pixel_logits = masks[has_mask], [logits[has_mask] for logits in pixel_logits]
        if masks is not None and masks.shape[0] > 0:
            for logits in pixel_logits:
                probabilities = upsample(logits[:, pair], masks.shape[-2:]).softmax(dim=1)
                focal = focal + focal_loss(probabilities, masks)
                dice = dice + dice_loss(probabilities[:, 1], masks)
        distribution = self.kl_weight * kl
        orthogonality = orthogonality_loss(text) if self.orthogonality else zero
        total = classification + focal + dice + distribution + orthogonality
        return LossTerms(total, classification, focal, dice, distribution, orthogonality)
