# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``report.html``: the galleries hold the worst images of each kind, capped, and the page needs nothing outside."""

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
from PIL import Image

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.model.references import CategoryReferences
from anomalib_bayes_pfl.reporting import REPORT_HTML, RunReport
from anomalib_bayes_pfl.reporting.gallery import GALLERY_SIZE, Gallery
from anomalib_bayes_pfl.reporting.report import PREDICTIONS_HTML
from anomalib_bayes_pfl.settings import BayesPFLSettings

SIZE = 8


def _images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:04d}.png"
        Image.new("RGB", (12, 12), (index % 255, 80, 160)).save(path)
        paths.append(str(path))
    return paths


def _batches(paths: list[str], category: str, *, seed: int, review: bool, labels: bool = True) -> list[BayesPFLBatch]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(paths), 16):
        chunk = paths[start : start + 16]
        count = len(chunk)
        score = torch.rand(count, generator=generator)
        uncertainty = torch.rand(count, generator=generator) * 0.1
        batches.append(
            BayesPFLBatch(
                image=torch.zeros(count, 3, SIZE, SIZE),
                image_path=chunk,
                dataset=["MVTec"] * count,
                category=[category] * count,
                image_threshold=torch.full((count,), 0.5),
                pixel_threshold=torch.full((count,), 0.5),
                gt_label=(torch.rand(count, generator=generator) < 0.4).long() if labels else None,
                pred_score=score,
                pred_label=score > 0.5,
                anomaly_map=torch.rand(count, SIZE, SIZE, generator=generator),
                uncertainty=uncertainty,
                uncertainty_map=torch.rand(count, SIZE, SIZE, generator=generator) * 0.1,
                needs_review=uncertainty > 0.09 if review else None,
            )
        )
    return batches


def _run(root: Path, batches: list[BayesPFLBatch], kind: str = "test", **options) -> tuple[RunReport, str]:
    settings = BayesPFLSettings(**options)
    table = pd.DataFrame({"images": [len(batches)]}, index=["mean"])
    references = {"gear": CategoryReferences([], {}, calibration_images=["good/1.png", "good/2.png"])}
    report = RunReport(lambda: settings, lambda: table, lambda: references)
    trainer = SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True, default_root_dir=root)
    getattr(report, f"on_{kind}_start")(trainer, None)
    for batch in batches:
        getattr(report, f"on_{kind}_batch_end")(trainer, None, batch, batch, 0)
    getattr(report, f"on_{kind}_end")(trainer, None)
    return report, (root / (REPORT_HTML if kind == "test" else PREDICTIONS_HTML)).read_text()


def _section(page: str, heading: str) -> str:
    return page.split(f"<h2>{heading}</h2>")[1].split("<h2>")[0]


def _gallery_paths(page: str, heading: str) -> list[str]:
    return re.findall(r'<img src="data:image/jpeg;base64,[^"]+" alt="([^"]+)"', _section(page, heading))


def test_each_gallery_holds_the_worst_images_of_its_kind_in_order(tmp_path):
    paths = _images(tmp_path / "images", 100)
    batches = _batches(paths, "gear", seed=0, review=True)
    report, page = _run(tmp_path / "run", batches, review_rate=0.1)
    rows = pd.DataFrame([vars(entry) for entry in report.rows])
    assert len(rows) == 100
    false_alarms = rows[(rows.label == 0) & (rows.pred_label == 1)].sort_values("score", ascending=False)
    misses = rows[(rows.label == 1) & (rows.pred_label == 0)].sort_values("score")
    review = rows[rows.needs_review.astype(bool)].sort_values("uncertainty", ascending=False)
    expected = {"Worst false alarms": false_alarms, "Worst misses": misses, "Review queue": review}
    for heading, images in expected.items():
        assert len(images) > 0
        assert _gallery_paths(page, heading) == images.path.head(GALLERY_SIZE).tolist()
        assert f"{min(len(images), GALLERY_SIZE)} of {len(images)} shown" in _section(page, heading)
    assert "gear: 2 calibration images" in page
    assert 'src="http' not in page
    assert "<script" not in page


def test_review_fraction_s_queue_is_the_most_uncertain_share_of_each_category_over_the_run(tmp_path):
    batches = [
        *_batches(_images(tmp_path / "a", 60), "a", seed=1, review=False),
        *_batches(_images(tmp_path / "b", 60), "b", seed=2, review=False),
    ]
    report, page = _run(tmp_path / "run", batches, review_fraction=0.25)
    rows = pd.DataFrame([vars(entry) for entry in report.rows])
    marked = rows.groupby("category", group_keys=False).apply(lambda group: group.nlargest(15, "uncertainty"))
    queue = marked.sort_values("uncertainty", ascending=False).path.head(GALLERY_SIZE).tolist()
    assert _gallery_paths(page, "Review queue") == queue
    assert f"{GALLERY_SIZE} of 30 shown" in _section(page, "Review queue")


def test_the_page_stays_the_same_size_however_many_images_the_run_has(tmp_path):
    sizes = {}
    for count in (100, 1000):
        batches = _batches(_images(tmp_path / f"images{count}", count), "gear", seed=3, review=True)
        report, page = _run(tmp_path / f"run{count}", batches, review_rate=0.1)
        kept = sum(len(heap) for gallery in report.galleries.values() for heap in gallery.heaps.values())
        assert kept <= 3 * GALLERY_SIZE  # maps kept while the run scores: the candidates only
        assert page.count('<figure class="entry">') <= 3 * GALLERY_SIZE
        sizes[count] = len(page)
    assert page.count('<figure class="entry">') == 3 * GALLERY_SIZE  # 1000 images fill every gallery
    assert sizes[1000] < 1.5 * sizes[100]


def test_a_predict_page_has_the_labels_the_score_distribution_and_the_queue(tmp_path):
    paths = _images(tmp_path / "images", 40)
    batches = _batches(paths, "gear", seed=4, review=True, labels=False)
    _, page = _run(tmp_path / "run", batches, kind="predict", review_rate=0.1)
    gear_row = re.search(r"<th>gear</th>(.*?)</tr>", _section(page, "Labels"), re.S).group(1)
    counts = [int(value) for value in re.findall(r"<td>(\d+)</td>", gear_row)]
    scores = torch.cat([batch.pred_score for batch in batches])
    uncertainty = torch.cat([batch.uncertainty for batch in batches])
    assert counts == [40, int((scores > 0.5).sum()), int((uncertainty > 0.09).sum())]
    assert (tmp_path / "run" / "plots" / "predicted_scores.png").is_file()
    assert 'src="plots/predicted_scores.png"' in page
    assert len(_gallery_paths(page, "Labelled anomalous")) == min(GALLERY_SIZE, int((scores > 0.5).sum()))
    assert "Worst misses" not in page


def test_a_gallery_keeps_the_largest_per_group_and_ties_by_path():
    gallery = Gallery("g", "", rank=lambda entry: entry.score, size=2)
    entries = [
        SimpleNamespace(path=f"{name}.png", score=score)
        for name, score in zip("abcde", [0.1, 0.9, 0.5, 0.9, 0.2], strict=True)
    ]
    for entry in entries:
        if gallery.wants(entry.score):
            gallery.offer(entry)
    assert [entry.path for entry in gallery.entries(lambda entry: True)] == ["d.png", "b.png"]


def test_without_a_review_rule_the_queue_says_how_to_get_one(tmp_path):
    batches = _batches(_images(tmp_path / "images", 20), "gear", seed=5, review=False)
    _, page = _run(tmp_path / "run", batches)
    assert "No review rule was given (--model.review_rate or --model.review_fraction)." in page
    assert "None in this run." in _section(page, "Review queue")
