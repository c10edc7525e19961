# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""anomalib's model contract: every Engine entry point on one-class MVTec AD-style data, trained and zero-shot.

The sequence anomalib puts each built-in model through: fit, then test, train, validate and predict, and export to
torch, ONNX and OpenVINO from the checkpoint that fit wrote (ONNX in one form, OpenVINO, which exports ONNX on
the way, in the other). BayesPFL meets it in both of its forms: trained on the
normal-only training split (synthetic anomalies, announced), and zero-shot with trained prompts (no training;
anomalib's Engine writes the checkpoint after validating).
"""

from pathlib import Path

import pytest
import torch
from anomalib import LearningType
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine

from anomalib_bayes_pfl import BayesPFL

from ..helpers import TINY_ARGUMENTS

pytestmark = pytest.mark.slow


def _datamodule(tree: Path) -> MVTecAD:
    return MVTecAD(root=tree, category="tile_a", train_batch_size=2, eval_batch_size=3, num_workers=0)


ALL_EXPORTS = ((ExportType.TORCH, {}), (ExportType.ONNX, {"input_size": (64, 64)}), (ExportType.OPENVINO, {}))


def _run_contract(model: BayesPFL, tree: Path, root: Path, exports: tuple = ALL_EXPORTS) -> Path:
    engine = Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False)
    engine.fit(model, datamodule=_datamodule(tree))
    checkpoint = next(root.rglob("model.ckpt"))
    assert engine.test(model, datamodule=_datamodule(tree))[0]["image_AUROC"] >= 0
    engine.train(model, datamodule=_datamodule(tree))
    engine.validate(model, datamodule=_datamodule(tree))
    predictions = engine.predict(model, datamodule=_datamodule(tree), ckpt_path=checkpoint)
    assert sum(len(batch.pred_score) for batch in predictions) == 6
    for export_type, extra in exports:
        exported = engine.export(
            model, export_type, export_root=root / export_type.value, ckpt_path=checkpoint, **extra
        )
        assert exported is not None
        assert exported.is_file()
    return checkpoint


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, mvtec_tree):
    root = tmp_path_factory.mktemp("trained")
    model = BayesPFL(**TINY_ARGUMENTS, stage_one_epochs=1, stage_two_epochs=1)
    assert model.learning_type == LearningType.ONE_CLASS
    return _run_contract(model, mvtec_tree, root, exports=ALL_EXPORTS[:2])


def test_trained_form_meets_the_contract(trained_checkpoint):
    assert trained_checkpoint.is_file()


def test_zero_shot_form_meets_the_contract(trained_checkpoint, mvtec_tree, tmp_path):
    model = BayesPFL(prompt_weights=str(trained_checkpoint))  # every option from the checkpoint
    assert model.learning_type == LearningType.ZERO_SHOT
    assert model.settings.image_size == 64
    # Each form exports ONNX once (a trace costs about 20 s): the trained form to ONNX, this one to OpenVINO, which
    # goes through an ONNX export of its own.
    checkpoint = _run_contract(model, mvtec_tree, tmp_path, exports=(ALL_EXPORTS[0], ALL_EXPORTS[2]))
    # The checkpoint holds the head: loading it (as export --ckpt_path does) needs no prompt-weights file.
    assert torch.load(checkpoint, weights_only=True)["hyper_parameters"]["prompt_weights"] is None
