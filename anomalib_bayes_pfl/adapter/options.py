# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The options of ``BayesPFL`` resolved, and the torch model built from them at first use.

Building waits until the options are known, so that ``anomalib test|predict --ckpt_path X`` builds the CLIP and head
that X was trained with, never the defaults of an unset command line. :class:`ResolvedModel` is a base of ``BayesPFL``:
the module sets ``_given_options``, ``_owns_pre_processor``, ``iad_log_det_per_batch`` and ``prompt_weights``, then
calls :meth:`ResolvedModel._use_settings`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from anomalib.pre_processing import PreProcessor

from anomalib_bayes_pfl.data.class_names import ImageCategory, class_name_source, image_categories
from anomalib_bayes_pfl.settings import BayesPFLSettings, same_option

from .building import build_model, set_image_size
from .command_line import export_model_options
from .torch_model import BayesPFLModel


class ResolvedModel:
    """Resolved options (``settings``), the torch model built from them, and each image's category by the one rule."""

    settings: BayesPFLSettings
    _given_options: dict[str, Any]
    _owns_pre_processor: bool
    iad_log_det_per_batch: bool
    prompt_weights: str | None

    def _use_settings(self, settings: BayesPFLSettings) -> None:
        """Take resolved options; checkpoints store them, so that they carry everything needed to score."""
        self.settings = settings
        self.hparams.update(settings.hyperparameters())
        if self._owns_pre_processor and isinstance(self.pre_processor, PreProcessor):
            set_image_size(self.pre_processor, settings.image_size)
        if self.is_built:
            self.model.few_shot = settings.k_shot > 0
        self.apply_export_thresholds()

    def current_settings(self) -> BayesPFLSettings:
        """The options now: reporting components read them when a run uses them (a checkpoint may change them)."""
        return self.settings

    @property
    def is_built(self) -> bool:
        """Whether the CLIP and the head exist; they are built at first use, once the options are known."""
        return "model" in self._modules

    @property
    def model(self) -> BayesPFLModel:
        """The torch model, built from the resolved options at first use (``building.py``)."""
        if not self.is_built:
            self._build()
        return self._modules["model"]

    def _build(self) -> None:
        model = build_model(
            self.settings, iad_log_det_per_batch=self.iad_log_det_per_batch, prompt_weights=self.prompt_weights
        )
        self.model = model.to(self.device).train(self.training)  # built late: take the module's mode
        self.apply_export_thresholds()

    def _apply_checkpoint_options(self, checkpoint: Mapping[str, Any]) -> None:
        """Resolve the options again, a checkpoint's stored ones filling those left unset; rebuild if they differ."""
        stored = checkpoint.get("hyper_parameters") or {}
        if self._trainer is None:  # load_from_checkpoint: the arguments are the checkpoint's own and the caller's
            given = {**self._given_options, **export_model_options(type(self))}  # and those anomalib export drops
            options = {name: value for name, value in given.items() if name in BayesPFLSettings.option_names()}
            self._given_options = {
                name: value for name, value in options.items() if not same_option(stored.get(name), value)
            }
        source = f"checkpoint {getattr(self._trainer, 'ckpt_path', None) or ''}".strip()
        settings = BayesPFLSettings.resolve(self._given_options, stored, source)
        rebuild = settings.differs_in_scores_from(self.settings)
        self._use_settings(settings)
        self.settings.check_labels()
        if rebuild or not self.is_built:
            self._build()

    def image_categories(
        self, image_paths: Sequence[str | None] | None, count: int | None = None
    ) -> list[ImageCategory]:
        """Each image's dataset, category and class name, by the one rule (``data/class_names.py``)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        count = len(image_paths) if count is None else count
        stored = list(self.model.references.categories) if self.is_built else []
        source = class_name_source(self.settings.given, self.settings.stored_in)
        return image_categories(image_paths, count, class_name=self.settings.class_name, datamodule=datamodule,
                                stored_categories=stored, class_name_source=source)  # fmt: skip

    def class_names_of(self, image_paths: Sequence[str]) -> list[str]:
        """The word in each image's prompts."""
        return [name.class_name for name in self.image_categories(image_paths)]
