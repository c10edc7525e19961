# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Bayes-PFL: Bayesian Prompt Flow Learning for zero-shot anomaly detection (CVPR 2025).

A frozen CLIP, a bank of learnable text prompts whose context and state vectors are shifted by samples of an
image-specific and an image-agnostic distribution (Gaussians pushed through planar flows), and a residual
cross-modal attention that aligns the sampled text embeddings with multi-layer patch features.

Example:
    >>> from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
    >>> from anomalib_bayes_pfl.model import BayesPFLConfig, BayesPFLModel, load_clip
    >>> BayesPFLModel(BayesPFLConfig(), load_clip(TINY_CLIP_CONFIG, None)).tap_layers
    (1, 2, 3, 4)

Paper:
    Qin et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025, arXiv 2503.10080.

See Also:
    :class:`anomalib_bayes_pfl.BayesPFL`, the anomalib model built on it (``adapter/``), and
    :class:`anomalib.models.WinClip`, the zero-shot CLIP model built into anomalib.

The torch method only: it imports nothing of the floors above it (settings, calibration, reporting, deploy, the
anomalib adapter).
"""

from .backbone import load_clip
from .config import BayesPFLConfig, FlowConfig, PromptConfig, ScoringConfig
from .loss import BayesPFLLoss
from .torch_model import BayesPFLModel

__all__ = [
    "BayesPFLConfig",
    "BayesPFLLoss",
    "BayesPFLModel",
    "FlowConfig",
    "PromptConfig",
    "ScoringConfig",
    "load_clip",
]
