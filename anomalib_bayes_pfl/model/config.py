# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Frozen configuration tree of the Bayes-PFL head.

``BayesPFL`` (the Lightning module) takes a flat list of plain arguments so that jsonargparse and checkpoints
can handle them; ``settings.py`` resolves them and turns them into a :class:`BayesPFLConfig`, and each sub-module
receives only its own part. Every default of the head is written once, here: the options' paper values in
``settings.py`` are read from these dataclasses (the Lightning arguments default to unset).

Symbols (paper / authors' flags): B ``num_prompts`` (``--prompt_num``), P ``context_len``
(``--prompt_context_len``), Q ``state_len`` (``--prompt_state_len``), K ``num_flow_steps`` (``--num_flows``),
R ``num_samples`` (``--sample_num``).
"""

from dataclasses import dataclass, field
from typing import Literal

ClipPrecision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class PromptConfig:
    """Learnable prompt bank: B sets of P context vectors and Q state vectors each.

    Args:
        num_prompts: B, the number of prompt sets in the bank.
        context_len: P, context vectors shared by the normal and abnormal prompt of a set.
        state_len: Q, state vectors, separate for the normal and the abnormal prompt.
    """

    num_prompts: int = 3
    context_len: int = 5
    state_len: int = 5

    def __post_init__(self) -> None:
        """Reject empty prompt banks early, with the argument name in the message."""
        for name in ("num_prompts", "context_len", "state_len"):
            if getattr(self, name) < 1:
                msg = f"{name} must be at least 1, got {getattr(self, name)}."
                raise ValueError(msg)


@dataclass(frozen=True)
class FlowConfig:
    """Prompt-flow distributions (paper §3.3-3.4).

    Args:
        num_flow_steps: K, planar steps after each Gaussian base distribution. ``0`` gives a plain Gaussian.
        image_specific: Shift the context vectors by samples of the image-specific distribution (ISD).
            ``False`` is the "ISD off" ablation.
        image_agnostic: Shift the state vectors by samples of the image-agnostic distributions (IAD).
            ``False`` is the "IAD off" ablation.
        iad_log_det_per_batch: Divide the IAD log-determinant by the batch size in the KL term, as the authors'
            loss does by broadcasting (paper §3.3-3.4; authors: loss.py L81-113). ``False`` uses the
            textbook single-sample estimate.
    """

    num_flow_steps: int = 10
    image_specific: bool = True
    image_agnostic: bool = True
    iad_log_det_per_batch: bool = True

    def __post_init__(self) -> None:
        """Reject negative flow lengths."""
        if self.num_flow_steps < 0:
            msg = f"num_flow_steps must be >= 0 (0 disables the planar flows), got {self.num_flow_steps}."
            raise ValueError(msg)


@dataclass(frozen=True)
class ScoringConfig:
    """Evaluation-time sampling and map post-processing.

    Args:
        num_samples: R, Monte-Carlo rounds per image at evaluation (the authors test with 10).
        smoothing_sigma: Standard deviation, in pixels of the model input, of the Gaussian applied to the anomaly
            map (the authors use 8 at 518 px). ``0`` disables smoothing.
        eval_seed: Seed of the generator that draws the evaluation noise once per model, so that scores are
            reproducible and do not depend on the batch composition.
    """

    num_samples: int = 10
    smoothing_sigma: float = 8.0
    eval_seed: int = 333

    def __post_init__(self) -> None:
        """Reject settings that would give empty or undefined averages."""
        if self.num_samples < 1:
            msg = f"num_samples must be at least 1, got {self.num_samples}."
            raise ValueError(msg)
        if self.smoothing_sigma < 0:
            msg = f"smoothing_sigma must be >= 0, got {self.smoothing_sigma}."
            raise ValueError(msg)


@dataclass(frozen=True)
class BayesPFLConfig:
    """Everything that shapes the Bayes-PFL head around a given CLIP.

    Args:
        tap_layers: 1-based numbers of the vision blocks whose patch tokens are tapped, like the authors'
            ``--features_list``. ``None`` takes the quarter points of the depth (6, 12, 18, 24 for ViT-L/14).
        residual_attention: Use the residual cross-modal attention (RCA). ``False`` is the "RCA off" ablation.
        attention_heads: Heads of the RCA attention (4 in the authors' code).
        clip_precision: Autocast precision of the frozen CLIP's two towers (``bf16`` or ``fp16`` for speed on
            GPUs); ``fp32`` leaves them to the trainer's precision (``--trainer.precision bf16-mixed``: bfloat16).
            The head always computes in float32. The authors run CLIP in float32.
        prompt: Prompt-bank sizes.
        flow: Distribution settings.
        scoring: Evaluation settings.
    """

    tap_layers: tuple[int, ...] | None = None
    residual_attention: bool = True
    attention_heads: int = 4
    clip_precision: ClipPrecision = "fp32"
    prompt: PromptConfig = field(default_factory=PromptConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        """Check the values that need no CLIP; :func:`resolve_tap_layers` checks the rest."""
        if self.clip_precision not in {"fp32", "bf16", "fp16"}:
            msg = f"clip_precision must be 'fp32', 'bf16' or 'fp16', got '{self.clip_precision}'."
            raise ValueError(msg)
        if self.tap_layers is not None and len(self.tap_layers) == 0:
            msg = "tap_layers must name at least one vision block, or be None for the quarter points of the depth."
            raise ValueError(msg)


def resolve_tap_layers(tap_layers: tuple[int, ...] | None, depth: int, model_name: str) -> tuple[int, ...]:
    """Return the 1-based tap layers, defaulting to the quarter points of ``depth``.

    Raises:
        ValueError: If a layer is outside ``1..depth``.
    """
    if tap_layers is None:
        if depth < 4:
            msg = f"'{model_name}' has {depth} vision blocks; pass tap_layers explicitly (1-based, 1..{depth})."
            raise ValueError(msg)
        return tuple(depth * quarter // 4 for quarter in range(1, 5))
    if any(layer < 1 or layer > depth for layer in tap_layers):
        example = tuple(depth * quarter // 4 for quarter in range(1, 5))
        msg = (
            f"tap_layers={tuple(tap_layers)} but '{model_name}' has {depth} blocks; use 1-based block numbers "
            f"in 1..{depth}, e.g. {example}."
        )
        raise ValueError(msg)
    return tuple(tap_layers)
