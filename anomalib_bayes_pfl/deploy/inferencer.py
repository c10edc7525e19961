# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Run a BayesPFL export on a part and decide: pass, fail, or a person.

anomalib's ``TorchInferencer`` and ``OpenVINOInferencer`` read the default export (four fields). A model exported
with ``--model.export_uncertainty true`` also returns the uncertainty, its map and, with ``review_rate``, the review
mark, which :class:`BayesPFLInferencer` reads from any of the three files: ``model.pt`` (torch), ``model.onnx`` or
``model.xml`` (both run by OpenVINO). A part that needs review goes to a person, whatever its label; the others pass or
fail on their label.

A ``model.pt`` is a pickle, which can run any code when loaded: as anomalib's ``TorchInferencer`` does, it is loaded
only with ``TRUST_REMOTE_CODE=1`` in the environment. ONNX and OpenVINO files hold no code and need no opt-in.
"""

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from anomalib_bayes_pfl.data.image_reader import as_image_batch

from .openvino import check_openvino_export

PASS, FAIL, PERSON = "pass", "fail", "person"
# OpenVINO computes in f32 unless told otherwise: some CPUs default to bf16, which moves the scores and so the marks.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
# anomalib's opt-in for unpickling a model file (``TorchInferencer``): the variable and the values that set it.
TRUST_REMOTE_CODE = "TRUST_REMOTE_CODE"
TRUSTED = frozenset({"1", "true"})


@dataclass
class BayesPFLPrediction:
    """An export's outputs for N images, as numpy arrays: maps ``(N, H, W)``, the rest ``(N,)``.

    ``uncertainty``, ``uncertainty_map`` and ``needs_review`` are ``None`` when the export does not return them.
    """

    pred_score: np.ndarray
    pred_label: np.ndarray
    anomaly_map: np.ndarray
    pred_mask: np.ndarray
    uncertainty: np.ndarray | None = None
    uncertainty_map: np.ndarray | None = None
    needs_review: np.ndarray | None = None

    @property
    def decision(self) -> list[str]:
        """Each part's decision: ``person`` if it needs review, else ``fail`` if labelled anomalous, else ``pass``."""
        review = self.needs_review if self.needs_review is not None else np.zeros_like(self.pred_label)
        marks = zip(review.tolist(), self.pred_label.tolist(), strict=True)
        return [PERSON if person else FAIL if failed else PASS for person, failed in marks]


class BayesPFLInferencer:
    """A BayesPFL export (``.pt``, ``.onnx`` or ``.xml``), loaded once and run on raw images of any size.

    Args:
        path: The exported file.
        device: OpenVINO's device for ``.onnx`` / ``.xml`` (``CPU``, ``GPU``); torch files run on the CPU.
        config: OpenVINO's compile options; by default f32 on every device, as the checkpoint scores.

    Raises:
        ValueError: For a ``model.pt`` without the ``TRUST_REMOTE_CODE=1`` opt-in (see the module docstring).

    ``BayesPFLInferencer("line/weights/openvino/model.xml").predict("part_0001.png").decision`` is ``['pass']``,
    ``['fail']`` or ``['person']``.
    """

    def __init__(self, path: str | Path, device: str = "CPU", config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            msg = f"{self.path} is not a file: give the exported model.pt, model.onnx or model.xml."
            raise FileNotFoundError(msg)
        if self.path.suffix == ".pt":
            if os.environ.get(TRUST_REMOTE_CODE, "0").lower() not in TRUSTED:
                msg = (
                    f"{self.path} is a pickle, and loading it runs any code it holds; as anomalib's TorchInferencer, "
                    f"BayesPFLInferencer loads it only if you trust its source and set {TRUST_REMOTE_CODE}=1 in the "
                    f"environment (export {TRUST_REMOTE_CODE}=1). ONNX and OpenVINO exports (model.onnx, model.xml) "
                    f"hold no code and need no opt-in."
                )
                raise ValueError(msg)
            try:
                self._torch = torch.load(self.path, map_location="cpu", weights_only=False)["model"].eval()
            except ModuleNotFoundError as error:  # a pickle names the module of each class it holds
                if not (error.name or "").startswith("anomalib_bayes_pfl"):
                    raise
                msg = (
                    f"{self.path} was exported by an earlier anomalib-bayes-pfl, whose module {error.name} this "
                    f"version does not have. Export it again from its checkpoint: anomalib export --model BayesPFL "
                    f"--ckpt_path <model.ckpt> --export_type torch (ONNX and OpenVINO exports do not depend on it)."
                )
                raise ValueError(msg) from error
            return
        if self.path.suffix not in {".onnx", ".xml"}:
            msg = f"{self.path}: BayesPFLInferencer reads model.pt, model.onnx or model.xml exports."
            raise ValueError(msg)
        check_openvino_export(None, None)  # says how to install OpenVINO when it is missing
        import openvino as ov

        self._torch = None
        self._compiled = ov.Core().compile_model(str(self.path), device, F32 if config is None else config)

    def predict(self, image: str | Path | Image.Image | np.ndarray | torch.Tensor) -> BayesPFLPrediction:
        """The outputs for one image or a batch ``(N, 3, H, W)``, read by the package's one image reader.

        A file or PIL image is read as anomalib reads a file; an array or tensor holds RGB, uint8 (0-255) or float in
        [0, 1], as ``(H, W)``, ``(H, W, 1 | 3 | 4)`` or ``(3, H, W)``. OpenCV's BGR needs
        ``cv2.cvtColor(image, cv2.COLOR_BGR2RGB)`` first. Anything else is refused, naming the file or the shape
        and dtype (:func:`~anomalib_bayes_pfl.data.image_reader.as_image_batch`).
        """
        images = as_image_batch(image).detach().cpu()  # both kinds of export run on the CPU
        if self._torch is not None:
            with torch.no_grad():
                output = self._torch(images)
            values = {name: value.numpy() for name, value in output._asdict().items() if value is not None}
        else:
            result = self._compiled(images.numpy())
            values = {output.get_any_name(): result[output] for output in self._compiled.outputs}
        count = images.shape[0]
        shaped = {}
        for field in fields(BayesPFLPrediction):
            value = values.get(field.name)
            if value is not None:
                map_field = field.name in {"anomaly_map", "pred_mask", "uncertainty_map"}
                shaped[field.name] = value.reshape(count, *value.shape[-2:]) if map_field else value.reshape(count)
        return BayesPFLPrediction(**shaped)
