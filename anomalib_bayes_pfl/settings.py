# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The options that decide a model's scores, resolved once, typed, and where each one comes from.

A checkpoint carries everything needed to score: ``anomalib test|predict|export --ckpt_path X`` with no
``--model.*`` option must score exactly as the run that wrote X. So every scoring option of ``BayesPFL`` defaults to
*unset* (``None``, or ``"auto"`` for ``clip_pretrained``, where ``None`` already means random weights). An unset option
takes the value stored with the trained head (a checkpoint loaded with ``--ckpt_path`` or ``--model.prompt_weights``),
and otherwise the paper's value. An option that is set and differs from the stored one is applied with a warning
that names both values, except those that shape the head's tensors: those are refused, since the stored weights
cannot load into another shape. :class:`BayesPFLSettings` holds the result, frozen; everything after the Lightning
module reads it by attribute.
"""

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jsonargparse.typing import restricted_number_type

from anomalib_bayes_pfl.model.config import BayesPFLConfig, FlowConfig, PromptConfig, ScoringConfig
from anomalib_bayes_pfl.model.uncertainty import UNCERTAINTY_UNITS, UncertaintyMeasure

logger = logging.getLogger(__name__)

AUTO = "auto"
# Options that change what a run reports beside the scores, never a score: a value given now replaces the stored one
# as a matter of course (logged, not warned).
REPORT_OPTIONS = frozenset({"uncertainty", "review_fraction", "review_rate", "export_uncertainty"})
# Options that shape the head's tensors: a trained head cannot be scored under other values.
HEAD_SHAPE_OPTIONS = frozenset(
    {"clip_model", "tap_layers", "num_prompts", "prompt_context_len", "prompt_state_len", "num_flow_steps"}
)
LABEL_THRESHOLDS = ("image_threshold", "pixel_threshold")
PAPER = "the paper's value"
# The review share as the command line checks it.
ReviewFraction = restricted_number_type("ReviewFraction", float, [(">=", 0), ("<", 1)])

_PROMPT, _FLOW, _SCORING, _CONFIG = PromptConfig(), FlowConfig(), ScoringConfig(), BayesPFLConfig()


@dataclass(frozen=True)
class BayesPFLSettings:
    """Every scoring option of a run, resolved. The defaults are the paper's (the authors' code, commit 8f155a0).

    The few-shot and review options, which the paper does not have, default to its zero-shot model and to no review.
    ``given`` names the options that the caller set (the command line, or Python arguments); ``stored_in`` the
    checkpoint that supplied the others, if any.
    """

    clip_model: str = "ViT-L-14-336"
    clip_pretrained: str | None = "openai"
    clip_quick_gelu: bool = False
    clip_precision: Literal["fp32", "bf16", "fp16"] = _CONFIG.clip_precision
    image_size: int = 518
    tap_layers: tuple[int, ...] | None = _CONFIG.tap_layers
    num_prompts: int = _PROMPT.num_prompts
    prompt_context_len: int = _PROMPT.context_len
    prompt_state_len: int = _PROMPT.state_len
    num_flow_steps: int = _FLOW.num_flow_steps
    num_samples: int = _SCORING.num_samples
    image_specific_distribution: bool = _FLOW.image_specific
    image_agnostic_distribution: bool = _FLOW.image_agnostic
    residual_attention: bool = _CONFIG.residual_attention
    smoothing_sigma: float = _SCORING.smoothing_sigma
    eval_seed: int = _SCORING.eval_seed
    class_name: str | None = None
    image_score: Literal["probability", "paper"] = "probability"
    image_threshold: float = 0.5
    pixel_threshold: float = 0.5
    k_shot: int = 0
    few_shot_source: str | None = None
    false_alarm_rate: float | None = None
    false_alarm_confidence: float | None = None
    calibration_images: int = 32
    uncertainty: UncertaintyMeasure = "std"
    review_fraction: float = 0.0
    review_rate: float | None = None
    export_uncertainty: bool = False
    given: frozenset[str] = frozenset()
    stored_in: str | None = None

    def __post_init__(self) -> None:
        """Reject sizes and counts that Python callers could pass unchecked (the command line checks its own)."""
        for name, minimum in (("image_size", 1), ("k_shot", 0), ("calibration_images", 1)):
            if getattr(self, name) < minimum:
                msg = f"{name} must be at least {minimum}, got {getattr(self, name)}."
                raise ValueError(msg)
        rates = ("false_alarm_rate", "false_alarm_confidence", "review_rate")
        for name, zero_allowed in (*((rate, False) for rate in rates), ("review_fraction", True)):
            rate = getattr(self, name)
            if rate is None:
                continue
            if not isinstance(rate, int | float) or not (0 <= rate < 1 if zero_allowed else 0 < rate < 1):
                msg = f"{name} must be a number in {'[' if zero_allowed else '('}0, 1), got {rate!r}."
                raise ValueError(msg)
        if self.uncertainty not in UNCERTAINTY_UNITS:
            msg = f"uncertainty must be one of {sorted(UNCERTAINTY_UNITS)}, got {self.uncertainty!r}."
            raise ValueError(msg)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The scoring options, in the order of ``BayesPFL``'s arguments."""
        return tuple(field.name for field in dataclasses.fields(cls) if field.name not in {"given", "stored_in"})

    @classmethod
    def resolve(
        cls, given: Mapping[str, Any], stored: Mapping[str, Any] | None = None, source: str = ""
    ) -> "BayesPFLSettings":
        """Resolve every scoring option from the set ones, the stored ones and the paper's.

        Args:
            given: The scoring options as passed to ``BayesPFL``; unset ones (:func:`is_unset`) are left to
                ``stored``.
            stored: Options stored with a trained head (``hyper_parameters`` of a checkpoint), or ``None``.
            source: What ``stored`` comes from, for the messages (e.g. ``"checkpoint results/.../model.ckpt"``).

        Raises:
            ValueError: If a set option that shapes the head differs from the stored one; the message names every
                such option with both values.
        """
        names = cls.option_names()
        explicit = {name: _plain(value) for name, value in given.items() if name in names and not is_unset(name, value)}
        kept = {name: _plain(stored[name]) for name in names if stored is not None and name in stored}
        differing = {
            name: (kept[name], value) for name, value in explicit.items() if name in kept and kept[name] != value
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
        values = {**kept, **explicit}
        fixed = [name for name in LABEL_THRESHOLDS if name in explicit]
        if fixed and kept.get("false_alarm_rate") is not None and "false_alarm_rate" not in explicit:
            logger.warning(
                "--model.%s given: labelling with fixed thresholds, not with the thresholds calibrated for a "
                "false-alarm rate of %s that the loaded head stores.",
                fixed[0],
                kept["false_alarm_rate"],
            )
            values["false_alarm_rate"] = None
        values.update(_one_review_rule(explicit, kept))
        if values.get("tap_layers") is not None:
            values["tap_layers"] = tuple(values["tap_layers"])
        return cls(**values, given=frozenset(explicit), stored_in=source if stored is not None else None)

    def source_of(self, name: str) -> str:
        """Where option ``name`` came from: the caller, the checkpoint, or the paper."""
        if name in self.given:
            return "the command line"
        return self.stored_in if self.stored_in is not None else PAPER

    @property
    def calibrates(self) -> bool:
        """Whether the run calibrates thresholds on normal images: for false alarms, for review, or both."""
        return self.false_alarm_rate is not None or self.review_rate is not None

    def check_labels(self) -> None:
        """Refuse options that contradict each other: two rules for one label, or a confidence with no rate.

        Called when a run starts, not when the model is built: anomalib's command line would bury the message in a
        type-validation report.
        """
        fixed = [name for name in LABEL_THRESHOLDS if name in self.given]
        if self.false_alarm_rate is not None and fixed:
            msg = (
                f"--model.{fixed[0]} and --model.false_alarm_rate {self.false_alarm_rate} cannot both set the labels; "
                f"leave out one of them."
            )
            raise ValueError(msg)
        if self.review_rate is not None and self.review_fraction:
            msg = (
                f"--model.review_rate {self.review_rate} (each part on its own) and --model.review_fraction "
                f"{self.review_fraction} (a share of each category's run) cannot both mark images for review; leave "
                f"out one of them."
            )
            raise ValueError(msg)
        if self.false_alarm_confidence is not None and not self.calibrates:
            msg = (
                f"--model.false_alarm_confidence {self.false_alarm_confidence} holds for a calibrated rate: add "
                f"--model.false_alarm_rate and / or --model.review_rate, or leave it out."
            )
            raise ValueError(msg)

    def hyperparameters(self) -> dict[str, Any]:
        """The options as checkpoints store them: plain values, loadable with ``weights_only``."""
        values = {name: getattr(self, name) for name in self.option_names()}
        return {**values, "tap_layers": list(self.tap_layers) if self.tap_layers is not None else None}

    def head_config(self, *, iad_log_det_per_batch: bool) -> BayesPFLConfig:
        """The configuration of the torch model these options build."""
        return BayesPFLConfig(
            tap_layers=self.tap_layers,
            residual_attention=self.residual_attention,
            clip_precision=self.clip_precision,
            prompt=PromptConfig(self.num_prompts, self.prompt_context_len, self.prompt_state_len),
            flow=FlowConfig(
                self.num_flow_steps,
                self.image_specific_distribution,
                self.image_agnostic_distribution,
                iad_log_det_per_batch,
            ),
            scoring=ScoringConfig(self.num_samples, self.smoothing_sigma, self.eval_seed),
        )

    def differs_in_scores_from(self, other: "BayesPFLSettings") -> bool:
        """Whether the two would build or score another model (the report options and sources do not count)."""
        mine, theirs = self.hyperparameters(), other.hyperparameters()
        return any(mine[name] != theirs[name] for name in mine if name not in REPORT_OPTIONS)


PAPER_DEFAULTS: dict[str, Any] = BayesPFLSettings().hyperparameters()


def _one_review_rule(explicit: Mapping[str, Any], kept: Mapping[str, Any]) -> dict[str, Any]:
    """A review rule given now replaces the other one stored with a head (both given are refused later)."""
    if explicit.get("review_rate") is not None and kept.get("review_fraction") and "review_fraction" not in explicit:
        logger.info("--model.review_rate given: the review_fraction stored with the head is not used.")
        return {"review_fraction": 0.0}
    if explicit.get("review_fraction") and kept.get("review_rate") is not None and "review_rate" not in explicit:
        logger.info("--model.review_fraction given: the review_rate stored with the head is not used.")
        return {"review_rate": None}
    return {}


def is_unset(name: str, value: Any) -> bool:
    """Whether ``value`` of option ``name`` leaves it to the checkpoint (or the paper)."""
    return value == AUTO if name == "clip_pretrained" else value is None


def plain_number(value: Any) -> Any:
    """A number as a plain ``int`` / ``float``, for checkpoints that load with ``weights_only``.

    jsonargparse hands its checked types (``PositiveInt``, ``OpenUnitInterval``) as subclasses, which such a load
    could not unpickle.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return int(value) if isinstance(value, int) else float(value)


def same_option(first: Any, second: Any) -> bool:
    """Whether two values of an option are the same, sequences compared by their items."""
    return _plain(first) == _plain(second)


def _plain(value: Any) -> Any:
    """A value as options are compared and stored: sequences as lists, numbers as plain numbers.

    The command line gives lists, checkpoints may hold tuples.
    """
    return list(value) if isinstance(value, tuple | list) else plain_number(value)
