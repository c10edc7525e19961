# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``python -m anomalib_bayes_pfl.benchmark``: every job keeps its row, failures fail the command, configs run."""

import html
import os
import re
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import yaml
from anomalib.engine import Engine

from anomalib_bayes_pfl import ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.reporting.comparison import RESULTS_HTML, RESULTS_PNG

from ..helpers import TINY_ARGUMENTS, TINY_CLIP, forked_main, tiny_module

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).parents[2] / "configs"
METRICS = ["image_AUROC", "pixel_AUROC"]
# Every job's metrics (``--metrics common``, the default): the same columns for every model.
COMMON_METRICS = ["image_AUROC", "image_AUPR", "image_F1Max", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPR"]


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("MVTecAD"), ["bottle", "metal_nut"], seed=1)


def _command(config: dict, cwd: Path, *options: str) -> list[str]:
    path = cwd / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return [sys.executable, "-m", "anomalib_bayes_pfl.benchmark", "--config", str(path), *options]


# One thread: on a small shared machine, oversubscribed OpenMP threads make Padim's fit many times slower.
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_benchmark(config: dict, cwd: Path, *options: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the command on ``config`` in ``cwd``; return the process and its results.csv."""
    _, _, module, *arguments = _command(config, cwd, *options)
    result = forked_main(module, *arguments, cwd=cwd, environment={"OMP_NUM_THREADS": "1"})
    tables = list((cwd / "runs").rglob("results.csv"))
    assert len(tables) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert str(tables[0].relative_to(cwd)) in result.stdout  # the path is printed
    return result, tables[0]


def test_failed_jobs_keep_every_row_and_fail_the_command(tmp_path, mvtec):
    """The issue's grid: a model that cannot be built after one that works; also one that fails while training."""
    tiny = {**TINY_ARGUMENTS, "stage_one_epochs": 1, "stage_two_epochs": 1}
    missing_weights = tmp_path / "missing" / "ViT-L-14-336px.pt"
    models = [
        {"class_path": "BayesPFL", "init_args": {**tiny, "synthetic_anomalies": 0.5}},  # works
        {"class_path": "BayesPFL", "init_args": {**tiny, "clip_pretrained": str(missing_weights)}},
        {"class_path": "Padim", "init_args": {"backbone": "no_such_backbone"}},
        # Refuses to train on normal images only, the train split of MVTecAD: fails in Engine.fit.
        {"class_path": "BayesPFL", "init_args": {**tiny, "synthetic_anomalies": 0.0}},
    ]
    categories = ["bottle"]  # one category: every row still comes from the grid's product, in its order
    config = {
        "accelerator": "cpu",
        "benchmark": {
            "seed": 0,
            "model": {"grid": models},
            "data": {
                "class_path": "MVTecAD",
                "init_args": {"root": str(mvtec), "num_workers": 0, "category": {"grid": categories}},
            },
        },
    }

    result, table = run_benchmark(config, tmp_path)

    assert result.returncode == 1, result.stderr[-3000:]
    results = pd.read_csv(table)
    # One row per grid point, in the grid's order: the working jobs finished before the failing ones started.
    assert list(zip(results["model.class_path"], results["data.init_args.category"], strict=True)) == [
        (model["class_path"], category) for model, category in product(models, categories)
    ]
    works = results.index < len(categories)
    assert results.loc[works, "error"].isna().all(), results.loc[works, "error"].tolist()
    assert results.loc[works, METRICS].apply(lambda metric: metric.between(0, 1)).all().all()
    failed = results[~works]
    assert failed["error"].str.len().gt(0).all()
    assert failed[[*METRICS, "job_duration"]].isna().all().all()
    assert failed["model.init_args.clip_pretrained"].eq(str(missing_weights)).sum() == len(categories)
    assert failed["error"].str.contains(str(missing_weights), regex=False).sum() == len(categories)
    assert failed["error"].str.contains("no_such_backbone").sum() == len(categories)

    # The last lines, after the table and the CSV path, name each failed job: model, category and error.
    last_lines = result.stderr.strip().splitlines()[-len(failed) - 1 :]
    assert last_lines[0].startswith(f"{len(failed)} of {len(results)} benchmark jobs failed"), result.stderr[-3000:]
    for line, (_, row) in zip(last_lines[1:], failed.iterrows(), strict=True):
        assert line.strip().startswith(f"{row['model.class_path']} / MVTecAD / {row['data.init_args.category']}")
        assert line.endswith(f": {row['error']}")
    names = [line.strip().split(": ", 1)[0] for line in last_lines[1:]]
    assert len(set(names)) == len(names), names  # the BayesPFL variants are told apart

    # The chart and the page, written with the CSV: every job's row with its error and a link to its log that opens.
    page = (table.parent / RESULTS_HTML).read_text()
    assert (table.parent / RESULTS_PNG).stat().st_size > 0
    assert page.count("</tr>") == 1 + len(results)
    for error in failed["error"]:
        assert html.escape(error) in page
    for log in results["log"]:
        link = Path(log).relative_to(table.parent.relative_to(tmp_path))
        assert f'href="{link}"' in page
        assert (table.parent / link).is_file()
    assert f"Chart and page: {table.parent.relative_to(tmp_path) / RESULTS_PNG}" in result.stdout

    # The printed table has a few columns: not every config key.
    header = next(line for line in result.stdout.splitlines() if line.split()[:3] == ["model", "data", "category"])
    assert {*METRICS, "seconds", "error"} <= set(header.split())
    assert "data.init_args.root" not in result.stdout
    assert len(header.split()) < len(results.columns) / 2


def test_offline_config_runs_with_its_loader_workers_and_the_same_metrics_for_every_model(tmp_path):
    """The shipped offline config as shipped (its loader workers), on a synthetic tree of one of its categories."""
    config = yaml.safe_load((CONFIGS / "benchmark_offline.yaml").read_text())
    data = config["benchmark"]["data"]["init_args"]
    assert data["num_workers"] >= 2
    categories = data["category"]["grid"][:1]
    data.update(root=str(write_tree(tmp_path / "target", categories, num_test_good=4, num_test_defect=4)))
    data["category"]["grid"] = categories

    result, table = run_benchmark(config, tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    results = pd.read_csv(table)
    models = [model["class_path"] for model in config["benchmark"]["model"]["grid"]]
    assert sorted(zip(results["model.class_path"], results["data.init_args.category"], strict=True)) == sorted(
        product(models, categories)
    )
    assert results["error"].isna().all(), results["error"]
    assert results[COMMON_METRICS].apply(lambda metric: metric.between(0, 1)).all().all(), results[COMMON_METRICS]
    assert "not_computed" not in results


def test_the_shipped_mvtec_comparison_runs_with_its_loader_workers_and_the_same_metrics_for_every_model(
    tmp_path, mvtec
):
    """configs/benchmark_zero_shot_mvtec.yaml with its 8 loader workers; roots, weights, model size and (no GPU here)
    the accelerator overridden, on one category."""
    visa = write_tree(tmp_path / "visa", ["candle", "pcb1"], layout="visa")
    torch.manual_seed(0)
    module = tiny_module(str(TINY_CLIP), stage_one_epochs=1, stage_two_epochs=1)
    data = ZeroShotCrossDataset(auxiliary_root=str(visa), target_root=str(mvtec), num_workers=0, train_batch_size=4)
    Engine(default_root_dir=tmp_path / "train", accelerator="cpu", devices=1, logger=False).train(
        module, datamodule=data
    )
    checkpoint = next((tmp_path / "train").rglob("model.ckpt"))

    config = yaml.safe_load((CONFIGS / "benchmark_zero_shot_mvtec.yaml").read_text())
    config["accelerator"] = ["cpu"]
    bayes_pfl = config["benchmark"]["model"]["grid"][0]
    assert bayes_pfl["class_path"] == "BayesPFL"
    assert bayes_pfl["init_args"]["k_shot"] == {"grid": [0, 4]}
    bayes_pfl["init_args"] = {**TINY_ARGUMENTS, "prompt_weights": str(checkpoint), "k_shot": {"grid": [0, 4]}}
    padim = {"class_path": "Padim", "init_args": {"backbone": "resnet18", "pre_trained": False}}
    config["benchmark"]["model"]["grid"] = [bayes_pfl, padim]
    assert config["benchmark"]["data"]["init_args"]["num_workers"] >= 2  # the config's own workers are kept
    config["benchmark"]["data"]["init_args"].update(root=str(mvtec), train_batch_size=4)
    config["benchmark"]["data"]["init_args"]["category"]["grid"] = ["metal_nut"]

    result, table = run_benchmark(config, tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    results = pd.read_csv(table)
    assert results["error"].isna().all(), results["error"]
    shots = results["model.init_args.k_shot"].fillna(-1).astype(int)
    rows = results.set_index(["model.class_path", "data.init_args.category", shots.rename("k_shot")])
    assert sorted(rows.index) == [
        ("BayesPFL", "metal_nut", 0),
        ("BayesPFL", "metal_nut", 4),
        ("Padim", "metal_nut", -1),
    ]
    # Every model on the same metrics; BayesPFL's own per-category columns as well.
    assert rows[COMMON_METRICS].apply(lambda metric: metric.between(0, 1)).all().all(), rows[COMMON_METRICS]
    assert rows.loc["BayesPFL", "category_mean_image_AUROC"].between(0, 1).all()
    assert rows.loc["Padim", "category_mean_image_AUROC"].isna().all()
    bayes_pfl_rows = rows.loc["BayesPFL"]
    # The memory changes the scores.
    assert bayes_pfl_rows.loc[("metal_nut", 0), "pixel_AUROC"] != bayes_pfl_rows.loc[("metal_nut", 4), "pixel_AUROC"]


def _tiny_grid(mvtec: Path, categories: list[str]) -> dict:
    """Tiny BayesPFL jobs (a few seconds each), one per category."""
    tiny = {**TINY_ARGUMENTS, "stage_one_epochs": 1, "stage_two_epochs": 0, "synthetic_anomalies": 0.5}
    return {
        "accelerator": "cpu",
        "benchmark": {
            "seed": 0,
            "model": {"class_path": "BayesPFL", "init_args": tiny},
            "data": {
                "class_path": "MVTecAD",
                "init_args": {"root": str(mvtec), "num_workers": 0, "category": {"grid": categories}},
            },
        },
    }


def _wait_for(condition, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def _job_processes(benchmark: psutil.Process) -> list[psutil.Process]:
    """The running jobs' processes: children of the fork server that the benchmark started."""
    servers = benchmark.children()
    return [job for server in servers for job in server.children()]


def test_a_job_that_dies_without_raising_is_its_row_s_error_and_the_run_goes_on(tmp_path, mvtec):
    """Killed as the kernel's out-of-memory killer kills, the second job gets a row that says so; the third runs."""
    categories = ["bottle", "metal_nut", "bottle"]
    process = subprocess.Popen(
        _command(_tiny_grid(mvtec, categories), tmp_path), cwd=tmp_path, env=ENVIRONMENT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    benchmark = psutil.Process(process.pid)
    _wait_for(lambda: next(tmp_path.rglob("logs/001.log"), None) is not None)
    _wait_for(lambda: len(_job_processes(benchmark)) == 1)
    for job in _job_processes(benchmark):
        job.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr[-3000:]
    results = pd.read_csv(next(tmp_path.rglob("results.csv")))
    assert len(results) == 3, stderr[-3000:]
    assert results.loc[[0, 2], "error"].isna().all(), results["error"]
    assert results.loc[[0, 2], "image_AUROC"].between(0, 1).all()
    assert results.loc[1, "error"].startswith("JobDied: killed by SIGKILL (the kernel's out-of-memory killer")
    assert (tmp_path / results.loc[1, "log"]).is_file()
    assert stderr.strip().splitlines()[-1].endswith(results.loc[1, "error"])
    assert (results.loc[[0, 2], "peak_memory_gb"] > 0).all()


def test_a_run_killed_part_way_keeps_every_finished_row(tmp_path, mvtec):
    process = subprocess.Popen(
        _command(_tiny_grid(mvtec, ["bottle", "metal_nut"] * 3), tmp_path), cwd=tmp_path, env=ENVIRONMENT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    table = tmp_path / "runs"

    def finished() -> int:
        path = next(table.rglob("results.csv"), None)
        return len(pd.read_csv(path)) if path is not None else 0

    _wait_for(lambda: finished() >= 2)
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in tree:
        member.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    results = pd.read_csv(next(table.rglob("results.csv")))
    assert 2 <= len(results) < 6
    assert results["error"].isna().all()
    assert results["image_AUROC"].between(0, 1).all()
    assert list(results["data.init_args.category"]) == (["bottle", "metal_nut"] * 3)[: len(results)]
    page = next(table.rglob("results.html")).read_text()  # drawn after the CSV: the kill may fall in between
    [(drawn, not_run)] = re.findall(r"(\d) of 6 benchmark jobs finished: 0 failed, (\d) not run", page)
    assert int(drawn) in {len(results) - 1, len(results)}
    assert int(drawn) + int(not_run) == 6


def test_a_job_over_the_memory_limit_is_stopped_and_named_once_in_the_log(tmp_path, mvtec):
    result, table = run_benchmark(_tiny_grid(mvtec, ["bottle"]), tmp_path, "--memory_limit", "0.05")
    assert result.returncode == 1, result.stderr[-3000:]
    results = pd.read_csv(table)
    error = results.loc[0, "error"]
    assert error.startswith("MemoryError: stopped when its processes held more than the memory limit of 0.05 GiB")
    assert results.loc[0, "peak_memory_gb"] > 0.05
    assert result.stderr.strip().splitlines()[-1].endswith(error)
    lines = [line for line in (tmp_path / "runs" / "pipeline.log").read_text().splitlines() if line.strip()]
    assert lines, result.stderr[-3000:]
    assert len(lines) == len(set(lines))  # each line once


def test_a_job_that_stops_making_progress_is_stopped_with_its_loader_workers(tmp_path):
    """A test image that never arrives (a pipe with no writer, as on a hung network share) holds a loader worker.

    The job is stopped after ``--stall_timeout`` seconds without a batch or a line of output, with its workers, and
    its row says so with the last progress it made.
    """
    tree = write_tree(tmp_path / "MVTecAD", ["stuck"], num_test_good=2, num_test_defect=2, seed=1)
    never_written = sorted((tree / "stuck" / "test" / "good").glob("*.png"))[0]
    never_written.unlink()
    os.mkfifo(never_written)
    config = {
        "accelerator": "cpu",
        "benchmark": {
            "seed": 0,
            "model": {"class_path": "Padim", "init_args": {"backbone": "resnet18", "pre_trained": False}},
            "data": {"class_path": "MVTecAD", "init_args": {"root": str(tree), "num_workers": 2, "category": "stuck"}},
        },
    }

    result, table = run_benchmark(config, tmp_path, "--stall_timeout", "5")

    assert result.returncode == 1, result.stderr[-3000:]
    error = pd.read_csv(table).loc[0, "error"]
    assert error.startswith("Stalled: stopped after 5 s without progress (--stall_timeout); its last progress: fit ")
    assert result.stderr.strip().splitlines()[-1].endswith(error)
    # The worker that waited for the image was stopped with the job: nothing has the pipe open any more.
    with pytest.raises(OSError, match="No such device or address"):
        os.open(never_written, os.O_WRONLY | os.O_NONBLOCK)
