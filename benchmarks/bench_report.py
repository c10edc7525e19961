# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What a run's pictures cost: the plots and ``report.html`` as a share of an ``anomalib test`` run's time.

Runs ``Engine.test`` with the demo's model (tiny random CLIP, 64 px, 4 samples; 4 references, thresholds and a review
rule calibrated on 20 normal images per category) on synthetic trees of the demo's kind: its four unseen categories
in one run, with 24 test images each (96 images, as in the demo), and each size in ``--images`` (split over the same
categories). The time covers the whole ``anomalib test``: few-shot preparation, scoring, metrics, anomalib's
per-image visualisations, the table and the reporting.
Inside the run it times each reporting step: the plots (``write_plots``), the page's per-batch bookkeeping
(``RunReport.on_test_batch_end``: the gallery candidates) and the page itself (``RunReport.on_test_end``). Prints one
JSON line per run: images, the test run's seconds, the reporting seconds and their share, and the sizes of
``report.html`` and of ``plots/``, which must not grow with the number of images beyond the capped galleries.

    python benchmarks/bench_report.py --threads 2 --images '[1000]'
"""

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import wraps
from pathlib import Path

import torch
from anomalib.engine import Engine
from jsonargparse import CLI
from lightning.pytorch import seed_everything

from anomalib_bayes_pfl import BayesPFL, ZeroShotCrossDataset
from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.demo import AUXILIARY_CATEGORIES, CALIBRATION_IMAGES, TARGET_CATEGORIES
from anomalib_bayes_pfl.reporting import REPORT_HTML, RunReport
from anomalib_bayes_pfl.reporting import metrics as reporting_metrics
from anomalib_bayes_pfl.reporting.plots import PLOTS_DIR

SPENT: defaultdict[str, float] = defaultdict(float)


def timed(name: str, function: Callable) -> Callable:
    """``function``, adding the seconds it takes to ``SPENT[name]``."""

    @wraps(function)
    def wrapper(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - started

    return wrapper


def time_reporting() -> None:
    """Time the reporting steps wherever the run calls them."""
    reporting_metrics.write_plots = timed("plots", reporting_metrics.write_plots)
    RunReport.on_test_batch_end = timed("gallery_candidates", RunReport.on_test_batch_end)
    RunReport.on_test_end = timed("page", RunReport.on_test_end)


def test_run(root: Path, images_per_category: int, seed: int) -> dict[str, float]:
    """One timed test run of the four categories, on a fresh tree with this many test images each (half anomalous)."""
    write_tree(root / "auxiliary", AUXILIARY_CATEGORIES[:1], seed=seed, num_train=2)  # not used by a test run
    write_tree(root / "target", TARGET_CATEGORIES, seed=seed, num_train=4 + CALIBRATION_IMAGES,
               num_test_good=images_per_category // 2, num_test_defect=images_per_category // 2)  # fmt: skip
    datamodule = ZeroShotCrossDataset(auxiliary_root=str(root / "auxiliary"), target_root=str(root / "target"),
                                      eval_batch_size=16, num_workers=0)  # fmt: skip
    seed_everything(seed)
    model = BayesPFL(clip_model=TINY_CLIP_CONFIG, clip_pretrained=None, image_size=64, tap_layers=None,
                     num_samples=4, smoothing_sigma=1.0, k_shot=4, false_alarm_rate=0.1,
                     calibration_images=CALIBRATION_IMAGES, review_rate=0.1)  # fmt: skip
    engine = Engine(default_root_dir=root / "results", accelerator="cpu", devices=1, logger=False)
    SPENT.clear()
    started = time.perf_counter()
    engine.test(model, datamodule=datamodule)
    seconds = time.perf_counter() - started
    folder = next((root / "results").rglob(REPORT_HTML)).parent
    reporting = sum(SPENT.values())
    return {
        "images": images_per_category * len(TARGET_CATEGORIES),
        "test_seconds": round(seconds, 2),
        **{f"{name}_seconds": round(value, 3) for name, value in SPENT.items()},
        "reporting_seconds": round(reporting, 2),
        "reporting_share": round(reporting / seconds, 4),
        "report_html_kb": round((folder / REPORT_HTML).stat().st_size / 1024, 1),
        "plots_kb": round(sum(path.stat().st_size for path in (folder / PLOTS_DIR).rglob("*.png")) / 1024, 1),
    }


def main(images: list[int] | None = None, threads: int | None = None, seed: int = 0) -> None:
    """Print a JSON line for the demo's size (96 test images) and for each size in ``images``.

    Args:
        images: Further numbers of test images, split over the demo's four categories.
        threads: torch CPU threads (default: torch's own choice).
        seed: Seed of the data and the head.
    """
    if threads:
        torch.set_num_threads(threads)
    time_reporting()
    for total in [96, *(images or [])]:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(test_run(Path(folder), total // len(TARGET_CATEGORIES), seed)), flush=True)


if __name__ == "__main__":
    CLI(main)
