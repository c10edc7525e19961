# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Map aggregation and image probability against the authors' straightforward computation."""

import pytest
import torch
from torch.nn import functional as F

from anomalib_bayes_pfl.model.scoring import image_probability, pixel_logits, sampled_anomaly_maps, smooth


def test_map_is_mean_of_all_layer_prompt_sample_maps():
    """Upsample each of the 4*B*R logit pairs, softmax the pair, average (authors: test.py L158-165)."""
    torch.manual_seed(0)
    layers, bank, samples, size = 4, 3, 2, (20, 20)
    pairs = bank * samples
    layer_logits = [torch.randn(2, 2 * pairs, 5, 5) * 3 for _ in range(layers)]
    maps = []
    for logits in layer_logits:
        upsampled = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        for i in range(pairs):
            pair = torch.stack([upsampled[:, i], upsampled[:, i + pairs]], dim=1)
            maps.append(pair.softmax(dim=1)[:, 1])
    expected = torch.stack(maps).mean(dim=0)
    assert len(maps) == layers * bank * samples
    mean, no_pairs = sampled_anomaly_maps(layer_logits, size)
    assert no_pairs is None
    torch.testing.assert_close(mean, expected, rtol=0, atol=1e-6)
    kept_mean, pair_maps = sampled_anomaly_maps(layer_logits, size, keep_pairs=True)
    assert torch.equal(kept_mean, mean)  # keeping the pairs' maps never changes the map
    torch.testing.assert_close(pair_maps.mean(dim=0), expected, rtol=0, atol=1e-6)


def test_image_probability_is_mean_pair_softmax():
    logits = torch.randn(3, 8)
    expected = torch.stack([torch.stack([logits[:, i], logits[:, i + 4]], 1).softmax(1)[:, 1] for i in range(4)]).mean(
        0
    )
    torch.testing.assert_close(image_probability(logits), expected)


def test_pixel_logits_layout():
    patches = F.normalize(torch.randn(2, 16, 8), dim=-1)
    text = F.normalize(torch.randn(2, 6, 8), dim=-1)
    scale = torch.tensor(2.0)
    logits = pixel_logits(patches, text, scale)
    assert logits.shape == (2, 6, 4, 4)
    torch.testing.assert_close(logits[1, 4, 2, 3], scale.exp() * patches[1, 2 * 4 + 3] @ text[1, 4])


@pytest.mark.parametrize(("size", "sigma"), [(40, 2.0), (10, 8.0), (37, 8.0)])
def test_smoothing_matches_scipy_everywhere(size, sigma):
    """SciPy's ``gaussian_filter`` defaults (truncate 4, ``reflect`` borders), also when the kernel outgrows the map."""
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, size, size + 3, dtype=torch.float64)
    expected = torch.stack([torch.from_numpy(gaussian_filter(m.numpy(), sigma=sigma)) for m in maps])
    torch.testing.assert_close(smooth(maps, sigma), expected, rtol=0, atol=1e-10)
    assert smooth(maps, 0.0) is maps
