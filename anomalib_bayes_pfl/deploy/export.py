# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""anomalib's torch, ONNX and OpenVINO exports, with what BayesPFL needs around them.

An exported model sees tensors only, so it scores one class name, with that class's references and thresholds
(``calibration/thresholds.py`` names it): the export says which, or refuses when the name has no references or a
checkpoint of several parts names none. By default it returns anomalib's four fields, which anomalib's inferencers
read; with ``export_uncertainty`` it also returns the uncertainty, its map and, with ``review_rate``, the review mark
(:class:`~anomalib_bayes_pfl.batch.BayesPFLInferenceBatch`, read by ``inferencer.py``). ONNX files, and the
OpenVINO IRs made from them, resize by matrix products (``resize.py``) at opset 18. INT8 calibrates on training
images only (``openvino.py``). Every export names :class:`~anomalib_bayes_pfl.BayesPFLInferencer`, which reads it
whatever it returns, in its last log lines and in its file (the torch file's ``metadata``, ONNX ``metadata_props``,
which OpenVINO keeps in the IR's ``rt_info`` under ``framework``); an export that leaves out the review mark of a
checkpoint calibrated for review says so last.

:class:`ExportMixin` is a base of ``BayesPFL`` before anomalib's module, whose exports it wraps: it uses the
module's ``model``, ``is_built``, ``settings``, ``pre_processor`` and ``post_processor``, and keeps the
post-processor, which labels exported models, at the exported class name's thresholds.
"""

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.data import AnomalibDataModule, InferenceBatch
from anomalib.deploy import CompressionType, ExportType

from anomalib_bayes_pfl.batch import BayesPFLInferenceBatch
from anomalib_bayes_pfl.calibration.thresholds import check_calibrated, export_class_name, thresholds_of, uncalibrated
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
INFERENCER = "anomalib_bayes_pfl.BayesPFLInferencer"
# Loggers of the ONNX optimiser that torch.onnx.export runs: at info they name each of about 1,300 deduplicated
# initializers and each rewrite, some 2,500 lines.
ONNX_OPTIMIZER_LOGGERS = ("onnx_ir", "onnxscript")
ANOMALIB_FIELDS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")


def check_exportable(
    model: BayesPFLModel,
    settings: BayesPFLSettings,
    thresholds: tuple[float, float] | None,
    review_threshold: float | None = None,
) -> None:
    """Say which class name, shots, size and thresholds an export bakes in, or refuse what it cannot score.

    Raises:
        ValueError: If the head stores several categories and no class name says which, the class name has no
            references while the model is few-shot, no calibrated image threshold while the run calibrates one, or
            no calibrated review threshold while the export marks review.
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
    if settings.false_alarm_rate is not None and uncalibrated(model.references, [name], "image_threshold"):
        msg = (
            f"--model.false_alarm_rate {settings.false_alarm_rate}: the head stores no calibrated image threshold for "
            f"class name '{name}', so the exported model could only label with the fixed {settings.image_threshold}. "
            f"Calibrate it first: run anomalib train (or test) with --model.prompt_weights <head> "
            f"--model.false_alarm_rate {settings.false_alarm_rate} on data holding normal images of '{name}', then "
            f"export the checkpoint it writes; or export with fixed thresholds (--model.image_threshold <value>)."
        )
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


def export_metadata(settings: BayesPFLSettings, class_name: str, review: bool) -> dict[str, str]:
    """What an exported file says of itself: which inferencer reads it, how, and what it scores and returns."""
    outputs = [*ANOMALIB_FIELDS, *(("uncertainty", "uncertainty_map") if settings.export_uncertainty else ())]
    outputs += ["needs_review"] if settings.export_uncertainty and review else []
    readers = "anomalib's TorchInferencer and OpenVINOInferencer too" if not settings.export_uncertainty else "only it"
    return {
        "inferencer": INFERENCER,
        "usage": "from anomalib_bayes_pfl import BayesPFLInferencer; "
        "BayesPFLInferencer('<this file>').predict('part.png').decision",
        "readers": f"BayesPFLInferencer; {readers}",
        "class_name": class_name,
        "outputs": ", ".join(outputs),
    }


def say_how_to_load(path: Path, settings: BayesPFLSettings) -> None:
    """End an export with how to load it, and, last, what a checkpoint calibrated for review loses without it."""
    readers = "anomalib's inferencers read it too"
    if settings.export_uncertainty:
        readers = "anomalib's TorchInferencer and OpenVINOInferencer cannot: it also returns the uncertainty"
    trust = " (a pickle: it loads only with TRUST_REMOTE_CODE=1 set)" if path.suffix == ".pt" else ""
    logger.info(
        "Load it with BayesPFLInferencer (%s): from anomalib_bayes_pfl import BayesPFLInferencer; "
        "BayesPFLInferencer('%s').predict('part.png').decision%s",
        readers,
        path,
        trust,
    )
    if settings.review_rate is not None and not settings.export_uncertainty:
        logger.warning(
            "The review mark is left out: the checkpoint sends uncertain parts to a person (review_rate %s), but "
            "this export returns anomalib's four fields, so it never does. Export with --model.export_uncertainty "
            "true to keep it (read by BayesPFLInferencer).",
            settings.review_rate,
        )


@contextmanager
def quiet_onnx_optimizer() -> Iterator[None]:
    """Within the block, the ONNX optimiser logs warnings and errors only, not a line per rewrite."""
    loggers = [logging.getLogger(name) for name in ONNX_OPTIMIZER_LOGGERS]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(max(each.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def _add_onnx_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``metadata`` into the ONNX file's ``metadata_props`` (its weights, if stored beside it, untouched)."""
    import onnx  # the onnx extra, which the export has just used

    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(model, {**{entry.key: entry.value for entry in model.metadata_props}, **metadata})
    onnx.save(model, str(path))


class ExportMixin:
    """Exports as anomalib makes them, checked first; ONNX and OpenVINO with a resize every runtime reproduces."""

    _int8_calibration_paths: list[Path]
    _exporting_openvino = False  # the ONNX file made on the way is no export of its own

    def apply_export_thresholds(self) -> None:
        """Give an exported model its class name, and the post-processor, which labels it, that name's thresholds."""
        references = self.model.references if self.is_built else None
        name = export_class_name(references, self.settings)
        if self.is_built:
            self.model.default_class_name = name
        if isinstance(self.post_processor, ProbabilityPostProcessor):
            thresholds = thresholds_of(references, self.settings, [name])
            review = float(thresholds.review) if thresholds.review is not None else math.nan
            image, pixel = float(thresholds.image), float(thresholds.pixel)
            if math.isnan(image):  # not calibrated (yet): the export refuses it (check_exportable)
                image, pixel = self.settings.image_threshold, self.settings.pixel_threshold
            self.post_processor.set_thresholds(image, pixel, None if math.isnan(review) else review)

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
        A model loaded in Python and called refuses, as its export does, a class name without the thresholds the run
        calibrates: the post-processor would otherwise label with the fixed ones.
        """
        reviews = self.settings.export_uncertainty and self.settings.review_rate is not None
        if self.is_built:
            check_calibrated(self.model.references, self.settings, [self.model.default_class_name], review=reviews)
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

    def _metadata(self) -> dict[str, str]:
        review = getattr(self.post_processor, "review_threshold", None) is not None
        return export_metadata(self.settings, self.model.default_class_name, review)

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export as anomalib does (``{"model": module}``, which its ``TorchInferencer`` reads), with ``metadata``.

        Refused at once for a class name without references or calibrated thresholds.
        """
        self._check_exportable()
        folder = Path(export_root) / "weights" / ExportType.TORCH.value
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{model_file_name}.pt"
        torch.save({"model": self, "metadata": self._metadata()}, path)
        say_how_to_load(path, self.settings)
        return path

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, with a resize that every ONNX runtime computes alike, at opset 18.

        Opset 18, because the positional-embedding resize is antialiased, which the exporter cannot convert to
        anomalib's default opset 14 (it would log a failed conversion and keep 18). The optimiser's info lines are
        left out; the file names its inferencer in ``metadata_props``.
        """
        self._check_exportable()
        kwargs.setdefault("opset_version", ONNX_OPSET)
        with resize_by_matrices(self.pre_processor), quiet_onnx_optimizer():
            path = super().to_onnx(*args, **kwargs)
        _add_onnx_metadata(path, self._metadata())
        if not self._exporting_openvino:
            say_how_to_load(path, self.settings)
        return path

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
        self._exporting_openvino = True
        try:
            path = super().to_openvino(
                export_root, model_file_name, input_size, compression_type, datamodule, *args, **kwargs
            )
        finally:
            self._exporting_openvino = False
        warn_if_cpu_lowers_precision()
        say_how_to_load(path, self.settings)
        return path

    def _post_training_quantization_ov(self, model: "ov.Model", datamodule: AnomalibDataModule) -> "ov.Model":
        """Calibrate INT8 on the training (auxiliary) images that :meth:`to_openvino` chose: never on test images."""
        del datamodule  # its images were chosen before the export
        return quantize(model, self._int8_calibration_paths)
