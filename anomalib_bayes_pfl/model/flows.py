# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Prompt-flow distributions: Gaussian base distributions pushed through planar flows (paper §3.3-3.4).

The image-specific distribution (ISD) takes its Gaussian and its flow parameters from the CLIP global image
feature; the two image-agnostic distributions (IAD, normal and abnormal) start from learnable vectors and have
free flow parameters, and share one Gaussian encoder (paper §3.3-3.4; authors: PFL.py, VPB.py L205-225).

Kept from the authors: the encoder's second output is used as a variance ``exp(h(x) / 2)``; ``u`` is not
re-parameterised for invertibility; every step's log-determinant is ``log(|1 + u^T psi| + 1e-5)``.

Shape legend: N images, R samples, K flow steps, D joint embedding width, H hidden width.
"""

from typing import NamedTuple

import torch
from torch import nn

from .config import FlowConfig
from .initialisation import init_linear_layers

LOG_DET_EPS = 1e-5


class FlowSample(NamedTuple):
    """Samples of one distribution and what its KL term needs.

    Attributes:
        z0: Base samples ``(..., D)``.
        zk: Samples after the K flow steps, same shape.
        mean: Base mean, broadcastable to ``z0``.
        variance: Base variance, broadcastable to ``z0``.
        log_det: Sum over steps of ``log|det dz_k/dz_{k-1}|``, shape ``z0.shape[:-1]``.
    """

    z0: torch.Tensor
    zk: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    log_det: torch.Tensor


def planar_flow(
    z: torch.Tensor,
    u: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply K planar steps ``z <- z + u_k tanh(w_k^T z + b_k)``.

    Args:
        z: ``(..., D)`` inputs.
        u: ``(..., K, D)`` step directions, broadcastable against ``z``.
        w: ``(..., K, D)`` step normals.
        b: ``(..., K)`` step offsets.

    Returns:
        The transformed samples ``(..., D)`` and the summed log-determinant ``(...)``.

    Example:
        >>> z = torch.zeros(2, 3)
        >>> zk, log_det = planar_flow(z, torch.ones(1, 3), torch.ones(1, 3), torch.zeros(1))
        >>> torch.equal(zk, z), log_det.shape
        (True, torch.Size([2]))
    """
    log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for step in range(u.shape[-2]):
        u_k, w_k, b_k = u[..., step, :], w[..., step, :], b[..., step : step + 1]
        activation = torch.tanh((w_k * z).sum(dim=-1, keepdim=True) + b_k)
        z = z + u_k * activation
        psi_dot_u = (1 - activation.square()) * (w_k * u_k).sum(dim=-1, keepdim=True)
        log_det = log_det + torch.log(torch.abs(1 + psi_dot_u) + LOG_DET_EPS).squeeze(-1)
    return z, log_det


def _mlp(in_features: int, hidden_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden_features),
        nn.Softplus(),
        nn.Linear(hidden_features, hidden_features),
        nn.Softplus(),
        nn.Linear(hidden_features, out_features),
    )


class GaussianEncoder(nn.Module):
    """Two MLPs that give the mean and the variance of a diagonal Gaussian (authors' ``Encoder``).

    Args:
        embed_dim: D, input and output width.
        hidden_dim: H, hidden width (half the vision width in the authors' code).
    """

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mean = _mlp(embed_dim, hidden_dim, embed_dim)
        self.log_variance = _mlp(embed_dim, hidden_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights and zero biases, like every linear layer of the authors' head."""
        init_linear_layers(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, variance)``, the variance being ``exp(h(x) / 2)`` (authors: VPB.py L50-54)."""
        return self.mean(x), torch.exp(0.5 * self.log_variance(x))


def _sample(mean: torch.Tensor, variance: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return mean + variance.sqrt() * noise


class ImageSpecificDistribution(nn.Module):
    """ISD: Gaussian and flow parameters amortised from the global image feature.

    Args:
        embed_dim: D.
        hidden_dim: H of the Gaussian encoder.
        num_flow_steps: K.
    """

    def __init__(self, embed_dim: int, hidden_dim: int, num_flow_steps: int) -> None:
        super().__init__()
        self.num_flow_steps = num_flow_steps
        self.encoder = GaussianEncoder(embed_dim, hidden_dim)
        self.flow_u = nn.Linear(embed_dim, num_flow_steps * embed_dim)
        self.flow_w = nn.Linear(embed_dim, num_flow_steps * embed_dim)
        self.flow_b = nn.Linear(embed_dim, num_flow_steps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) weights and zero biases (authors: VPB.py L241-250)."""
        for layer in (self.flow_u, self.flow_w, self.flow_b):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor, noise: torch.Tensor) -> FlowSample:
        """Draw ``R`` samples per image.

        Args:
            features: ``(N, D)`` global image features (not normalised).
            noise: ``(R, N, D)`` or ``(R, 1, D)`` standard-normal draws.

        Returns:
            Samples of shape ``(R, N, D)``.
        """
        num_images, embed_dim = features.shape
        mean, variance = self.encoder(features)
        z0 = _sample(mean, variance, noise)
        u = self.flow_u(features).view(num_images, self.num_flow_steps, embed_dim)
        w = self.flow_w(features).view(num_images, self.num_flow_steps, embed_dim)
        zk, log_det = planar_flow(z0, u, w, self.flow_b(features))
        return FlowSample(z0, zk, mean, variance, log_det)


class ImageAgnosticDistribution(nn.Module):
    """IAD: a learnable input vector and free flow parameters; the Gaussian encoder is shared and passed in.

    Args:
        embed_dim: D.
        num_flow_steps: K.
    """

    def __init__(self, embed_dim: int, num_flow_steps: int) -> None:
        super().__init__()
        self.state = nn.Parameter(torch.empty(1, embed_dim))
        self.flow_u = nn.Parameter(torch.empty(num_flow_steps, embed_dim))
        self.flow_w = nn.Parameter(torch.empty(num_flow_steps, embed_dim))
        self.flow_b = nn.Parameter(torch.empty(num_flow_steps))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Standard normals, as the authors initialise them (authors: PFL.py L178-182)."""
        for parameter in self.parameters():
            nn.init.normal_(parameter)

    def forward(self, encoder: GaussianEncoder, noise: torch.Tensor) -> FlowSample:
        """Draw samples from ``noise`` ``(R, D)``; returns samples ``(R, D)``."""
        mean, variance = encoder(self.state)
        z0 = _sample(mean, variance, noise)
        zk, log_det = planar_flow(z0, self.flow_u, self.flow_w, self.flow_b)
        return FlowSample(z0, zk, mean, variance, log_det)


class PromptShifts(NamedTuple):
    """Samples that shift the prompt vectors, and the KL divergence of their distributions.

    Attributes:
        context: ``(R, N, D)`` ISD samples, or ``None`` with the ISD off.
        normal: ``(R, D)`` normal IAD samples, or ``None`` with the IAD off.
        abnormal: ``(R, D)`` abnormal IAD samples, or ``None``.
        kl: Sum of the KL terms of the enabled distributions (a 0-d tensor).
    """

    context: torch.Tensor | None
    normal: torch.Tensor | None
    abnormal: torch.Tensor | None
    kl: torch.Tensor


def kl_divergence(sample: FlowSample, *, log_det_scale: float = 1.0) -> torch.Tensor:
    """One-sample Monte-Carlo KL between the flow's output distribution and N(0, I).

    ``log q0(z0) - sum_k log|det J_k| - log N(zK; 0, I)``, summed over D and averaged over the samples, with the
    2*pi constants dropped as the authors do (authors: loss.py L70-117).

    Args:
        sample: Samples of one distribution.
        log_det_scale: Factor on the log-determinant (the authors' IAD term uses ``1 / batch size``).

    Example:
        >>> z = torch.randn(4, 8)
        >>> standard = FlowSample(z, z, torch.zeros(8), torch.ones(8), torch.zeros(4))
        >>> float(kl_divergence(standard))
        0.0
    """
    log_q0 = -0.5 * (sample.variance.log() + (sample.z0 - sample.mean).square() / sample.variance)
    log_prior = -0.5 * sample.zk.square()
    per_sample = (log_q0 - log_prior).sum(dim=-1) - log_det_scale * sample.log_det
    return per_sample.mean()


class PromptDistributions(nn.Module):
    """The ISD and the two IADs of Bayes-PFL, each of which can be switched off for ablations.

    Args:
        config: Flow settings.
        embed_dim: D.
        hidden_dim: H of the Gaussian encoders.
    """

    def __init__(self, config: FlowConfig, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self.image_specific = (
            ImageSpecificDistribution(embed_dim, hidden_dim, config.num_flow_steps) if config.image_specific else None
        )
        if config.image_agnostic:
            self.state_encoder = GaussianEncoder(embed_dim, hidden_dim)
            self.normal = ImageAgnosticDistribution(embed_dim, config.num_flow_steps)
            self.abnormal = ImageAgnosticDistribution(embed_dim, config.num_flow_steps)

    def forward(
        self,
        features: torch.Tensor,
        context_noise: torch.Tensor,
        normal_noise: torch.Tensor,
        abnormal_noise: torch.Tensor,
    ) -> PromptShifts:
        """Sample the prompt shifts.

        Args:
            features: ``(N, D)`` global image features.
            context_noise: ``(R, N, D)``, or ``(R, 1, D)`` to share the draws across images.
            normal_noise: ``(R, D)``.
            abnormal_noise: ``(R, D)``.
        """
        kl = features.new_zeros(())
        context = normal = abnormal = None
        if self.image_specific is not None:
            sample = self.image_specific(features, context_noise)
            context, kl = sample.zk, kl + kl_divergence(sample)
        if self.config.image_agnostic:
            # The authors' broadcasting divides the IAD log-determinant by the batch size (loss.py L81-113).
            scale = 1.0 / features.shape[0] if self.config.iad_log_det_per_batch else 1.0
            normal_sample = self.normal(self.state_encoder, normal_noise)
            abnormal_sample = self.abnormal(self.state_encoder, abnormal_noise)
            normal, abnormal = normal_sample.zk, abnormal_sample.zk
            kl = kl + kl_divergence(normal_sample, log_det_scale=scale)
            kl = kl + kl_divergence(abnormal_sample, log_det_scale=scale)
        return PromptShifts(context, normal, abnormal, kl)
