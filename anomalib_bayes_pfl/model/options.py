# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The options that decide a model's scores, and where each one comes from.

A checkpoint carries everything needed to score: ``anomalib test|predict|export --ckpt_path X`` with no
``--model.*`` option must score exactly as the run that wrote X. So every scoring option of ``BayesPFL`` defaults to
*unset* (``None``, or ``"auto"`` for ``clip_pretrained``, where ``None`` already means random weights). An unset option
takes the value stored with the trained head (a checkpoint loaded with ``--ckpt_path`` or ``--model.prompt_weights``),
and otherwise the paper's value. An option that is set and differs from the stored one is applied with a warning
that names both values, except those that shape the head's tensors: those are refused, since the stored weights
cannot load into another shape.
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint_files import PROMPT_WEIGHTS, read_checkpoint
from .config import BayesPFLConfig, FlowConfig, PromptConfig, ScoringConfig

logger = logging.getLogger(__name__)

AUTO = "auto"

_PROMPT, _FLOW, _SCORING, _CONFIG = PromptConfig(), FlowConfig(), ScoringConfig(), BayesPFLConfig()
# The paper's value of every scoring option (the authors' code, commit 8f155a0), used when nothing else sets it;
# the few-shot and review options, which the paper does not have, default to its zero-shot model and to no review.
PAPER_DEFAULTS: dict[str, Any] = {
    "clip_model": "ViT-L-14-336",
    "clip_pretrained": "openai",
    "clip_quick_gelu": False,
    "clip_precision": _CONFIG.clip_precision,
    "image_size": 518,
    "tap_layers": _CONFIG.tap_layers,
    "num_prompts": _PROMPT.num_prompts,
    "prompt_context_len": _PROMPT.context_len,
    "prompt_state_len": _PROMPT.state_len,
    "num_flow_steps": _FLOW.num_flow_steps,
    "num_samples": _SCORING.num_samples,
    "image_specific_distribution": _FLOW.image_specific,
    "image_agnostic_distribution": _FLOW.image_agnostic,
    "residual_attention": _CONFIG.residual_attention,
    "smoothing_sigma": _SCORING.smoothing_sigma,
    "eval_seed": _SCORING.eval_seed,
    "class_name": None,
    "image_score": "probability",
    "image_threshold": 0.5,
    "pixel_threshold": 0.5,
    "k_shot": 0,
    "few_shot_source": None,
    "false_alarm_rate": None,
    "calibration_images": 32,
    "uncertainty": "std",
    "review_fraction": 0.0,
}
# Options that change what a run reports beside the scores, never a score: a value given now replaces the stored one
# as a matter of course (logged, not warned).
REPORT_OPTIONS = frozenset({"uncertainty", "review_fraction"})
# Options that shape the head's tensors: a trained head cannot be scored under other values.
HEAD_SHAPE_OPTIONS = frozenset(
    {"clip_model", "tap_layers", "num_prompts", "prompt_context_len", "prompt_state_len", "num_flow_steps"}
)


def is_unset(name: str, value: Any) -> bool:
    """Whether ``value`` of option ``name`` leaves it to the checkpoint (or the paper)."""
    return value == AUTO if name == "clip_pretrained" else value is None


def _plain(value: Any) -> Any:
    """Compare sequences by their items: the command line gives lists, checkpoints may hold tuples."""
    return list(value) if isinstance(value, tuple | list) else value


def plain_options_differ(first: Any, second: Any) -> bool:
    """Whether two values of an option differ, sequences compared by their items."""
    return _plain(first) != _plain(second)


def resolve_options(given: Mapping[str, Any], stored: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    """Resolve every scoring option from the set ones, the stored ones and the paper's.

    Args:
        given: The scoring options as passed to ``BayesPFL``; unset ones are left to ``stored``.
        stored: Options stored with a trained head (``hyper_parameters`` of a checkpoint), or ``None``.
        source: What ``stored`` comes from, for the messages (e.g. ``"checkpoint results/.../model.ckpt"``).

    Raises:
        ValueError: If a set option that shapes the head differs from the stored one; the message names every
            such option with both values.
    """
    explicit = {name: value for name, value in given.items() if not is_unset(name, value)}
    stored = {name: stored[name] for name in PAPER_DEFAULTS if stored is not None and name in stored}
    differing = {
        name: (stored[name], value)
        for name, value in explicit.items()
        if name in stored and plain_options_differ(stored[name], value)
    }
    refused = {name: values for name, values in differing.items() if name in HEAD_SHAPE_OPTIONS}
    if refused:
        listed = "; ".join(f"{name}: {old!r} there, {new!r} given" for name, (old, new) in refused.items())
        msg = (
            f"the trained head of {source} cannot be scored with other shapes ({listed}). Leave these options out "
            f"to use the stored values, or train a new head with them."
        )
        raise ValueError(msg)
    for name, (old, new) in differing.items():
        log = logger.info if name in REPORT_OPTIONS else logger.warning
        log("%s: using %r from the command line instead of %r stored in %s.", name, new, old, source)
    return {name: _plain(explicit.get(name, stored.get(name, default))) for name, default in PAPER_DEFAULTS.items()}


def stored_options(path: str) -> dict[str, Any] | None:
    """The scoring options stored in an ``anomalib train`` checkpoint; ``None`` for files without them.

    The authors' released heads and bare state dicts carry no options: their configuration is the paper's.
    """
    if not Path(path).expanduser().is_file():
        return None
    checkpoint = read_checkpoint(path, "--model.prompt_weights", PROMPT_WEIGHTS)
    hyper_parameters = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    return dict(hyper_parameters) if isinstance(hyper_parameters, Mapping) else None


def plain_number(value: Any) -> Any:
    """A number as a plain ``int`` / ``float``, for checkpoints that load with ``weights_only``.

    jsonargparse hands its checked types (``PositiveInt``, ``OpenUnitInterval``) as subclasses, which such a load
    could not unpickle.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return int(value) if isinstance(value, int) else float(value)
