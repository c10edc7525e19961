# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Training through anomalib's Engine, head-only checkpoints, and reloading them."""

import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from anomalib import LearningType
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from sklearn.metrics import roc_auc_score

from anomalib_bayes_pfl import BayesPFL, ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.reporting import PerCategoryMetrics

from ..helpers import cross_dataset, tiny_module

pytestmark = pytest.mark.slow  # end-to-end training through the Engine


def _datamodule(root: Path, category: str = "tile_a") -> MVTecAD:
    return MVTecAD(root=root, category=category, train_batch_size=2, eval_batch_size=3, num_workers=0)


def _min_max(values: pd.Series) -> pd.Series:
    return (values - values.min()) / (values.max() - values.min())


def _scores(module: BayesPFL, datamodule: MVTecAD) -> tuple[torch.Tensor, torch.Tensor]:
    module.eval()
    datamodule.setup()
    scores, maps = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            batch = module.pre_processor(batch.image)
            names = ["tile_a"] * batch.shape[0]
            output = module.model(batch, names)
            scores.append(output.pred_score)
            maps.append(output.anomaly_map)
    return torch.cat(scores), torch.cat(maps)


def test_normal_only_training_data_gets_announced_synthetic_anomalies(tiny_clip_path, mvtec_tree, tmp_path, caplog):
    """A one-class datamodule (anomalib's benchmarks) trains on synthetic anomalies, with a warning; 0 refuses it."""
    engine = Engine(default_root_dir=tmp_path / "refused", accelerator="cpu", devices=1, logger=False)
    with pytest.raises(ValueError, match=r"normal images only.*--model\.prompt_weights.*ZeroShotCrossDataset"):
        engine.train(tiny_module(tiny_clip_path, synthetic_anomalies=0.0), datamodule=_datamodule(mvtec_tree))
    assert not list((tmp_path / "refused").rglob("*.ckpt"))
    module = tiny_module(tiny_clip_path, stage_one_epochs=1, stage_two_epochs=0)
    engine = Engine(default_root_dir=tmp_path / "default", accelerator="cpu", devices=1, logger=False)
    engine.fit(module, datamodule=_datamodule(mvtec_tree))
    assert "normal images only" in caplog.text
    assert "deviates from the paper's protocol" in caplog.text
    assert module.synthetic_anomalies.generator.probability == 0.5
    assert module.model.is_trained
    assert list((tmp_path / "default").rglob("model.ckpt"))


def test_synthetic_anomalies_asked_for_are_announced_too(tiny_clip_path, mvtec_tree, tmp_path, caplog):
    module = tiny_module(tiny_clip_path, stage_one_epochs=1, stage_two_epochs=0, synthetic_anomalies=1.0)
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False)
    engine.train(module, datamodule=_datamodule(mvtec_tree))
    assert module.synthetic_anomalies.generator.probability == 1.0
    assert "synthetic_anomalies=1.0: 100% of the normal training images" in caplog.text
    assert module.learning_type == LearningType.ZERO_SHOT


def test_training_runs_both_stages_and_becomes_zero_shot(trained_run):
    module, _, _ = trained_run
    assert module.learning_type == LearningType.ZERO_SHOT
    assert module.model.image_head_stage == 2


def test_checkpoint_is_head_only_and_small(trained_run):
    module, _, checkpoint = trained_run
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = saved["state_dict"]
    assert not any(key.startswith("model.clip.") for key in state)
    stage_one, stage_two = saved["optimizer_states"]
    assert stage_one["state"] == {}  # stage 1's Adam moments are freed when stage 2 starts
    assert len(stage_two["state"]) == len(module.model.parameter_groups()["classifier"])
    head = sum(v.numel() for k, v in state.items() if k.startswith("model.") and isinstance(v, torch.Tensor))
    assert head == sum(p.numel() for n, p in module.model.named_parameters() if not n.startswith("clip."))


def test_checkpoint_round_trip_gives_identical_scores(trained_run, mvtec_tree):
    module, _, checkpoint = trained_run
    reloaded = BayesPFL.load_from_checkpoint(checkpoint)
    assert reloaded.learning_type == LearningType.ZERO_SHOT
    expected_scores, expected_maps = _scores(module, _datamodule(mvtec_tree))
    scores, maps = _scores(reloaded, _datamodule(mvtec_tree))
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=0)
    torch.testing.assert_close(maps, expected_maps, rtol=0, atol=0)


def test_prompt_weights_make_a_zero_shot_model(trained_run, tiny_clip_path, mvtec_tree, tmp_path):
    module, _, checkpoint = trained_run
    zero_shot = tiny_module(tiny_clip_path, prompt_weights=str(checkpoint))
    assert zero_shot.learning_type == LearningType.ZERO_SHOT
    torch.testing.assert_close(
        _scores(zero_shot, _datamodule(mvtec_tree))[0], _scores(module, _datamodule(mvtec_tree))[0]
    )
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False)
    engine.train(zero_shot, datamodule=_datamodule(mvtec_tree, "tile_b"))  # zero-shot: validate + test only
    assert torch.equal(zero_shot.model.prompts.context, module.model.prompts.context)
    assert (tmp_path / "BayesPFL" / "MVTecAD" / "tile_b").is_dir()


def test_cross_dataset_run_writes_per_category_table_and_separate_images(tiny_clip_path, mvtec_tree, tmp_path):
    data = cross_dataset(mvtec_tree)
    data.auxiliary_categories, data.target_categories = ["tile_c"], ["tile_a", "tile_b"]
    data.category = ""
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False)
    module = tiny_module(tiny_clip_path, stage_one_epochs=1, stage_two_epochs=0, image_score="paper")
    results = engine.train(module, datamodule=data)
    table = pd.read_csv(next(tmp_path.rglob("per_category_metrics.csv")), index_col="category")
    assert list(table.index) == ["tile_a", "tile_b", "mean"]
    for column in (
        "image_AUROC",
        "image_AUPR",
        "image_F1Max",
        "pixel_AUROC",
        "pixel_AUPRO",
        "pixel_AUPR",
        "paper_image_AUROC",
        "paper_image_AUPR",
        "paper_image_F1Max",
    ):
        assert table[column].between(0, 1).all(), column
        assert table.loc["mean", column] == pytest.approx(table.loc[["tile_a", "tile_b"], column].mean())
    assert results[0]["category_mean_image_AUROC"] == pytest.approx(table.loc["mean", "image_AUROC"])
    predictions = engine.predict(module, datamodule=data)  # the same test images, scored again
    scored = pd.DataFrame(
        {
            "category": [Path(path).parts[-4] for batch in predictions for path in batch.image_path],
            "score": [float(score) for batch in predictions for score in batch.pred_score],
            "label": [int(label) for batch in predictions for label in batch.gt_label],
            "map_score": [float(score) for batch in predictions for score in batch.paper_map_score],
        }
    )
    for category, rows in scored.groupby("category"):  # each category's own images, by an independent library
        assert table.loc[category, "image_AUROC"] == pytest.approx(roc_auc_score(rows.label, rows.score), abs=1e-6)
        assert table.loc[category, "images"] == len(rows)
        fused = 0.5 * _min_max(rows.score) + 0.5 * _min_max(rows.map_score)  # the authors' fusion, by hand
        assert table.loc[category, "paper_image_AUROC"] == pytest.approx(roc_auc_score(rows.label, fused), abs=1e-6)
    images = sorted(p.relative_to(next(tmp_path.rglob("images"))).as_posix() for p in tmp_path.rglob("images/**/*.png"))
    visualisations = [image for image in images if not image.endswith("_uncertainty.png")]
    assert len(visualisations) == 12  # 6 test images in each target category, none overwritten
    assert visualisations[0].startswith("tile_a/test/")
    assert sorted(set(images) - set(visualisations)) == [
        image.replace(".png", "_uncertainty.png") for image in visualisations
    ]


def test_own_folder_data_without_masks_trains_on_image_labels(tiny_clip_path, tmp_path):
    auxiliary = write_tree(tmp_path / "own", ["gear", "bolt"], layout="folder", masks=False)
    target = write_tree(tmp_path / "line", ["widget"], layout="folder", seed=3)
    data = ZeroShotCrossDataset(
        auxiliary_root=str(auxiliary),
        auxiliary_format="folder",
        target_root=str(target),
        target_format="folder",
        train_batch_size=3,
        eval_batch_size=4,
        num_workers=0,
    )
    module = tiny_module(tiny_clip_path, stage_one_epochs=2, stage_two_epochs=0)
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    results = engine.train(module, datamodule=data)
    assert module.learning_type == LearningType.ZERO_SHOT
    assert "pixel_AUROC" in results[0]  # the target has masks
    # The loader shuffles: a batch of 3 may hold normal images only, so take one with an anomalous image.
    batch = next((batch for batch in data.train_dataloader() if batch.gt_label.any()), None)
    assert batch is not None, "no anomalous image in the training set"
    assert batch.gt_mask is None
    module.model.train()
    output = module.model(module.pre_processor.transform(batch.image), module.class_names_of(batch.image_path))
    terms = module.loss(*output[:2], output.text_embeddings, output.kl, batch.gt_label, None, prompt_index=0, stage=1)
    assert terms.focal == 0
    assert terms.dice == 0
    assert terms.classification > 0
    with torch.no_grad():
        named = tiny_module(tiny_clip_path, class_name="widget")
        named.model.load_state_dict(module.model.state_dict())
        image = named.pre_processor.transform(torch.rand(1, 3, 64, 64))
        fallback = tiny_module(tiny_clip_path)
        fallback.model.load_state_dict(module.model.state_dict())
        batch = SimpleNamespace(image=image, image_path=["upload/any.png"])
        assert named.class_names_of(batch.image_path) == ["widget"]
        assert fallback.class_names_of(batch.image_path) == ["object"]


def test_thresholds_given_with_a_checkpoint_win_over_the_stored_ones(trained_run):
    _, _, checkpoint = trained_run
    reloaded = BayesPFL.load_from_checkpoint(checkpoint, image_threshold=0.3, pixel_threshold=0.8)
    assert reloaded.post_processor.image_sensitivity == pytest.approx(0.7)
    assert reloaded.post_processor.pixel_sensitivity == pytest.approx(0.2)
    scores = torch.tensor([0.2, 0.35, 0.9])
    labels = reloaded.post_processor._apply_threshold(scores, reloaded.post_processor.normalized_image_threshold)
    assert labels.tolist() == [False, True, True]


def test_single_class_target_reports_image_metrics_as_not_computable(tiny_clip_path, tmp_path, caplog):
    """A target category without normal test images keeps its split (nothing borrowed) and says what is undefined."""
    tree = write_tree(tmp_path / "data", ["tile_a", "only_defects"], num_test_good=0, num_test_defect=3)
    datamodule = ZeroShotCrossDataset(
        auxiliary_root=str(tmp_path / "absent"),  # testing never reads the auxiliary side
        target_root=str(tree),
        target_format="mvtec",
        target_categories=["only_defects"],
        num_workers=0,
    )
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    engine.test(tiny_module(tiny_clip_path), datamodule=datamodule)
    table = next(callback.table for callback in engine.trainer.callbacks if isinstance(callback, PerCategoryMetrics))
    row = table.loc["only_defects"]
    assert row["images"] == 3
    assert row[["image_AUROC", "image_AUPR", "image_F1Max"]].isna().all()
    assert row[["pixel_AUROC", "pixel_AUPRO", "pixel_AUPR"]].notna().all()  # anomalous images hold normal pixels
    assert "image_AUROC, image_AUPR, image_F1Max cannot be computed (its test images are all anomalous)" in caplog.text
    assert "image_false_alarm_rate, pixel_false_alarm_rate cannot be computed (it has no normal test image)" in (
        caplog.text
    )


def test_an_image_only_target_reports_image_metrics_and_no_pixel_metrics(tiny_clip_path, mvtec_tree, tmp_path):
    """Targets without masks (several medical sets): image metrics, and pixel metrics left out, never NaN."""
    target = write_tree(tmp_path / "scans", ["head_ct", "skin"], layout="folder", masks=False, seed=4)
    data = ZeroShotCrossDataset(
        auxiliary_root=str(mvtec_tree),
        auxiliary_format="mvtec",
        auxiliary_categories=["tile_a"],
        target_root=str(target),
        target_format="folder",
        num_workers=0,
    )
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = engine.train(tiny_module(tiny_clip_path, stage_one_epochs=1, stage_two_epochs=0), datamodule=data)
    assert not [warning for warning in caught if "called before the ``update`` method" in str(warning.message)]
    table = pd.read_csv(next((tmp_path / "results").rglob("per_category_metrics.csv")), index_col="category")
    assert list(table.index) == ["head_ct", "skin", "mean"]
    assert not [column for column in table.columns if column.startswith("pixel_")]
    assert not table.isna().any().any()
    assert not [name for name, value in results[0].items() if "pixel" in name or value != value]  # no NaN logged
