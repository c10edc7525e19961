# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""BayesPFLInferencer: a model.pt only with anomalib's opt-in, and every image read as anomalib reads its file."""

import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_bayes_pfl import BayesPFLInferencer

from ..helpers import tiny_module


class _Planted:
    """A pickle that writes a file when it is loaded."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return exec, (f"open({self.target!r}, 'w').write('planted code ran')",)


def test_a_model_pt_is_not_unpickled_without_the_trust_remote_code_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv("TRUST_REMOTE_CODE", raising=False)
    planted, written = tmp_path / "model.pt", tmp_path / "written.txt"
    torch.save({"model": _Planted(str(written))}, planted)
    for value in (None, "0", "yes"):
        if value is not None:
            monkeypatch.setenv("TRUST_REMOTE_CODE", value)
        with pytest.raises(ValueError, match=r"set TRUST_REMOTE_CODE=1 in the environment") as error:
            BayesPFLInferencer(planted)
        assert not written.exists()
    assert str(error.value).endswith(
        "ONNX and OpenVINO exports (model.onnx, model.xml) hold no code and need no opt-in."
    )


def test_a_model_pt_of_an_earlier_layout_says_to_export_it_again(tmp_path, monkeypatch):
    """A pickle names its classes' modules: one this version lacks is named, with the command that exports again."""
    old = types.ModuleType("anomalib_bayes_pfl.model.lightning_model")
    old.BayesPFL = type("BayesPFL", (), {"__module__": old.__name__})
    monkeypatch.setitem(sys.modules, old.__name__, old)
    torch.save({"model": old.BayesPFL()}, tmp_path / "model.pt")
    monkeypatch.delitem(sys.modules, old.__name__)
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    with pytest.raises(ValueError, match=r"earlier anomalib-bayes-pfl, whose module anomalib_bayes_pfl\.model\.light"):
        BayesPFLInferencer(tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"anomalib export --model BayesPFL --ckpt_path <model\.ckpt> --export_type"):
        BayesPFLInferencer(tmp_path / "model.pt")


def test_inputs_of_every_kind_score_as_their_files_or_are_refused_by_name(tiny_clip_path, tmp_path, monkeypatch):
    """The issue's reproductions: a 16-bit PNG refused (it scored as white), a uint8 array scored as its file (it was
    scored on 0-255), a 2-D array as its gray file (an error), a cut JPEG refused naming the file (a bare OSError)."""
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    inferencer = BayesPFLInferencer(tiny_module(tiny_clip_path, class_name="screw").to_torch(tmp_path / "export"))
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    rgb, gray, deep, whole, cut = (tmp_path / name for name in ("rgb.png", "gray.png", "deep.png", "a.jpg", "cut.jpg"))
    Image.fromarray(pixels).save(rgb)
    Image.fromarray(pixels).convert("L").save(gray)
    Image.fromarray(np.full((48, 40), 40000, dtype=np.uint16)).save(deep)
    Image.fromarray(np.tile(pixels, (10, 10, 1))).save(whole)
    cut.write_bytes(whole.read_bytes()[:2000])
    same = {rgb: [pixels, torch.from_numpy(pixels).permute(2, 0, 1)], gray: [np.asarray(Image.open(gray))]}
    for path, images in same.items():
        expected = inferencer.predict(path)
        for image in images:
            output = inferencer.predict(image)
            assert abs(output.pred_score - expected.pred_score).max() <= 1e-6, (path, image.shape)
            assert abs(output.anomaly_map - expected.anomaly_map).max() <= 1e-6
    with pytest.raises(ValueError, match=rf"image {re.escape(str(deep))} has I;16 pixels, .* 8-bit image"):
        inferencer.predict(deep)
    with pytest.raises(ValueError, match=rf"image {re.escape(str(cut))} cannot be read \(image file is truncated"):
        inferencer.predict(cut)
    with pytest.raises(ValueError, match=r"shape \(48, 40, 3\) and dtype float32 has values in \[0, 255\]"):
        inferencer.predict(pixels.astype(np.float32))
