# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The few-shot memory: nearest-reference patch scores, WinCLIP+'s fusion, per-category memories, saved state."""

import pytest
import torch
from torch.nn import functional as F

from anomalib_bayes_pfl.model.references import (
    MEMORY_DTYPE,
    CategoryReferences,
    ReferenceMemory,
    fuse_few_shot,
    memory_tokens,
)


def _memory(**categories: list[torch.Tensor]) -> ReferenceMemory:
    memory = ReferenceMemory()
    for name, tokens in categories.items():
        memory.set(name, CategoryReferences(memory_tokens(tokens), {"k_shot": tokens[0].shape[0]}))
    return memory


def _brute_force(tokens: list[torch.Tensor], references: list[torch.Tensor]) -> torch.Tensor:
    """Per image and patch: mean over layers of (1 - the largest cosine similarity to any reference patch) / 2.

    Reference patches are stored as unit vectors in float16, so their cosine is the dot product with them.
    """
    per_layer = []
    for layer_tokens, layer_references in zip(tokens, references, strict=True):
        stored = F.normalize(layer_references.flatten(0, 1), dim=-1).to(MEMORY_DTYPE).float()
        similarity = (F.normalize(layer_tokens, dim=-1)[:, :, None, :] * stored[None, None]).sum(dim=-1)
        per_layer.append((1 - similarity.amax(dim=-1)) / 2)
    return torch.stack(per_layer).mean(dim=0)


def test_patch_scores_are_the_distance_to_the_nearest_reference_patch_of_the_category():
    torch.manual_seed(0)
    references = [torch.randn(3, 16, 8) for _ in range(2)]  # k=3 references, 4x4 patches, 2 layers
    tokens = [torch.randn(2, 16, 8) for _ in range(2)]
    memory = _memory(tile=references)
    scores = memory.patch_scores(tokens, ["tile", "tile"], "object")
    assert scores.shape == (2, 4, 4)
    torch.testing.assert_close(scores.flatten(1), _brute_force(tokens, references), atol=1e-6, rtol=0)


def test_patch_blocks_and_a_default_class_name_give_the_same_scores():
    """More patches than one block (18 x 18 > 256): the blocks join up; ``None`` is the default name for all."""
    torch.manual_seed(2)
    references = [torch.randn(2, 324, 8), torch.randn(2, 324, 8)]
    tokens = [torch.randn(3, 324, 8), torch.randn(3, 324, 8)]
    memory = _memory(tile=references)
    by_name = memory.patch_scores(tokens, ["tile"] * 3, "object")
    torch.testing.assert_close(by_name.flatten(1), _brute_force(tokens, references), atol=1e-6, rtol=0)
    assert torch.equal(memory.patch_scores(tokens, None, "tile"), by_name)


def test_a_reference_patch_scores_zero_and_an_opposite_one_scores_one():
    references = [torch.randn(1, 1, 8)]  # one reference image of one patch
    memory = _memory(tile=references)
    scores = memory.patch_scores([torch.cat([3 * references[0], -references[0]])], None, "tile").flatten()
    torch.testing.assert_close(scores, torch.tensor([0.0, 1.0]), atol=1e-3, rtol=0)


def test_each_image_of_a_mixed_batch_uses_its_own_category():
    torch.manual_seed(1)
    first, second = [torch.randn(2, 9, 8)], [torch.randn(2, 9, 8)]
    memory = _memory(first=first, second=second)
    tokens = [torch.randn(3, 9, 8)]
    mixed = memory.patch_scores(tokens, ["first", "second", "first"], "object")
    torch.testing.assert_close(mixed[[0, 2]].flatten(1), _brute_force([tokens[0][[0, 2]]], first))
    torch.testing.assert_close(mixed[[1]].flatten(1), _brute_force([tokens[0][[1]]], second))


def test_a_category_without_references_is_refused_with_the_known_ones():
    memory = _memory(tile=[torch.randn(1, 4, 8)])
    with pytest.raises(KeyError, match=r"no few-shot references for category 'bottle'.*\['tile'\].*few_shot_source"):
        memory.patch_scores([torch.randn(1, 4, 8)], ["bottle"], "object")


def test_fusion_is_the_mean_of_prompt_and_few_shot_scores():
    pred_score, raw_map = torch.tensor([0.2, 0.8]), torch.full((2, 8, 8), 0.4)
    patch_scores = torch.zeros(2, 2, 2)
    patch_scores[1, 0, 0] = 0.6
    fused_score, fused_map = fuse_few_shot(pred_score, raw_map, patch_scores)
    torch.testing.assert_close(fused_score, torch.tensor([0.1, 0.7]))
    torch.testing.assert_close(fused_map[0], torch.full((8, 8), 0.2))
    assert fused_map[1, 0, 0] == pytest.approx(0.5)
    assert fused_map[1, -1, -1] == pytest.approx(0.2)


def test_state_round_trip_keeps_memory_thresholds_and_settings():
    memory = _memory(tile=[torch.randn(2, 4, 8), torch.randn(2, 4, 8)])
    memory.get("tile").image_threshold, memory.get("tile").pixel_threshold = 0.3, 0.7
    restored = ReferenceMemory()
    restored.load(memory.state())
    stored = restored.get("tile")
    assert (stored.image_threshold, stored.pixel_threshold, stored.settings) == (0.3, 0.7, {"k_shot": 2})
    for before, after in zip(memory.get("tile").patch_tokens, stored.patch_tokens, strict=True):
        assert after.dtype == MEMORY_DTYPE
        assert torch.equal(before, after)
    assert restored.matches("tile", {"k_shot": 2})
    assert not restored.matches("tile", {"k_shot": 4})
    restored.load(None)  # a checkpoint written before few-shot
    assert len(restored) == 0
    assert not restored.has_memory


def test_model_with_references_saves_them_and_scores_identically_after_loading(tiny_model, tiny_clip):
    from anomalib_bayes_pfl.model import BayesPFLModel

    from ..helpers import tiny_config

    images = torch.randn(2, 3, 64, 64)
    zero_shot = tiny_model.score(images, ["tile", "tile"])
    tiny_model.references.set(
        "tile", CategoryReferences(memory_tokens(tiny_model.encode_images(torch.randn(2, 3, 64, 64)).patch_tokens), {})
    )
    assert torch.equal(tiny_model.score(images, ["tile", "tile"]).pred_score, zero_shot.pred_score)  # few_shot off
    tiny_model.few_shot = True
    few_shot = tiny_model.score(images, ["tile", "tile"])
    assert not torch.allclose(few_shot.anomaly_map, zero_shot.anomaly_map)
    loaded = BayesPFLModel(tiny_config(), tiny_clip).eval()
    loaded.load_state_dict(tiny_model.state_dict())
    loaded.few_shot = True
    again = loaded.score(images, ["tile", "tile"])
    assert torch.equal(again.pred_score, few_shot.pred_score)
    assert torch.equal(again.anomaly_map, few_shot.anomaly_map)
