# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What a few normal images of a category teach the model: a memory of their patch tokens, and calibrated thresholds.

Few-shot scoring follows WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation",
CVPR 2023, Sec. 3.3): a test patch scores ``(1 - max cosine similarity) / 2`` against the reference patches of its
category, here per tapped layer of the same frozen CLIP pass that feeds the prompts, averaged over the layers
(April-GAN / AnomalyCLIP's multi-layer memory). The anomaly map is the mean of the prompt map and this few-shot map,
and the image score the mean of the prompt probability and the few-shot map's maximum, so both stay in [0, 1] and
probability thresholds keep their meaning.

The memory is held in float16: the run that builds it and every run that loads it from a checkpoint score with the
same values, at half the size (about 22 MB per reference image for ViT-L-14-336 at 518 px).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812

from .scoring import upsample

MEMORY_DTYPE = torch.float16
# Patches compared with the memory at once: with 4 references of ViT-L-14-336 at 518 px, 256 x 5476 similarities.
PATCH_BLOCK = 256


@dataclass
class CategoryReferences:
    """One category's reference memory and calibrated thresholds.

    Attributes:
        patch_tokens: Per tapped layer, the unit-norm patch tokens of the k references, ``(k * L, C)``; empty for a
            zero-shot calibration.
        settings: The options the references were drawn and calibrated under (see :meth:`ReferenceMemory.matches`).
        reference_images: Paths of the reference images, for the record.
        calibration_images: Paths of the calibration images, for the record.
        image_threshold: Calibrated image threshold, or ``None``.
        pixel_threshold: Calibrated pixel threshold, or ``None``.
        review_threshold: Calibrated threshold of the image uncertainty for review, or ``None``.
    """

    patch_tokens: list[torch.Tensor]
    settings: dict[str, Any]
    reference_images: list[str] = field(default_factory=list)
    calibration_images: list[str] = field(default_factory=list)
    image_threshold: float | None = None
    pixel_threshold: float | None = None
    review_threshold: float | None = None


class ReferenceMemory:
    """Per-category references, saved with the head (``BayesPFLModel``'s extra state) and reused on load."""

    def __init__(self) -> None:
        self.categories: dict[str, CategoryReferences] = {}
        self._on_device: dict[tuple[str, torch.device], list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.categories)

    def get(self, category: str) -> CategoryReferences | None:
        """The references of ``category``, or ``None``."""
        return self.categories.get(category)

    def set(self, category: str, references: CategoryReferences) -> None:
        """Store ``references`` for ``category``, replacing older ones."""
        with torch.inference_mode(False):  # built in Lightning's inference-mode loops, used in export traces too
            references.patch_tokens = [tokens.to(MEMORY_DTYPE).cpu().clone() for tokens in references.patch_tokens]
        self.categories[category] = references
        self._on_device = {key: value for key, value in self._on_device.items() if key[0] != category}

    def clear(self) -> None:
        """Forget every category."""
        self.categories.clear()
        self._on_device.clear()

    def matches(self, category: str, settings: dict[str, Any]) -> bool:
        """Whether ``category`` has references made under ``settings`` (a subset of their stored settings)."""
        return category in self.categories and not self.differences(category, settings)

    def differences(self, category: str, settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The options in ``settings`` that ``category``'s stored references were made under otherwise.

        Each as ``(stored, now)``: empty when the category has none stored or they match; a message names them when
        they are not reused.
        """
        stored = self.categories.get(category)
        if stored is None:
            return {}
        return {
            name: (stored.settings.get(name), value)
            for name, value in settings.items()
            if stored.settings.get(name) != value
        }

    @property
    def has_memory(self) -> bool:
        """Whether any category holds reference patches (then scoring is few-shot)."""
        return any(references.patch_tokens for references in self.categories.values())

    def require(self, category: str) -> CategoryReferences:
        """The references of ``category``, which must hold a memory.

        Raises:
            KeyError: Naming the categories that have one, and how to give the missing one.
        """
        references = self.categories.get(category)
        if references is None or not references.patch_tokens:
            msg = (
                f"no few-shot references for category '{category}' (the model has them for "
                f"{sorted(name for name, refs in self.categories.items() if refs.patch_tokens)}). Give its normal "
                f"images with --model.few_shot_source, or use the --model.class_name they were stored under."
            )
            raise KeyError(msg)
        return references

    def _tokens(self, category: str, device: torch.device) -> list[torch.Tensor]:
        references = self.require(category)
        key = (category, device)
        if key not in self._on_device:
            self._on_device[key] = [tokens.to(device=device, dtype=torch.float32) for tokens in references.patch_tokens]
        return self._on_device[key]

    def patch_scores(
        self, patch_tokens: Sequence[torch.Tensor], class_names: Sequence[str] | None, default_class_name: str
    ) -> torch.Tensor:
        """Few-shot score ``(N, g, g)`` of each patch: mean over layers of ``(1 - max cosine similarity) / 2``.

        Args:
            patch_tokens: Per tapped layer, the images' patch tokens ``(N, L, C)``.
            class_names: The category of each image, whose references it is compared with; ``None`` gives every
                image ``default_class_name`` (exported models: then no loop depends on the batch size).
            default_class_name: The category of every image when ``class_names`` is ``None``.
        """
        num_images, num_patches, _ = patch_tokens[0].shape
        grid = round(num_patches**0.5)
        if class_names is None:
            return self._category_scores(patch_tokens, default_class_name).reshape(num_images, grid, grid)
        scores = patch_tokens[0].new_zeros(num_images, num_patches)
        for category in dict.fromkeys(class_names):
            index = torch.tensor([i for i, name in enumerate(class_names) if name == category])
            scores[index] = self._category_scores([tokens[index] for tokens in patch_tokens], category)
        return scores.reshape(num_images, grid, grid)

    def _category_scores(self, patch_tokens: Sequence[torch.Tensor], category: str) -> torch.Tensor:
        """Scores ``(n, L)`` of images of one category, a block of patches at a time (bounded memory)."""
        memory = self._tokens(category, patch_tokens[0].device)
        total = 0.0
        for layer, tokens in enumerate(patch_tokens):
            tokens = F.normalize(tokens, dim=-1)
            nearest = [
                (tokens[:, start : start + PATCH_BLOCK] @ memory[layer].T).amax(dim=-1)
                for start in range(0, tokens.shape[1], PATCH_BLOCK)
            ]
            total = total + (1.0 - torch.cat(nearest, dim=1)) / 2.0
        return total / len(patch_tokens)

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint (loadable with ``weights_only``)."""
        return {
            category: {
                "patch_tokens": references.patch_tokens,
                "settings": dict(references.settings),
                "reference_images": list(references.reference_images),
                "calibration_images": list(references.calibration_images),
                "image_threshold": references.image_threshold,
                "pixel_threshold": references.pixel_threshold,
                "review_threshold": references.review_threshold,
            }
            for category, references in self.categories.items()
        }

    def load(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`state` returned (``None``, from checkpoints written before few-shot, is empty)."""
        self.clear()
        for category, stored in (state or {}).items():
            self.set(category, CategoryReferences(**stored))


def memory_tokens(patch_tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per tapped layer, the unit-norm patch tokens ``(k * L, C)`` of the references' tokens ``(k, L, C)``."""
    return [F.normalize(tokens.flatten(0, 1).float(), dim=-1) for tokens in patch_tokens]


def fuse_few_shot(
    pred_score: torch.Tensor, raw_map: torch.Tensor, patch_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """WinCLIP+'s fusion: mean of the prompt and few-shot maps, and of the probability and the few-shot maximum.

    Args:
        pred_score: ``(N,)`` prompt image probabilities, or ``(M, N)``: one per prompt sample.
        raw_map: ``(N, H, W)`` prompt anomaly map before smoothing, or ``(M, N, H, W)``: one per prompt sample.
        patch_scores: ``(N, g, g)`` few-shot patch scores (:meth:`ReferenceMemory.patch_scores`).
    """
    few_shot_map = upsample(patch_scores.unsqueeze(1), tuple(raw_map.shape[-2:])).squeeze(1)
    return (pred_score + patch_scores.flatten(1).amax(dim=1)) / 2, (raw_map + few_shot_map) / 2
