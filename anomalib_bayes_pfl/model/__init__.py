# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Bayes-PFL: Bayesian Prompt Flow Learning for zero-shot anomaly detection (CVPR 2025).

A frozen CLIP, a bank of learnable text prompts whose context and state vectors are shifted by samples of an
image-specific and an image-agnostic distribution (Gaussians pushed through planar flows), and a residual
cross-modal attention that aligns the sampled text embeddings with multi-layer patch features.

Example:
    >>> from anomalib_bayes_pfl import BayesPFL
    >>> from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
    >>> model = BayesPFL(clip_model=TINY_CLIP_CONFIG, clip_pretrained=None, image_size=64)
    >>> model.model.tap_layers
    (1, 2, 3, 4)

Paper:
    Qin et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025, arXiv 2503.10080.

See Also:
    :class:`anomalib.models.WinClip`, the zero-shot CLIP model built into anomalib.

The package is the first half of the pipeline, image to scores; ``lightning_model.py`` also composes the second half
(``calibration/``, ``reporting/``, ``deploy/``), which imports this package. So that none of them imports the
Lightning module by importing this package, ``BayesPFL`` is loaded when it is first asked for.
"""

from typing import Any

from .backbone import load_clip
from .config import BayesPFLConfig, FlowConfig, PromptConfig, ScoringConfig
from .loss import BayesPFLLoss
from .torch_model import BayesPFLModel


def __getattr__(name: str) -> Any:
    """``anomalib_bayes_pfl.model.BayesPFL``, imported at first use."""
    if name == "BayesPFL":
        from .lightning_model import BayesPFL

        return BayesPFL
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "BayesPFL",
    "BayesPFLConfig",
    "BayesPFLLoss",
    "BayesPFLModel",
    "FlowConfig",
    "PromptConfig",
    "ScoringConfig",
    "load_clip",
]
