# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""A run's tables and pages keep every image, keyed by its place in the dataset, and a failed run loses nothing.

Two processes are played in this one: each writes its part as a process of a DDP run would, and the first one gathers.
"""

import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.data.class_names import image_categories
from anomalib_bayes_pfl.reporting import PredictionTable, RunReport
from anomalib_bayes_pfl.reporting.predictions import PARTIAL_CSV, PREDICTIONS_CSV
from anomalib_bayes_pfl.reporting.visualization import UncertaintyVisualizer
from anomalib_bayes_pfl.settings import BayesPFLSettings

# Distinct images that share a file name: the same name in two folders.
PATHS = ["/data/part/good/000.png", "/data/part/crack/000.png", "/data/part/good/001.png", "/data/part/crack/001.png"]


def _batch(paths: list[str], scores: list[float]) -> BayesPFLBatch:
    count = len(paths)
    return BayesPFLBatch(
        image=torch.zeros(count, 3, 4, 4),
        image_path=paths,
        dataset=["part"] * count,
        category=["part"] * count,
        class_name=["part"] * count,
        image_threshold=torch.full((count,), 0.5),
        pixel_threshold=torch.full((count,), 0.5),
        pred_score=torch.tensor(scores),
        pred_label=torch.tensor(scores) > 0.5,
        uncertainty=torch.full((count,), 0.01),
    )


def _trainer(root: Path, rank: int = 0, world_size: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        is_global_zero=rank == 0,
        default_root_dir=root,
        predict_dataloaders=[DataLoader([])],
        strategy=SimpleNamespace(barrier=lambda *_: None),
    )


def _settings() -> BayesPFLSettings:
    return BayesPFLSettings()


# The model's rule for each image's category, as a BayesPFL without a datamodule or stored categories answers it.
MODULE = SimpleNamespace(
    image_categories=lambda paths: image_categories(paths, len(paths), class_name=None, datamodule=None)
)


@pytest.mark.parametrize("repeated", [False, True])
def test_two_processes_keep_every_image_in_the_dataset_s_order_even_with_shared_names(tmp_path, repeated):
    """Rank r scores indices r, r + 2, ...: four rows, in the dataset's order, none merged or dropped. A sampler that
    gives every process every image (``use_distributed_sampler false``) still gives each place one row."""
    writers = {rank: PredictionTable(_settings) for rank in (0, 1)}
    for rank, writer in writers.items():
        writer.on_predict_start(_trainer(tmp_path, rank, 2), MODULE)
        indices = [0, 1, 2, 3] if repeated else [rank, rank + 2]
        batch = _batch([PATHS[index] for index in indices], [0.1 * (index + 1) for index in indices])
        writer.write_on_batch_end(_trainer(tmp_path, rank, 2), None, batch, indices, batch, 0, 0)
    writers[1].on_predict_end(_trainer(tmp_path, 1, 2), None)
    writers[0].on_predict_end(_trainer(tmp_path, 0, 2), None)
    table = pd.read_csv(tmp_path / PREDICTIONS_CSV)
    assert table.image_path.tolist() == PATHS
    assert table.pred_score.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert sorted(path.name for path in tmp_path.iterdir()) == [PREDICTIONS_CSV]


def test_without_dataset_indices_several_processes_are_refused_with_the_fix(tmp_path):
    writer = PredictionTable(_settings)
    trainer = _trainer(tmp_path, 1, 2)
    writer.on_predict_start(trainer, MODULE)
    batch = _batch(PATHS[:2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"carries no dataset indices.*2 processes.*--trainer.devices 1"):
        writer.write_on_batch_end(trainer, None, batch, [], batch, 3, 0)


def test_a_failed_predict_leaves_the_earlier_table_and_keeps_its_own_rows(tmp_path, caplog):
    earlier = tmp_path / PREDICTIONS_CSV
    writer = PredictionTable(_settings)
    writer.on_predict_start(_trainer(tmp_path), MODULE)
    batch = _batch(PATHS, [0.1, 0.2, 0.3, 0.4])
    writer.write_on_batch_end(_trainer(tmp_path), None, batch, None, batch, 0, 0)
    writer.on_predict_end(_trainer(tmp_path), None)
    before = earlier.read_bytes()
    assert len(pd.read_csv(earlier)) == 4

    again = PredictionTable(_settings)
    again.on_predict_start(_trainer(tmp_path), MODULE)
    batch = _batch(PATHS[:3], [0.5, 0.6, 0.7])
    again.write_on_batch_end(_trainer(tmp_path), None, batch, None, batch, 0, 0)
    with caplog.at_level(logging.WARNING):
        again.on_exception(_trainer(tmp_path), None, OSError("image file is truncated"))
    assert earlier.read_bytes() == before  # the earlier run's table, untouched
    assert len(pd.read_csv(tmp_path / PARTIAL_CSV)) == 3  # what the failed run scored
    assert f"Predict stopped after 3 images; their rows are in {tmp_path / PARTIAL_CSV}" in caplog.text


def test_the_page_of_two_processes_keeps_images_that_share_a_name(tmp_path, monkeypatch):
    reports = {rank: RunReport(_settings, lambda: None, dict) for rank in (0, 1)}
    for rank, report in reports.items():
        report.on_predict_start(_trainer(tmp_path, rank, 2), None)
        batch = _batch(PATHS[rank * 2 : rank * 2 + 2], [0.7, 0.8])
        report.on_predict_batch_end(_trainer(tmp_path, rank, 2), None, batch, batch, 0)
    shares = [(report.rows, {name: g.heaps for name, g in report.galleries.items()}) for report in reports.values()]

    def gather(output: list, _: object) -> None:
        output[:] = shares

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    reports[0].on_predict_end(_trainer(tmp_path, 0, 2), None)
    assert sorted(entry.path for entry in reports[0].rows) == sorted(PATHS)
    assert len(reports[0].galleries["anomalous"].entries(lambda entry: True)) == 4
    assert "Bayes-PFL predictions: 4 images" in (tmp_path / "predictions.html").read_text()


def test_the_visualizer_of_two_processes_marks_images_that_share_a_file_name(tmp_path, monkeypatch):
    settings = BayesPFLSettings(review_fraction=0.5)
    visualizers = {rank: UncertaintyVisualizer(settings=lambda: settings) for rank in (0, 1)}
    same_file = tmp_path / "000.png"  # two images whose visualisations anomalib names alike
    for rank, visualizer in visualizers.items():
        visualizer.written = [(("part", "part"), 0.1 * (rank + 1), [same_file])]
    shares = [visualizer.written for visualizer in visualizers.values()]

    def gather(output: list, _: object) -> None:
        output[:] = shares

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    stamped = []
    monkeypatch.setattr("anomalib_bayes_pfl.reporting.visualization.stamp_review_banner", stamped.append)
    assert visualizers[0]._stamp_marked(_trainer(tmp_path, 0, 2)) == 1  # half of two images, not of one
    assert stamped == [same_file]
