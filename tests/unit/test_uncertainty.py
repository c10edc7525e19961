# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Uncertainty from the B x R prompt samples: the values against a per-sample computation, and its invariances."""

import math

import pytest
import torch
from torch.nn import functional as F

from anomalib_bayes_pfl.model import BayesPFLModel
from anomalib_bayes_pfl.model.config import PromptConfig, ScoringConfig
from anomalib_bayes_pfl.model.references import CategoryReferences, memory_tokens
from anomalib_bayes_pfl.model.scoring import smooth
from anomalib_bayes_pfl.model.uncertainty import mutual_information, sample_uncertainty

from ..helpers import tiny_config


def _entropy_bits(p: float) -> float:
    return -sum(q * math.log2(q) for q in (p, 1 - p) if q > 0)


def _reference(samples: list[float], measure: str) -> float:
    """The textbook formula, one sample at a time, in double precision."""
    mean = sum(samples) / len(samples)
    if measure == "std":
        return math.sqrt(sum((p - mean) ** 2 for p in samples) / len(samples))
    return _entropy_bits(mean) - sum(_entropy_bits(p) for p in samples) / len(samples)


@pytest.mark.parametrize("measure", ["mutual_information", "std"])
def test_measures_equal_the_per_sample_formula(measure):
    torch.manual_seed(0)
    probabilities = torch.rand(12, 5, 7)
    probabilities[:, 0, 0] = torch.tensor([0.0, 1.0] * 6)  # the extremes, where entropy terms vanish
    probabilities[:3, 1, 1] = 1.0
    result = sample_uncertainty(probabilities, measure)
    expected = torch.tensor(
        [[_reference(probabilities[:, i, j].double().tolist(), measure) for j in range(7)] for i in range(5)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(result.double(), expected, rtol=0, atol=2e-6)
    assert result[0, 0] == pytest.approx(1.0 if measure == "mutual_information" else 0.5, abs=1e-6)


def test_mutual_information_keeps_its_precision_when_samples_nearly_agree():
    """A spread of 1e-4 gives about 1e-8 bit; the entropy difference in float32 would be rounding noise."""
    torch.manual_seed(1)
    probabilities = 0.3 + 1e-4 * torch.randn(30, 50)
    expected = torch.tensor(
        [_reference(column.double().tolist(), "mutual_information") for column in probabilities.T], dtype=torch.float64
    )
    assert expected.min() > 0
    torch.testing.assert_close(mutual_information(probabilities).double(), expected, rtol=1e-3, atol=0)


@pytest.mark.parametrize("measure", ["mutual_information", "std"])
def test_identical_samples_have_no_uncertainty(measure):
    probabilities = torch.rand(1, 4, 9).expand(10, -1, -1)
    assert sample_uncertainty(probabilities, measure).abs().max() < 1e-7


def test_unknown_measure_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"entropy.*mutual_information"):
        sample_uncertainty(torch.rand(3, 2), "entropy")


def _per_sample_scores(model: BayesPFLModel, images: torch.Tensor, names: list[str]):
    """Each of the M = B * R prompt samples scored on its own: its map before smoothing and its image probability."""
    tokens = model.class_tokens(names, images)
    features = model.encode_images(images)
    noise = (model.eval_context_noise, model.eval_normal_noise, model.eval_abnormal_noise)
    text, _ = model.encode_text(features.global_features, tokens, noise)
    layer_logits = model.layer_pixel_logits(text, features.patch_tokens)
    image_logits = model.image_head(text, features.global_features, features.patch_tokens, stage=1)
    pairs = image_logits.shape[1] // 2
    maps, probabilities = [], []
    for pair in range(pairs):
        layer_maps = []
        for logits in layer_logits:
            both = F.interpolate(
                logits[:, [pair, pair + pairs]], size=images.shape[-2:], mode="bilinear", align_corners=True
            )
            layer_maps.append(both.softmax(dim=1)[:, 1])
        maps.append(torch.stack(layer_maps).mean(dim=0))
        probabilities.append(image_logits[:, [pair, pair + pairs]].softmax(dim=1)[:, 1])
    return torch.stack(maps), torch.stack(probabilities)


@pytest.mark.parametrize("measure", ["mutual_information", "std"])
def test_model_uncertainty_is_the_spread_of_the_samples_it_averages(tiny_model, measure):
    """Per pixel over the M maps before smoothing (their mean is the unsmoothed map), then smoothed like the map."""
    torch.manual_seed(2)
    images, names = torch.randn(2, 3, 64, 64), ["tile", "screw"]
    scores = tiny_model.score(images, names, uncertainty=measure)
    maps, probabilities = _per_sample_scores(tiny_model, images, names)
    assert maps.shape[0] == 2 * 3  # B * R
    torch.testing.assert_close(maps.mean(dim=0), scores.raw_anomaly_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(probabilities.mean(dim=0), scores.pred_score, rtol=0, atol=1e-6)
    pixel = torch.tensor(
        [
            [[_reference(maps[:, n, i, j].double().tolist(), measure) for j in range(64)] for i in range(64)]
            for n in range(2)
        ],
        dtype=torch.float64,
    )
    pixel = smooth(pixel, tiny_model.config.scoring.smoothing_sigma)  # smoothed like the anomaly map
    image = torch.tensor(
        [_reference(probabilities[:, n].double().tolist(), measure) for n in range(2)], dtype=torch.float64
    )
    torch.testing.assert_close(scores.uncertainty_map.double(), pixel, rtol=0, atol=2e-6)
    torch.testing.assert_close(scores.uncertainty.double(), image, rtol=0, atol=2e-6)
    assert scores.uncertainty_map.max() > 1e-4  # the test is not about zeros


def test_asking_for_uncertainty_changes_no_score_by_a_bit(tiny_model):
    images = torch.randn(2, 3, 64, 64)
    tiny_model.references.set(
        "tile", CategoryReferences(memory_tokens(tiny_model.encode_images(torch.randn(2, 3, 64, 64)).patch_tokens), {})
    )
    for few_shot in (False, True):
        plain = tiny_model.score(images, ["tile", "tile"], few_shot=few_shot)
        with_uncertainty = tiny_model.score(
            images, ["tile", "tile"], few_shot=few_shot, uncertainty="mutual_information"
        )
        assert plain.uncertainty is None
        for name in ("pred_score", "anomaly_map", "raw_anomaly_map"):
            assert torch.equal(getattr(plain, name), getattr(with_uncertainty, name))


def test_few_shot_fusion_halves_the_spread(tiny_model):
    """The reference memory is the same for every sample: fused samples are (p_m + f) / 2, so the std halves."""
    images = torch.randn(2, 3, 64, 64)
    tiny_model.references.set(
        "tile", CategoryReferences(memory_tokens(tiny_model.encode_images(torch.randn(2, 3, 64, 64)).patch_tokens), {})
    )
    zero_shot = tiny_model.score(images, ["tile", "tile"], uncertainty="std")
    few_shot = tiny_model.score(images, ["tile", "tile"], few_shot=True, uncertainty="std")
    torch.testing.assert_close(few_shot.uncertainty, zero_shot.uncertainty / 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(few_shot.uncertainty_map, zero_shot.uncertainty_map / 2, rtol=1e-4, atol=1e-7)


def test_one_prompt_and_one_sample_have_exactly_zero_uncertainty(tiny_clip):
    config = tiny_config(prompt=PromptConfig(num_prompts=1, context_len=2, state_len=2), scoring=ScoringConfig(1, 1.0))
    model = BayesPFLModel(config, tiny_clip).eval()
    scores = model.score(torch.randn(2, 3, 64, 64), ["tile", "tile"], uncertainty="mutual_information")
    assert torch.count_nonzero(scores.uncertainty) == 0
    assert torch.count_nonzero(scores.uncertainty_map) == 0


@pytest.mark.parametrize("measure", ["mutual_information", "std"])
def test_samples_without_noise_agree(tiny_clip, measure):
    """One prompt set, R = 4 samples of all-zero noise: every sample is the distributions' mean."""
    config = tiny_config(prompt=PromptConfig(num_prompts=1, context_len=2, state_len=2), scoring=ScoringConfig(4, 1.0))
    model = BayesPFLModel(config, tiny_clip).eval()
    for buffer in (model.eval_context_noise, model.eval_normal_noise, model.eval_abnormal_noise):
        buffer.zero_()
    scores = model.score(torch.randn(2, 3, 64, 64), ["tile", "tile"], uncertainty=measure)
    assert scores.uncertainty.abs().max() < 1e-6
    assert scores.uncertainty_map.abs().max() < 1e-6


def test_uncertainty_does_not_depend_on_batch_size_or_order(tiny_model):
    torch.manual_seed(3)
    images, names = torch.randn(4, 3, 64, 64), ["tile", "screw", "tile", "nut"]
    together = tiny_model.score(images, names, uncertainty="mutual_information")
    alone = [
        tiny_model.score(image[None], [name], uncertainty="mutual_information")
        for image, name in zip(images, names, strict=True)
    ]
    reversed_order = tiny_model.score(images.flip(0), names[::-1], uncertainty="mutual_information")
    for field in ("uncertainty", "uncertainty_map"):
        batched = getattr(together, field)
        torch.testing.assert_close(torch.cat([getattr(one, field) for one in alone]), batched, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(getattr(reversed_order, field).flip(0), batched, rtol=1e-5, atol=1e-7)
