# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The per-category table: a dataset column, a mean per dataset, and no pixel metrics where there are no masks."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import ImageBatch
from sklearn.metrics import roc_auc_score

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.reporting import MEAN_ROW, ApplicableMetricsEvaluator, PerCategoryMetrics, side_by_side_metrics
from anomalib_bayes_pfl.settings import BayesPFLSettings

# image path -> (dataset, category)
IMAGES = {
    f"{dataset}/{category}/{i}.png": (dataset, category)
    for dataset in ("BTech", "BMAD")
    for category in ("01", "brain")
    for i in range(6)
}


def _trainer(tmp_path):
    return SimpleNamespace(world_size=1, global_rank=0, default_root_dir=tmp_path, test_dataloaders=[])


def _batch(paths: list[str], *, masks: bool) -> BayesPFLBatch:
    """A scored batch, each image's dataset and category set as the model sets them."""
    generator = torch.Generator().manual_seed(len(paths[0]))
    labels = torch.tensor([i % 2 for i in range(len(paths))])
    gt_mask = torch.zeros(len(paths), 8, 8, dtype=torch.bool)
    gt_mask[labels == 1, 2:5, 2:5] = True
    return BayesPFLBatch(
        image=torch.zeros(len(paths), 3, 8, 8),
        image_path=paths,
        dataset=[IMAGES[path][0] for path in paths],
        category=[IMAGES[path][1] for path in paths],
        image_threshold=torch.full((len(paths),), 0.5),
        pixel_threshold=torch.full((len(paths),), 0.5),
        gt_label=labels,
        gt_mask=gt_mask if masks else None,
        pred_score=torch.rand(len(paths), generator=generator),
        anomaly_map=torch.rand(len(paths), 8, 8, generator=generator),
    )


def _table(tmp_path, batches: list[BayesPFLBatch]):
    callback, trainer = PerCategoryMetrics(lambda paths: [], BayesPFLSettings), _trainer(tmp_path)
    module = SimpleNamespace(image_score="probability", log=lambda *args, **kwargs: None)
    callback.on_test_start(trainer, module)
    for batch in batches:
        callback.on_test_batch_end(trainer, module, batch, batch, 0)
    callback.on_test_epoch_end(trainer, module)
    return callback.table, batches


def test_several_datasets_get_a_dataset_column_and_a_mean_each(tmp_path):
    paths = list(IMAGES)
    table, batches = _table(tmp_path, [_batch(paths[:12], masks=True), _batch(paths[12:], masks=True)])
    categories = ["BMAD/01", "BMAD/brain", "BTech/01", "BTech/brain"]
    assert list(table.index) == [*categories, "mean BMAD", "mean BTech", MEAN_ROW]
    assert table.loc["BTech/01", "dataset"] == "BTech"
    scores = torch.cat([batch.pred_score for batch in batches])
    labels = torch.cat([batch.gt_label for batch in batches])
    first = [i for i, path in enumerate(paths) if path.startswith("BTech/01/")]
    assert table.loc["BTech/01", "image_AUROC"] == pytest.approx(roc_auc_score(labels[first], scores[first]))
    for dataset in ("BTech", "BMAD"):
        rows = table.loc[[f"{dataset}/01", f"{dataset}/brain"], "image_AUROC"]
        assert table.loc[f"mean {dataset}", "image_AUROC"] == pytest.approx(rows.mean())
        assert table.loc[f"mean {dataset}", "images"] == 12
    assert table.loc[MEAN_ROW, "images"] == 24
    assert table.loc[MEAN_ROW, "image_AUROC"] == pytest.approx(table.image_AUROC.iloc[:4].mean())


def test_image_only_data_reports_image_metrics_and_no_pixel_columns(tmp_path, capsys):
    paths = [path for path in IMAGES if path.startswith("BMAD/")]
    table, _ = _table(tmp_path, [_batch(paths, masks=False)])
    assert not [column for column in table.columns if column.startswith("pixel_")]
    assert not table.drop(columns="dataset").isna().any().any()  # never NaN
    assert "Pixel metrics do not apply to categories without masks (image labels only): ['01', 'brain']" in (
        capsys.readouterr().out
    )
    assert list(table.index) == ["01", "brain", MEAN_ROW]


def _judged_batch(paths: list[str], *, masks: bool) -> BayesPFLBatch:
    """A labelled batch with uncertainty whose predicted masks are exactly right."""
    batch = _batch(paths, masks=masks)
    generator = torch.Generator().manual_seed(1)
    fields = {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)}
    return BayesPFLBatch(
        **fields
        | {
            "pred_label": batch.pred_score > 0.5,
            "pred_mask": batch.gt_mask,
            "uncertainty": torch.rand(len(paths), generator=generator),
            "uncertainty_map": torch.rand(len(paths), 8, 8, generator=generator),
        }
    )


def test_uncertainty_columns_say_what_cannot_be_computed(tmp_path, caplog):
    masked = [path for path in IMAGES if path.startswith("BTech/")]
    image_only = [path for path in IMAGES if path.startswith("BMAD/")]
    table, _ = _table(tmp_path, [_judged_batch(masked, masks=True), _judged_batch(image_only, masks=False)])
    assert table.loc[["BTech/01", "BTech/brain"], "pixel_uncertainty_auroc"].isna().all()  # no wrong pixel
    assert "pixel_uncertainty_auroc cannot be computed (no pixel is labelled wrongly)" in caplog.text
    assert table.loc[["BMAD/01", "BMAD/brain"], "pixel_uncertainty_auroc"].isna().all()  # no masks: does not apply
    assert "Category BMAD/01: pixel_uncertainty_auroc" not in caplog.text
    columns = ["image_ause", "image_ause_random", "image_ece", "image_error_rate"]
    assert not table[columns].isna().any().any()
    assert "review_share" not in table.columns  # no review_fraction


def _evaluate(evaluator: ApplicableMetricsEvaluator, batches: list[ImageBatch]) -> dict[str, float]:
    """Feed ``batches`` to the evaluator as a one-process test run; return what it logged."""
    logged = {}
    evaluator.log = lambda name, metric: logged.__setitem__(name, float(metric.compute()))
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision))
    evaluator.on_test_start(trainer, None)
    for index, batch in enumerate(batches):
        evaluator.on_test_batch_end(trainer, None, None, batch, index)
    evaluator.on_test_epoch_end(trainer, None)
    return logged


@pytest.mark.parametrize(
    ("maps", "masks", "reason"),
    [
        (True, True, None),
        (True, False, "the test data has no masks"),
        (False, True, "the model gives no anomaly maps"),
        (False, False, "the model gives no anomaly maps; the test data has no masks"),
    ],
)
def test_every_side_by_side_metric_has_a_value_or_its_reason(maps, masks, reason):
    """The benchmark's one metric set: image metrics always; pixel metrics where maps meet masks, else why not."""
    labels = torch.tensor([0, 1, 0, 1])
    gt_mask = torch.zeros(4, 8, 8, dtype=torch.bool)
    gt_mask[labels == 1, 2:5, 2:5] = True
    batch = ImageBatch(
        image=torch.zeros(4, 3, 8, 8),
        gt_label=labels,
        gt_mask=gt_mask if masks else None,
        pred_score=torch.tensor([0.1, 0.9, 0.6, 0.4]),
        anomaly_map=gt_mask.float() * 0.8 + 0.1 if maps else None,
    )
    evaluator = ApplicableMetricsEvaluator(test_metrics=side_by_side_metrics())
    logged = _evaluate(evaluator, [batch, batch])
    image = ["image_AUROC", "image_AUPR", "image_F1Max"]
    pixel = ["pixel_AUROC", "pixel_AUPRO", "pixel_AUPR"]
    assert logged["image_AUROC"] == pytest.approx(roc_auc_score(labels.tolist() * 2, [0.1, 0.9, 0.6, 0.4] * 2))
    if reason is None:
        assert sorted(logged) == sorted(image + pixel)
        assert logged["pixel_AUROC"] == 1.0
        assert evaluator.not_computed == {}
    else:
        assert sorted(logged) == sorted(image)
        assert evaluator.not_computed == dict.fromkeys(pixel, reason)
    unfed = ApplicableMetricsEvaluator(test_metrics=side_by_side_metrics())
    assert not _evaluate(unfed, [])
    assert unfed.not_computed == dict.fromkeys(image + pixel, "no test image reached it")
