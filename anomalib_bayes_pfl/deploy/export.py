# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""anomalib's torch, ONNX and OpenVINO exports, with what BayesPFL needs around them.

An exported model sees tensors only, so it scores one class name, with that class's references and thresholds
(``calibration/thresholds.py`` names it): the export says which, or refuses when the name has no references or a
checkpoint of several parts names none. By default it returns anomalib's four fields, which anomalib's inferencers
read; with ``export_uncertainty`` it also returns the uncertainty, its map and, with ``review_rate``, the review mark
(:class:`~anomalib_bayes_pfl.batch.BayesPFLInferenceBatch`, read by ``inferencer.py``). ONNX files, and the
OpenVINO IRs made from them, resize by matrix products (``resize.py``) at opset 18. INT8 calibrates on training
images only (``openvino.py``).

:class:`ExportMixin` is a base of ``BayesPFL`` before anomalib's module, whose exports it wraps: it uses the
module's ``model``, ``is_built``, ``settings``, ``pre_processor`` and ``post_processor``, and keeps the
post-processor, which labels exported models, at the exported class name's thresholds.
"""

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.data import AnomalibDataModule, InferenceBatch
from anomalib.deploy import CompressionType

from anomalib_bayes_pfl.batch import BayesPFLInferenceBatch
from anomalib_bayes_pfl.calibration.thresholds import export_class_name, thresholds_of
from anomalib_bayes_pfl.model.post_processor import ProbabilityPostProcessor
from anomalib_bayes_pfl.model.torch_model import BayesPFLModel
from anomalib_bayes_pfl.settings import BayesPFLSettings

from .openvino import (
    INT8_CALIBRATION_IMAGES,
    calibration_image_paths,
    check_openvino_export,
    quantize,
    warn_if_cpu_lowers_precision,
)
from .resize import resize_by_matrices

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

ONNX_OPSET = 18


def check_exportable(
    model: BayesPFLModel,
    settings: BayesPFLSettings,
    thresholds: tuple[float, float] | None,
    review_threshold: float | None = None,
) -> None:
    """Say which class name, shots, size and thresholds an export bakes in, or refuse what it cannot score.

    Raises:
        ValueError: If the head stores several categories and no class name says which, the class name has no
            references while the model is few-shot, or no calibrated review threshold while the export marks review.
    """
    stored = sorted(model.references.categories)
    fix = (
        "Export one model per class name with --model.class_name <name> (beside --ckpt_path or "
        "--model.prompt_weights <checkpoint>)."
    )
    if settings.class_name is None and len(stored) > 1:
        msg = f"the head stores few-shot references or calibrated thresholds for {stored}, and an exported model "
        msg += f"scores one class name. {fix}"
        raise ValueError(msg)
    name = export_class_name(model.references, settings)
    if model.few_shot and name not in stored:
        msg = f"the model is {settings.k_shot}-shot and has no references for class name '{name}' "
        msg += f"(it has them for {stored}). {fix}"
        raise ValueError(msg)
    if settings.export_uncertainty and settings.review_rate is not None and review_threshold is None:
        msg = (
            f"--model.review_rate {settings.review_rate}: the head stores no review threshold for class name "
            f"'{name}', so the exported model could not mark review. Calibrate it first: run anomalib train (or "
            f"test) with --model.prompt_weights <head> --model.review_rate {settings.review_rate} on data holding "
            f"normal images of '{name}', then export the checkpoint it writes."
        )
        raise ValueError(msg)
    if settings.class_name is None and not stored:
        logger.warning(
            "No class name given or stored: the exported model scores every image as '%s'. Export one model per "
            "part with --model.class_name <part> (and the checkpoint as --model.prompt_weights).",
            name,
        )
    outputs = f"uncertainty ({settings.uncertainty})" if settings.export_uncertainty else "no uncertainty"
    if settings.export_uncertainty and review_threshold is not None:
        outputs += f", review above {review_threshold:.4g}"
    logger.info(
        "Exporting BayesPFL for class name '%s'%s: %d-shot, %d px, image / pixel thresholds %s, %s.",
        name,
        " (the one category the head stores)" if settings.class_name is None and stored else "",
        settings.k_shot,
        settings.image_size,
        " / ".join(f"{value:.4g}" for value in thresholds) if thresholds else "none",
        outputs,
    )


class ExportMixin:
    """Exports as anomalib makes them, checked first; ONNX and OpenVINO with a resize every runtime reproduces."""

    _int8_calibration_paths: list[Path]

    def apply_export_thresholds(self) -> None:
        """Give an exported model its class name, and the post-processor, which labels it, that name's thresholds."""
        references = self.model.references if self.is_built else None
        name = export_class_name(references, self.settings)
        if self.is_built:
            self.model.default_class_name = name
        if isinstance(self.post_processor, ProbabilityPostProcessor):
            thresholds = thresholds_of(references, self.settings, [name])
            review = float(thresholds.review) if thresholds.review is not None else math.nan
            self.post_processor.set_thresholds(
                float(thresholds.image), float(thresholds.pixel), None if math.isnan(review) else review
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load the state, then label exported models with the thresholds it holds (a checkpoint's references)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.apply_export_thresholds()
        return result

    def _check_exportable(self) -> None:
        check_exportable(self.model, self.settings, getattr(self.post_processor, "thresholds", None),
                         getattr(self.post_processor, "review_threshold", None))  # fmt: skip

    def forward(self, batch: torch.Tensor, *args: Any, **kwargs: Any) -> InferenceBatch | BayesPFLInferenceBatch:
        """What an exported model computes: anomalib's fields, and with ``export_uncertainty`` the uncertainty too.

        The uncertainty comes from the same pass as the scores, which are the same bit for bit (``torch_model.py``).
        """
        if not self.settings.export_uncertainty:
            return super().forward(batch, *args, **kwargs)
        images = self.pre_processor(batch) if self.pre_processor else batch
        scores = self.model.score(images, uncertainty=self.settings.uncertainty)
        labelled = InferenceBatch(pred_score=scores.pred_score, anomaly_map=scores.anomaly_map)
        labelled = self.post_processor(labelled) if self.post_processor else labelled
        review = getattr(self.post_processor, "review_threshold", None)
        needs_review = ProbabilityPostProcessor.review(scores.uncertainty, review) if review is not None else None
        return BayesPFLInferenceBatch(
            *labelled, uncertainty=scores.uncertainty, uncertainty_map=scores.uncertainty_map, needs_review=needs_review
        )

    def to_torch(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, refused at once for a class name without references."""
        self._check_exportable()
        return super().to_torch(*args, **kwargs)

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, with a resize that every ONNX runtime computes alike, at opset 18.

        Opset 18, because the positional-embedding resize is antialiased, which the exporter cannot convert to
        anomalib's default opset 14 (it would log a failed conversion and keep 18).
        """
        self._check_exportable()
        kwargs.setdefault("opset_version", ONNX_OPSET)
        with resize_by_matrices(self.pre_processor):
            return super().to_onnx(*args, **kwargs)

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        *args: Any,
        int8_calibration_images: int = INT8_CALIBRATION_IMAGES,
        **kwargs: Any,
    ) -> Path:
        """Export as anomalib does, through :meth:`to_onnx`, with INT8 calibrated on training images.

        Without ``input_size`` the IR takes images of any size, as the checkpoint does. ``int8_calibration_images``
        caps the training images that ``INT8_PTQ`` calibrates on (``anomalib export`` keeps NNCF's 300).
        """
        check_openvino_export(compression_type, datamodule)  # the exportability check runs in to_onnx
        if compression_type == CompressionType.INT8_PTQ:  # a wrong --data stops before the export, not after
            self._int8_calibration_paths = calibration_image_paths(datamodule, int8_calibration_images)
        path = super().to_openvino(
            export_root, model_file_name, input_size, compression_type, datamodule, *args, **kwargs
        )
        warn_if_cpu_lowers_precision()
        return path

    def _post_training_quantization_ov(self, model: "ov.Model", datamodule: AnomalibDataModule) -> "ov.Model":
        """Calibrate INT8 on the training (auxiliary) images that :meth:`to_openvino` chose: never on test images."""
        del datamodule  # its images were chosen before the export
        return quantize(model, self._int8_calibration_paths)
