# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Each plot of a test run draws the data of the table's figure it names: its area or its bins give that figure."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.metrics import AUPR, AUPRO, AUROC
from PIL import Image

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.reporting import MEAN_ROW, PerCategoryMetrics
from anomalib_bayes_pfl.reporting.plots import PLOTS_DIR, category_figure, mean_figure, reliability_bins
from anomalib_bayes_pfl.settings import BayesPFLSettings

SIZE = 16


def _batch(dataset: str, category: str, count: int, *, masks: bool, seed: int) -> BayesPFLBatch:
    """A scored batch whose scores overlap: every curve has steps, every bin of the reliability diagram a gap."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([i % 3 == 0 for i in range(count)]).long()
    gt_mask = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
    gt_mask[labels == 1, 3:9, 4:8] = True
    gt_mask[labels == 1, 11:14, 10:15] = True  # two regions: PRO averages them
    anomaly_map = torch.rand(count, SIZE, SIZE, generator=generator) * 0.7 + 0.3 * gt_mask
    pred_score = (torch.rand(count, generator=generator) * 0.8 + 0.2 * labels).clamp(0, 1)
    return BayesPFLBatch(
        image=torch.zeros(count, 3, SIZE, SIZE),
        image_path=[f"{dataset}/{category}/{seed}_{i}.png" for i in range(count)],
        dataset=[dataset] * count,
        category=[category] * count,
        image_threshold=torch.full((count,), 0.55),
        pixel_threshold=torch.full((count,), 0.6),
        gt_label=labels,
        gt_mask=gt_mask if masks else None,
        pred_score=pred_score,
        pred_label=pred_score > 0.55,
        anomaly_map=anomaly_map,
        pred_mask=anomaly_map > 0.6,
        uncertainty=torch.rand(count, generator=generator) * (pred_score - labels).abs(),
        uncertainty_map=torch.rand(count, SIZE, SIZE, generator=generator),
    )


def _run(tmp_path, batches: list[BayesPFLBatch]) -> PerCategoryMetrics:
    callback = PerCategoryMetrics(lambda paths: [], BayesPFLSettings)
    trainer = SimpleNamespace(world_size=1, global_rank=0, default_root_dir=tmp_path, test_dataloaders=[])
    module = SimpleNamespace(log=lambda *args, **kwargs: None)
    callback.on_test_start(trainer, module)
    for batch in batches:
        callback.on_test_batch_end(trainer, module, batch, batch, 0)
    callback.on_test_epoch_end(trainer, module)
    return callback


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    callback = _run(root, [_batch("MVTec", category, 60, masks=True, seed=seed) for seed, category in enumerate("ab")])
    return root, callback


def _panels(callback, category: str):
    results = callback.metrics[("MVTec", category)].results()
    figure = category_figure(category, results, callback.table.loc[category])
    return {axis.get_title().split("\n")[0]: axis for axis in figure.axes}, results


def _area(x, y) -> float:
    return float(np.trapezoid(y, x))


def test_the_curves_areas_are_the_table_s_aurocs_aps_and_aupros(masked_run):
    _, callback = masked_run
    for category in "ab":
        row = callback.table.loc[category]
        panels, _ = _panels(callback, category)
        roc = panels["Image ROC"].lines[0].get_xydata()
        assert _area(roc[:, 0], roc[:, 1]) == pytest.approx(row.image_AUROC, abs=1e-6)
        recall, precision = panels["Image precision-recall"].lines[0].get_xydata().T  # steps: height at the left
        assert -np.sum(np.diff(recall) * precision[:-1]) == pytest.approx(row.image_AUPR, abs=1e-6)
        false_positive_rate, overlap = panels["Pixel PRO"].lines[0].get_xydata().T
        assert false_positive_rate[-1] == pytest.approx(0.3)
        assert _area(false_positive_rate, overlap) / false_positive_rate[-1] == pytest.approx(row.pixel_AUPRO, abs=1e-6)
        assert 0.5 < row.image_AUROC < 1
        assert 0.5 < row.pixel_AUPRO < 1


def test_the_score_histogram_holds_every_image_and_the_threshold_with_its_rates(masked_run):
    _, callback = masked_run
    row = callback.table.loc["a"]
    panels, results = _panels(callback, "a")
    scores = panels["Image scores"]
    labels = results.values["label"]
    normal, anomalous = (scores.containers[i] for i in range(2))
    assert sum(bar.get_height() for bar in normal) == int((labels == 0).sum()) == 40
    assert sum(bar.get_height() for bar in anomalous) == int((labels == 1).sum()) == 20
    threshold = next(line for line in scores.lines if line.get_label().startswith("threshold"))
    assert threshold.get_xdata()[0] == pytest.approx(row.image_threshold) == pytest.approx(0.55)
    title = scores.get_title()
    assert f"false alarms {row.image_false_alarm_rate:.1%}" in title
    assert f"recall {row.image_recall:.1%}" in title
    probability = results.values["probability"]
    assert row.image_false_alarm_rate == pytest.approx(float((probability[labels == 0] > 0.55).double().mean()))


def test_the_reliability_bins_give_the_table_s_ece(masked_run):
    _, callback = masked_run
    for category in "ab":
        row = callback.table.loc[category]
        panels, results = _panels(callback, category)
        bins = reliability_bins(results.values["probability"], results.values["label"])
        drawn = panels["Reliability"].lines[1].get_xydata()
        assert np.allclose(drawn, torch.stack([bins.probability, bins.anomalous], 1).numpy())
        assert float((bins.share * (bins.anomalous - bins.probability).abs()).sum()) == pytest.approx(row.image_ece)
        assert float(bins.share.sum()) == pytest.approx(1.0)
        assert len(bins.share) > 5


def test_the_sparsification_curves_gaps_are_the_table_s_ause(masked_run):
    _, callback = masked_run
    for category in "ab":
        row = callback.table.loc[category]
        panels, _ = _panels(callback, category)
        model, oracle, flat = (line.get_ydata() for line in panels["Sparsification"].lines)
        assert np.mean(model - oracle) == pytest.approx(row.image_ause)
        assert np.mean(flat - oracle) == pytest.approx(row.image_ause_random)
        assert row.image_ause < row.image_ause_random  # the uncertainty here knows the errors


def test_a_test_run_writes_a_figure_per_category_and_one_for_the_mean(masked_run):
    root, callback = masked_run
    written = sorted(path.name for path in (root / PLOTS_DIR).iterdir())
    assert written == ["a.png", "b.png", f"{MEAN_ROW}.png"]
    for name in written:
        with Image.open(root / PLOTS_DIR / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10  # not a blank page
    results = {category: callback.metrics[("MVTec", category)].results() for category in "ab"}
    figure = mean_figure(results, callback.table)
    roc = figure.axes[0]
    assert roc.get_title() == f"Image ROC: mean {callback.table.loc[MEAN_ROW, 'image_AUROC']:.3f}"
    assert [line.get_label() for line in roc.lines] == [
        f"{category} {callback.table.loc[category, 'image_AUROC']:.3f}" for category in "ab"
    ]


def test_image_only_categories_say_there_is_no_pro_curve_and_names_with_a_dataset_get_a_folder(tmp_path):
    batches = [_batch(dataset, "a", 12, masks=False, seed=i) for i, dataset in enumerate(("BTech", "BMAD"))]
    callback = _run(tmp_path, batches)
    assert sorted(str(path.relative_to(tmp_path / PLOTS_DIR)) for path in (tmp_path / PLOTS_DIR).rglob("*.png")) == [
        "BMAD/a.png",
        "BTech/a.png",
        f"{MEAN_ROW}.png",
    ]
    results = callback.metrics[("BMAD", "a")].results()
    figure = category_figure("BMAD/a", results, callback.table.loc["BMAD/a"])
    pro = next(axis for axis in figure.axes if axis.get_title() == "Pixel PRO")
    assert not pro.lines
    assert [text.get_text() for text in pro.texts] == ["not computed:\nno masks (image labels only)"]


def test_a_run_s_plots_compute_each_curve_once(tmp_path, monkeypatch):
    """AUPRO's curve labels every mask's regions: the category's panel and the mean's overlay share one computation."""
    computed: list[str] = []
    for metric in (AUROC, AUPR, AUPRO):
        compute = metric._compute

        def counted(self, compute=compute):
            computed.append(self.name)
            return compute(self)

        monkeypatch.setattr(metric, "_compute", counted)
    batches = [_batch("MVTec", category, 12, masks=True, seed=seed) for seed, category in enumerate("ab")]
    callback = _run(tmp_path, batches)
    assert (tmp_path / PLOTS_DIR / f"{MEAN_ROW}.png").exists()
    # Once for the table (its compute() reduces the curve to the area) and once for both figures that draw it.
    for name in ("image_AUROC", "image_AUPR", "pixel_AUPRO"):
        assert computed.count(name) == 2 * 2, (name, computed)
    assert callback.table.loc[MEAN_ROW, "pixel_AUPRO"] > 0
