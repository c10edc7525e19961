# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Where users see the uncertainty: the per-category table, predictions.csv and the images, checked by hand."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from anomalib.engine import Engine
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalib_bayes_pfl.reporting import CSV_NAME, PREDICTIONS_CSV, PREDICTIONS_HTML, REPORT_HTML, UncertaintyVisualizer
from anomalib_bayes_pfl.reporting.gallery import GALLERY_SIZE

from ..browser import render
from ..helpers import cross_dataset, sparsification_by_hand, tiny_module

pytestmark = pytest.mark.slow  # end-to-end training through the Engine

REVIEW_FRACTION = 0.25  # 6 test images per category: the most uncertain one is marked
BANNER = (200, 0, 0)


def _ece_by_hand(probability: np.ndarray, label: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s expected calibration error of P(anomalous), equal-width bins, each bin (a, b]."""
    index = np.clip(np.ceil(probability * bins).astype(int) - 1, 0, bins - 1)
    return sum(
        (index == b).mean() * abs(label[index == b].mean() - probability[index == b].mean())
        for b in range(bins)
        if (index == b).any()
    )


@pytest.fixture(scope="module")
def reviewed_run(tiny_clip_path, mvtec_tree, tmp_path_factory):
    """Train on tile_c, test and predict tile_a and tile_b with review; the table, the predictions and the folder."""
    root = tmp_path_factory.mktemp("reviewed")
    data = cross_dataset(mvtec_tree)
    data.auxiliary_categories, data.target_categories = ["tile_c"], ["tile_a", "tile_b"]
    data.category = ""
    engine = Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False)
    module = tiny_module(tiny_clip_path, stage_one_epochs=1, stage_two_epochs=0, review_fraction=REVIEW_FRACTION)
    engine.train(module, datamodule=data)
    table = pd.read_csv(next(root.rglob(CSV_NAME)), index_col="category")
    test_images = next(root.rglob("images"))
    predictions = engine.predict(module, datamodule=data)  # the same test images, scored again
    return table, predictions, test_images, Path(engine.trainer.default_root_dir)


def _scored(predictions: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_path": [path for batch in predictions for path in batch.image_path],
            "category": [Path(path).parts[-4] for batch in predictions for path in batch.image_path],
            "probability": [float(value) for batch in predictions for value in batch.pred_score],
            "label": [int(value) for batch in predictions for value in batch.gt_label],
            "pred_label": [int(value) for batch in predictions for value in batch.pred_label],
            "uncertainty": [float(value) for batch in predictions for value in batch.uncertainty],
        }
    )


def test_table_judges_the_uncertainty_as_computed_by_hand(reviewed_run):
    table, predictions, _, _ = reviewed_run
    scored = _scored(predictions)
    for category, rows in scored.groupby("category"):
        row = table.loc[category]
        errors = rows.pred_label != rows.label
        assert row.image_error_rate == pytest.approx(errors.mean())
        decided_alone = rows.drop(rows.uncertainty.nlargest(1).index)  # 25 % of 6 images: at most one
        assert row.review_share == pytest.approx(1 / 6)
        expected = (decided_alone.pred_label != decided_alone.label).mean()
        assert row.image_error_rate_unreviewed == pytest.approx(expected)
        assert row.image_ece == pytest.approx(_ece_by_hand(rows.probability.to_numpy(), rows.label.to_numpy()))
        ause, random_ause = sparsification_by_hand(
            rows.uncertainty.tolist(), (rows.probability - rows.label).abs().tolist()
        )
        assert (row.image_ause, row.image_ause_random) == pytest.approx((ause, random_ause), abs=1e-6)
        batches = [(batch, i) for batch in predictions for i, path in enumerate(batch.image_path) if category in path]
        wrong = torch.stack([batch.pred_mask[i] != batch.gt_mask[i].bool() for batch, i in batches]).flatten()
        uncertainty = torch.stack([batch.uncertainty_map[i] for batch, i in batches]).flatten()
        assert row.pixel_uncertainty_auroc == pytest.approx(roc_auc_score(wrong.numpy(), uncertainty.numpy()), abs=1e-6)
    uncertainty_columns = ["pixel_uncertainty_auroc", "image_ause", "image_ece", "image_error_rate_unreviewed"]
    assert table.loc["mean", uncertainty_columns].to_numpy() == pytest.approx(
        table.loc[["tile_a", "tile_b"], uncertainty_columns].mean().to_numpy()
    )


def _has_banner(path: Path) -> bool:
    with Image.open(path) as image:
        return image.convert("RGB").getpixel((1, image.height - 2)) == BANNER


def test_prediction_table_and_images_carry_uncertainty_and_review_marks(reviewed_run):
    _, predictions, test_images, predict_root = reviewed_run
    scored = _scored(predictions)
    table = pd.read_csv(predict_root / PREDICTIONS_CSV)
    columns = ["image_path", "category", "class_name", "pred_score", "pred_label", "uncertainty", "needs_review"]
    assert list(table.columns) == columns
    merged = table.merge(scored, on="image_path")
    assert len(merged) == len(scored) == 12
    assert (merged.category_x == merged.category_y).all()
    assert (merged.class_name == merged.category_x).all()  # no --model.class_name: the prompts say the category
    assert np.array_equal(merged.uncertainty_x.to_numpy(), merged.uncertainty_y.to_numpy())
    most_uncertain = merged.groupby("category_x").uncertainty_x.transform("max") == merged.uncertainty_x
    assert (merged.needs_review == most_uncertain).all()
    assert merged.needs_review.sum() == 2  # one per category
    for images in (test_images, predict_root / "images"):
        for row in merged.itertuples():
            source = Path(row.image_path)
            visualisation = next(images.rglob(f"{row.category_x}/test/{source.parent.name}/{source.name}"))
            uncertainty_image = visualisation.with_name(f"{visualisation.stem}_uncertainty.png")
            assert uncertainty_image.is_file()
            assert _has_banner(visualisation) == _has_banner(uncertainty_image) == row.needs_review
            with Image.open(visualisation) as image:  # the banner is a strip below the image: it hides nothing
                assert image.height == (256 + 21 if row.needs_review else 256)


def test_a_folder_with_an_earlier_run_s_images_is_named(tmp_path, caplog):
    (tmp_path / "images" / "old").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "old" / "000.png")
    UncertaintyVisualizer().on_test_start(SimpleNamespace(default_root_dir=tmp_path), None)
    assert f"{tmp_path / 'images'} already holds images of an earlier run" in caplog.text


def _gallery(scored: pd.DataFrame, shown: pd.Series, rank: pd.Series) -> list[str]:
    """The paths a gallery shows: of those ``shown``, the largest ``rank`` first, ties by path, at most GALLERY_SIZE."""
    ordered = scored.assign(rank=rank)[shown].sort_values(["rank", "image_path"], ascending=False)
    return ordered.image_path.head(GALLERY_SIZE).tolist()


def test_both_pages_open_in_a_browser_from_a_copied_folder_with_every_picture_and_gallery(reviewed_run, tmp_path):
    """report.html and predictions.html in headless Chromium, from a copy of the run folder, as a person opens them."""
    _, predictions, _, root = reviewed_run
    scored = _scored(predictions)
    marks = pd.read_csv(root / PREDICTIONS_CSV).set_index("image_path").needs_review
    scored["needs_review"] = scored.image_path.map(marks).astype(bool)
    normal, anomalous, flagged = scored.label == 0, scored.label == 1, scored.pred_label == 1
    review = _gallery(scored, scored.needs_review, scored.uncertainty)
    expected = {
        REPORT_HTML: {
            "Worst false alarms": _gallery(scored, normal & flagged, scored.probability),
            "Worst misses": _gallery(scored, anomalous & ~flagged, -scored.probability),
            "Review queue": review,
        },
        PREDICTIONS_HTML: {"Review queue": review, "Labelled anomalous": _gallery(scored, flagged, scored.probability)},
    }
    assert len(review) == 2  # one per category: the queue is not empty
    copied = shutil.copytree(root, tmp_path / "copied", ignore=shutil.ignore_patterns("*.ckpt"))

    for name, galleries in expected.items():
        rendered = render(copied / name, tmp_path / f"{name}.png")

        assert not rendered.blank
        assert rendered.broken == []
        assert rendered.requests == []  # nothing from the network
        assert {title: rendered.galleries.get(title, []) for title in galleries} == galleries
        pictures = sum(map(len, rendered.galleries.values()))
        plots = [image for image in rendered.images if not image["src"].startswith("data:")]
        assert len(rendered.images) == pictures + len(plots)
        assert len(plots) == (len(list((root / "plots").glob("*.png"))) - 1 if name == REPORT_HTML else 1)
