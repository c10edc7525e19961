# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Run a BayesPFL export on a part and decide: pass, fail, or a person.

anomalib's ``TorchInferencer`` and ``OpenVINOInferencer`` read the default export (four fields). A model exported
with ``--model.export_uncertainty true`` also returns the uncertainty, its map and, with ``review_rate``, the review
mark, which :class:`BayesPFLInferencer` reads from any of the three files: ``model.pt`` (torch), ``model.onnx`` or
``model.xml`` (both run by OpenVINO). A part that needs review goes to a person, whatever its label; the others pass or
fail on their label.
"""

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data.utils import read_image

from .openvino import check_openvino_export

PASS, FAIL, PERSON = "pass", "fail", "person"
# OpenVINO computes in f32 unless told otherwise: some CPUs default to bf16, which moves the scores and so the marks.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


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

    ``BayesPFLInferencer("line/weights/openvino/model.xml").predict("part_0001.png").decision`` is ``['pass']``,
    ``['fail']`` or ``['person']``.
    """

    def __init__(self, path: str | Path, device: str = "CPU", config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            msg = f"{self.path} is not a file: give the exported model.pt, model.onnx or model.xml."
            raise FileNotFoundError(msg)
        if self.path.suffix == ".pt":
            self._torch = torch.load(self.path, map_location="cpu", weights_only=False)["model"].eval()
            return
        if self.path.suffix not in {".onnx", ".xml"}:
            msg = f"{self.path}: BayesPFLInferencer reads model.pt, model.onnx or model.xml exports."
            raise ValueError(msg)
        check_openvino_export(None, None)  # says how to install OpenVINO when it is missing
        import openvino as ov

        self._torch = None
        self._compiled = ov.Core().compile_model(str(self.path), device, F32 if config is None else config)

    def predict(self, image: str | Path | np.ndarray | torch.Tensor) -> BayesPFLPrediction:
        """The outputs for one image (a file, ``(H, W, 3)`` array or ``(3, H, W)`` tensor) or a batch ``(N, 3, H, W)``.

        Pixel values are in [0, 1], as anomalib reads files.
        """
        images = _as_batch(image)
        if self._torch is not None:
            with torch.no_grad():
                output = self._torch(torch.from_numpy(images))
            values = {name: value.numpy() for name, value in output._asdict().items() if value is not None}
        else:
            result = self._compiled(images)
            values = {output.get_any_name(): result[output] for output in self._compiled.outputs}
        count = images.shape[0]
        shaped = {}
        for field in fields(BayesPFLPrediction):
            value = values.get(field.name)
            if value is not None:
                map_field = field.name in {"anomaly_map", "pred_mask", "uncertainty_map"}
                shaped[field.name] = value.reshape(count, *value.shape[-2:]) if map_field else value.reshape(count)
        return BayesPFLPrediction(**shaped)


def _as_batch(image: str | Path | np.ndarray | torch.Tensor) -> np.ndarray:
    """Images as exported models take them: ``(N, 3, H, W)`` float32 in [0, 1]."""
    if isinstance(image, str | Path):
        image = read_image(image, as_tensor=True)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image).permute(2, 0, 1) if image.ndim == 3 and image.shape[-1] == 3 else image
    images = torch.as_tensor(image, dtype=torch.float32)
    return (images.unsqueeze(0) if images.ndim == 3 else images).contiguous().numpy()
