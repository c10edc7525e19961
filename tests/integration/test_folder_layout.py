# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""anomalib's Folder layout as a target, and runs that test without the auxiliary dataset, through anomalib's Engine."""

import math

import pytest
import torch
from anomalib import LearningType
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl import BayesPFL, ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import write_tree

from ..helpers import TINY_ARGUMENTS, tiny_module

NUM_GOOD, NUM_BAD = 3, 3


class ScoredImages(Callback):
    """Record every scored test image with its label and the number of pixels in its ground-truth mask."""

    def __init__(self) -> None:
        self.images: dict[str, tuple[int, int]] = {}

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        masks = batch.gt_mask if batch.gt_mask is not None else torch.zeros(len(batch.image_path), 1, 1)
        for path, label, mask in zip(batch.image_path, batch.gt_label, masks, strict=True):
            self.images[path] = (int(label), int(mask.sum()))


def _data(auxiliary_root, target_root, target_format: str) -> ZeroShotCrossDataset:
    return ZeroShotCrossDataset(
        auxiliary_root=str(auxiliary_root),
        auxiliary_format="mvtec",
        target_root=str(target_root),
        target_format=target_format,
        train_batch_size=2,
        eval_batch_size=4,
        num_workers=0,
    )


def _test(data: ZeroShotCrossDataset, root, model: BayesPFL | None = None) -> tuple[list[dict], ScoredImages]:
    """Test a model (by default an untrained tiny one: ``Engine.test`` runs no validation for it)."""
    scored = ScoredImages()
    engine = Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False, callbacks=[scored])
    torch.manual_seed(0)
    results = engine.test(model or BayesPFL(**TINY_ARGUMENTS), datamodule=data)
    return results, scored


def test_anomalib_folder_target_scores_images_with_their_masks(tmp_path):
    auxiliary = write_tree(tmp_path / "aux", ["tile_a"], num_train=0)
    target = write_tree(
        tmp_path / "line", ["widget"], layout="anomalib_folder", num_test_good=NUM_GOOD, num_test_defect=NUM_BAD
    )
    results, scored = _test(_data(auxiliary, target, "folder"), tmp_path / "results")
    assert len(scored.images) == NUM_GOOD + NUM_BAD  # no mask is scored as an image
    assert not any("/masks/" in path for path in scored.images)
    anomalous = [pixels for label, pixels in scored.images.values() if label == 1]
    assert len(anomalous) == NUM_BAD
    assert all(pixels > 0 for pixels in anomalous)  # each anomalous image carries its own mask
    assert all(pixels == 0 for label, pixels in scored.images.values() if label == 0)
    assert math.isfinite(results[0]["pixel_AUROC"])
    assert math.isfinite(results[0]["image_AUROC"])


def test_testing_needs_no_auxiliary_dataset(tmp_path):
    target = write_tree(tmp_path / "target", ["tile_c"], num_train=0)
    data = _data(tmp_path / "nowhere", target, "mvtec")
    results, scored = _test(data, tmp_path / "results")
    assert len(scored.images) == len(data.test_data) == 6
    assert all(math.isfinite(value) for value in results[0].values())
    assert not (tmp_path / "nowhere").exists()
    assert len(data.val_data) == 0  # validation would come from the auxiliary dataset


@pytest.mark.slow
def test_a_fit_after_a_test_trains_and_a_trained_model_tests_without_auxiliary_data(tiny_clip_path, tmp_path):
    auxiliary = write_tree(tmp_path / "aux", ["tile_a", "tile_b"], num_train=0)
    target = write_tree(tmp_path / "target", ["tile_c"], num_train=0, seed=2)
    data = _data(auxiliary, target, "mvtec")
    _test(data, tmp_path / "tested")
    module = tiny_module(tiny_clip_path, stage_one_epochs=1, stage_two_epochs=0)
    engine = Engine(default_root_dir=tmp_path / "trained", accelerator="cpu", devices=1, logger=False)
    engine.train(module, datamodule=data)
    assert len(data.train_data) == 12
    assert engine.trainer.global_step > 0
    assert module.learning_type == LearningType.ZERO_SHOT  # anomalib would validate it before testing; BayesPFL not
    without = _data(tmp_path / "nowhere", target, "mvtec")
    results, scored = _test(without, tmp_path / "zero_shot", module)
    assert len(scored.images) == 6
    assert len(without.val_data) == 0
    assert all(math.isfinite(value) for value in results[0].values())
