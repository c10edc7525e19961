# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Planar flows, the distributions and their KL term."""

import math

import pytest
import torch

from anomalib_bayes_pfl.model.config import FlowConfig
from anomalib_bayes_pfl.model.flows import (
    LOG_DET_EPS,
    FlowSample,
    GaussianEncoder,
    ImageAgnosticDistribution,
    ImageSpecificDistribution,
    PromptDistributions,
    kl_divergence,
    planar_flow,
)


def test_log_det_matches_finite_difference_jacobian():
    torch.manual_seed(0)
    dim, steps = 5, 4
    u, w, b = (
        torch.randn(steps, dim, dtype=torch.float64),
        torch.randn(steps, dim, dtype=torch.float64),
        torch.randn(steps, dtype=torch.float64),
    )
    z = torch.randn(dim, dtype=torch.float64)
    _, log_det = planar_flow(z, u, w, b)
    step = 1e-6
    jacobian = torch.stack(
        [
            (planar_flow(z + step * e, u, w, b)[0] - planar_flow(z - step * e, u, w, b)[0]) / (2 * step)
            for e in torch.eye(dim, dtype=torch.float64)
        ],
        dim=1,
    )
    expected = torch.log(torch.abs(torch.linalg.det(jacobian)))
    assert log_det.item() == pytest.approx(expected.item(), abs=1e-4)


def test_one_step_by_hand():
    """z = (1, 2), u = (0.5, -1), w = (1, 0), b = 0.5: w.z + b = 1.5, so z' = z + u tanh(1.5), and
    log|det| = log(|1 + (1 - tanh(1.5)^2) u.w| + eps) with u.w = 0.5 and the authors' eps."""
    z = torch.tensor([[1.0, 2.0]])
    u, w, b = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])
    zk, log_det = planar_flow(z, u, w, b)
    t = math.tanh(1.5)
    torch.testing.assert_close(zk, torch.tensor([[1.0 + 0.5 * t, 2.0 - t]]))
    assert log_det.item() == pytest.approx(math.log(1 + (1 - t * t) * 0.5 + LOG_DET_EPS), rel=1e-6)


def test_kl_is_zero_for_standard_normal_without_flows():
    z = torch.randn(16, 8)
    sample = FlowSample(z, z, torch.zeros(8), torch.ones(8), torch.zeros(16))
    assert kl_divergence(sample).item() == pytest.approx(0.0, abs=1e-6)
    distribution = ImageAgnosticDistribution(embed_dim=8, num_flow_steps=0)
    encoder = GaussianEncoder(8, 4)
    for layer in encoder.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.zeros_(layer.weight)
    sample = distribution(encoder, torch.randn(16, 8))  # mean 0, variance exp(0) = 1
    assert kl_divergence(sample).item() == pytest.approx(0.0, abs=1e-5)


def test_kl_log_det_scale():
    z = torch.randn(1, 4)
    sample = FlowSample(z, z, torch.zeros(4), torch.ones(4), torch.tensor([2.0]))
    assert kl_divergence(sample).item() == pytest.approx(-2.0)
    assert kl_divergence(sample, log_det_scale=0.25).item() == pytest.approx(-0.5)


def test_encoder_variance_is_exp_half_output():
    encoder = GaussianEncoder(4, 3)
    x = torch.randn(2, 4)
    mean, variance = encoder(x)
    torch.testing.assert_close(variance, torch.exp(0.5 * encoder.log_variance(x)))
    torch.testing.assert_close(mean, encoder.mean(x))


def test_image_specific_samples_per_image_and_round():
    distribution = ImageSpecificDistribution(embed_dim=8, hidden_dim=4, num_flow_steps=2)
    features = torch.randn(3, 8)
    shared = torch.randn(5, 1, 8)
    sample = distribution(features, shared)
    assert sample.zk.shape == (5, 3, 8)
    assert sample.log_det.shape == (5, 3)
    assert not torch.allclose(sample.zk[:, 0], sample.zk[:, 1])  # image-specific even with shared noise
    alone = distribution(features[1:2], shared)
    torch.testing.assert_close(alone.zk[:, 0], sample.zk[:, 1])


@pytest.mark.parametrize(
    ("image_specific", "image_agnostic"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_ablation_switches(image_specific, image_agnostic):
    config = FlowConfig(num_flow_steps=2, image_specific=image_specific, image_agnostic=image_agnostic)
    distributions = PromptDistributions(config, embed_dim=8, hidden_dim=4)
    shifts = distributions(torch.randn(2, 8), torch.randn(1, 2, 8), torch.randn(1, 8), torch.randn(1, 8))
    assert (shifts.context is not None) == image_specific
    assert (shifts.normal is not None) == image_agnostic
    assert (shifts.abnormal is not None) == image_agnostic
    assert (shifts.kl.item() != 0.0) == (image_specific or image_agnostic)


def test_iad_log_det_per_batch_follows_the_authors():
    torch.manual_seed(0)
    faithful = PromptDistributions(FlowConfig(num_flow_steps=2, image_specific=False), embed_dim=8, hidden_dim=4)
    textbook = PromptDistributions(
        FlowConfig(num_flow_steps=2, image_specific=False, iad_log_det_per_batch=False), embed_dim=8, hidden_dim=4
    )
    textbook.load_state_dict(faithful.state_dict())
    noise = (torch.randn(1, 4, 8), torch.randn(1, 8), torch.randn(1, 8))
    features = torch.randn(4, 8)
    normal = faithful.normal(faithful.state_encoder, noise[1])
    abnormal = faithful.abnormal(faithful.state_encoder, noise[2])
    log_det = normal.log_det.sum() + abnormal.log_det.sum()
    difference = faithful(features, *noise).kl - textbook(features, *noise).kl
    assert difference.item() == pytest.approx(log_det.item() * (1 - 1 / 4), rel=1e-4)


def test_negative_flow_steps_rejected():
    with pytest.raises(ValueError, match="num_flow_steps"):
        FlowConfig(num_flow_steps=-1)
