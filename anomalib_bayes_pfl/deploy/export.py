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

:class:`BayesPFLExporter` is the exporter a ``BayesPFL`` module holds: its export methods hand it the module, whose
exports it wraps (anomalib's own implementations, on the module's ``model``, ``pre_processor`` and
``post_processor``), and the module's settings. The module keeps its post-processor, which labels exported models,
at the exported class name's thresholds (``calibration/thresholds.py``).
"""

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.data import AnomalibDataModule, InferenceBatch
from anomalib.deploy import CompressionType, ExportType
from anomalib.models.components import AnomalibModule

from anomalib_bayes_pfl.batch import BayesPFLInferenceBatch
from anomalib_bayes_pfl.calibration.post_processor import ProbabilityPostProcessor
from anomalib_bayes_pfl.calibration.thresholds import (
    check_calibrated,
    export_class_name,
    export_thresholds,
    uncalibrated,
)
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


class BayesPFLExporter:
    """anomalib's exports of a ``BayesPFL`` module, checked first; ONNX and OpenVINO with a resize every runtime runs.

    The module's ``forward``, ``to_torch``, ``to_onnx``, ``to_openvino`` and ``_post_training_quantization_ov``, which
    anomalib calls, hand it the module and its settings. It calls anomalib's own implementations on the module, and
    keeps only what one export needs between those calls (the INT8 images, whether an OpenVINO export is under way).
    """

    def __init__(self) -> None:
        self.int8_calibration_paths: list[Path] = []
        self.exporting_openvino = False  # the ONNX file made on the way is no export of its own

    @staticmethod
    def label_exports(model: BayesPFLModel | None, post_processor: Any, settings: BayesPFLSettings) -> None:
        """Give ``model`` the class name an export scores, and ``post_processor``, which labels it, its thresholds.

        Called whenever the options, the references or the thresholds change (``model`` is ``None`` until built).
        """
        thresholds = export_thresholds(model.references if model is not None else None, settings)
        if model is not None:
            model.default_class_name = thresholds.class_name
        if isinstance(post_processor, ProbabilityPostProcessor):
            post_processor.set_thresholds(thresholds.image, thresholds.pixel, thresholds.review)

    @staticmethod
    def check(module: AnomalibModule, settings: BayesPFLSettings) -> None:
        """Refuse, before anything is written, an export that could not score as the checkpoint does."""
        check_exportable(module.model, settings, getattr(module.post_processor, "thresholds", None),
                         getattr(module.post_processor, "review_threshold", None))  # fmt: skip

    @staticmethod
    def forward(
        module: AnomalibModule, settings: BayesPFLSettings, batch: torch.Tensor, *, refuse_uncalibrated: bool = True
    ) -> InferenceBatch | BayesPFLInferenceBatch:
        """What an exported model computes: anomalib's fields, and with ``export_uncertainty`` the uncertainty too.

        The uncertainty comes from the same pass as the scores, which are the same bit for bit (``torch_model.py``).
        A model loaded in Python and called refuses, as its export does, a class name without the thresholds the run
        calibrates: the post-processor would otherwise label with the fixed ones. ``refuse_uncalibrated`` is ``False``
        for a module whose head is built by this call: it holds no references yet.
        """
        reviews = settings.export_uncertainty and settings.review_rate is not None
        model: BayesPFLModel = module.model
        if refuse_uncalibrated:
            check_calibrated(model.references, settings, [model.default_class_name], review=reviews)
        if not settings.export_uncertainty:
            return AnomalibModule.forward(module, batch)
        images = module.pre_processor(batch) if module.pre_processor else batch
        scores = model.score(images, uncertainty=settings.uncertainty)
        labelled = InferenceBatch(pred_score=scores.pred_score, anomaly_map=scores.anomaly_map)
        labelled = module.post_processor(labelled) if module.post_processor else labelled
        review = getattr(module.post_processor, "review_threshold", None)
        needs_review = ProbabilityPostProcessor.review(scores.uncertainty, review) if review is not None else None
        return BayesPFLInferenceBatch(
            *labelled, uncertainty=scores.uncertainty, uncertainty_map=scores.uncertainty_map, needs_review=needs_review
        )

    @staticmethod
    def _metadata(module: AnomalibModule, settings: BayesPFLSettings) -> dict[str, str]:
        review = getattr(module.post_processor, "review_threshold", None) is not None
        return export_metadata(settings, module.model.default_class_name, review)

    def to_torch(
        self, module: AnomalibModule, settings: BayesPFLSettings, export_root: Path | str, model_file_name: str
    ) -> Path:
        """Export as anomalib does (``{"model": module}``, which its ``TorchInferencer`` reads), with ``metadata``.

        Refused at once for a class name without references or calibrated thresholds.
        """
        self.check(module, settings)
        folder = Path(export_root) / "weights" / ExportType.TORCH.value
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{model_file_name}.pt"
        torch.save({"model": module, "metadata": self._metadata(module, settings)}, path)
        say_how_to_load(path, settings)
        return path

    def to_onnx(self, module: AnomalibModule, settings: BayesPFLSettings, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, with a resize that every ONNX runtime computes alike, at opset 18.

        Opset 18, because the positional-embedding resize is antialiased, which the exporter cannot convert to
        anomalib's default opset 14 (it would log a failed conversion and keep 18). The optimiser's info lines are
        left out; the file names its inferencer in ``metadata_props``.
        """
        self.check(module, settings)
        kwargs.setdefault("opset_version", ONNX_OPSET)
        with resize_by_matrices(module.pre_processor), quiet_onnx_optimizer():
            path = AnomalibModule.to_onnx(module, *args, **kwargs)
        _add_onnx_metadata(path, self._metadata(module, settings))
        if not self.exporting_openvino:
            say_how_to_load(path, settings)
        return path

    def to_openvino(
        self,
        module: AnomalibModule,
        settings: BayesPFLSettings,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        *args: Any,
        int8_calibration_images: int = INT8_CALIBRATION_IMAGES,
        **kwargs: Any,
    ) -> Path:
        """Export as anomalib does, through the module's ``to_onnx``, with INT8 calibrated on training images.

        Without ``input_size`` the IR takes images of any size, as the checkpoint does. ``int8_calibration_images``
        caps the training images that ``INT8_PTQ`` calibrates on (``anomalib export`` keeps NNCF's 300).
        """
        check_openvino_export(compression_type, datamodule)  # the exportability check runs in to_onnx
        if compression_type == CompressionType.INT8_PTQ:  # a wrong --data stops before the export, not after
            self.int8_calibration_paths = calibration_image_paths(datamodule, int8_calibration_images)
        self.exporting_openvino = True
        try:
            path = AnomalibModule.to_openvino(
                module, export_root, model_file_name, input_size, compression_type, datamodule, *args, **kwargs
            )
        finally:
            self.exporting_openvino = False
        warn_if_cpu_lowers_precision()
        say_how_to_load(path, settings)
        return path

    def quantize(self, model: "ov.Model") -> "ov.Model":
        """Calibrate INT8 on the training (auxiliary) images that :meth:`to_openvino` chose: never on test images."""
        return quantize(model, self.int8_calibration_paths)
