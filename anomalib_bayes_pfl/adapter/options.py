# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The options of ``BayesPFL`` as given and as resolved, and the torch model and categories that follow from them.

The torch model is built from the resolved options, never from the arguments: ``anomalib test|predict --ckpt_path X``
builds the CLIP and head that X was trained with, not the defaults of an unset command line. The module holds one
:class:`ResolvedOptions` and builds when it first needs the model.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import Trainer

from anomalib_bayes_pfl.calibration import check_calibration
from anomalib_bayes_pfl.data.class_names import ImageCategory, class_name_source, image_categories
from anomalib_bayes_pfl.model.checkpoint_files import PROMPT_WEIGHTS, read_checkpoint
from anomalib_bayes_pfl.model.torch_model import BayesPFLModel
from anomalib_bayes_pfl.settings import BayesPFLSettings, same_option

from .building import build_model
from .command_line import export_model_options


class ResolvedOptions:
    """The options a caller gave, the settings resolved from them and a stored head, and what the head is built with.

    Args:
        given: The scoring options as passed (unset ones ``None``, ``clip_pretrained`` ``"auto"``).
        iad_log_det_per_batch: The authors' division of the image-agnostic log-determinant (a training option).
        prompt_weights: A trained head to load; its stored options fill those left unset.
    """

    def __init__(self, given: Mapping[str, Any], *, iad_log_det_per_batch: bool, prompt_weights: str | None) -> None:
        self.given = dict(given)
        self.iad_log_det_per_batch = iad_log_det_per_batch
        self.prompt_weights = prompt_weights
        stored = read_checkpoint(prompt_weights, "--model.prompt_weights", PROMPT_WEIGHTS) if prompt_weights else None
        hyper_parameters = stored.get("hyper_parameters") if isinstance(stored, Mapping) else None
        self.settings = BayesPFLSettings.resolve(self.given, hyper_parameters, f"prompt weights {prompt_weights}")

    def build_model(self) -> BayesPFLModel:
        """The frozen CLIP and the head of the resolved options, with ``prompt_weights`` loaded if given."""
        return build_model(
            self.settings, iad_log_det_per_batch=self.iad_log_det_per_batch, prompt_weights=self.prompt_weights
        )

    def take_checkpoint(self, checkpoint: Mapping[str, Any], trainer: Trainer | None, model_class: type) -> bool:
        """Resolve again, the ``checkpoint``'s stored options filling those left unset; whether the scores change.

        Loaded alone (``load_from_checkpoint``, no ``trainer``, as ``anomalib export --ckpt_path`` loads), the
        arguments are the checkpoint's own and the export's ``--model.*`` options, which anomalib drops: only those
        that differ from the stored ones count as given.
        """
        stored = checkpoint.get("hyper_parameters") or {}
        if trainer is None:
            given = {**self.given, **export_model_options(model_class)}
            options = {name: value for name, value in given.items() if name in BayesPFLSettings.option_names()}
            self.given = {name: value for name, value in options.items() if not same_option(stored.get(name), value)}
        source = f"checkpoint {getattr(trainer, 'ckpt_path', None) or ''}".strip()
        settings = BayesPFLSettings.resolve(self.given, stored, source)
        changed = settings.differs_in_scores_from(self.settings)
        self.settings = settings
        return changed

    def check(self) -> None:
        """Refuse options that contradict each other (labels, calibration), before any image is read."""
        self.settings.check_labels()
        check_calibration(self.settings)

    def image_categories(
        self,
        image_paths: Sequence[str | None] | None,
        count: int | None,
        trainer: Trainer | None,
        model: BayesPFLModel | None,
    ) -> list[ImageCategory]:
        """Each image's dataset, category and class name, by the one rule (``data/class_names.py``).

        The ``trainer``'s datamodule names the categories it holds; the ``model``'s references, the one category an
        image without a path gets.
        """
        datamodule = getattr(trainer, "datamodule", None)
        stored = list(model.references.categories) if model is not None else []
        source = class_name_source(self.settings.given, self.settings.stored_in)
        count = len(image_paths or []) if count is None else count
        return image_categories(image_paths, count, class_name=self.settings.class_name, datamodule=datamodule,
                                stored_categories=stored, class_name_source=source)  # fmt: skip
