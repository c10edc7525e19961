# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The pipeline: the grid's jobs, one per device at a time, their rows, the printed summary and the exit status."""

import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import torch
from anomalib.pipelines import Benchmark
from anomalib.pipelines.components.base.pipeline import log_file
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.utils.config import flatten_dict
from jsonargparse import ArgumentParser, Namespace

from anomalib_bayes_pfl.reporting.comparison import RESULTS_HTML, RESULTS_PNG

from .jobs import GIB, BenchmarkJob, Metrics, one_line
from .results import RESULT_COLUMNS, JobsFailedError, ResultsTable, job_columns

logger = logging.getLogger(__name__)

# Each job's memory: a share of this machine's for each job that runs at the same time.
MEMORY_SHARE = 0.5
# Seconds a job may go without a batch or a line of output. The longest silent steps of a ViT-L job on a GPU
# (building the model, preparing few-shot references and thresholds, Patchcore's coreset) take minutes at most.
STALL_TIMEOUT = 1800.0
MODULE = "anomalib_bayes_pfl.benchmark"
# glibc returns freed memory to the system at once (see the package docstring); a value set by the user is kept.
ALLOCATOR_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": "0"}


def _plain(value: Any) -> Any:
    """Mappings and sequences of a parsed config (OmegaConf's included) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def grid_points(container: dict) -> Iterator[dict]:
    """Every point of the grid, grids inside a chosen grid item included (one model's ``k_shot: {grid: [0, 4]}``).

    anomalib expands the outer grids only, and would hand such a model its ``{grid: ...}`` as a value.
    """
    for config in get_iterator_from_grid_dict(container):
        config = _plain(config)
        if any(key == "grid" or key.endswith(".grid") for key in flatten_dict(config)):
            yield from grid_points(config)
        else:
            yield config


def _devices(accelerator: str) -> list[int | None]:
    """The device of each job that runs at the same time: one per GPU for ``cuda``, one job at a time on a CPU."""
    if accelerator not in {"cpu", "cuda"}:
        msg = f"Unsupported accelerator: {accelerator}; use cpu or cuda."
        raise ValueError(msg)
    count = torch.cuda.device_count() if accelerator == "cuda" else 0
    return list(range(count)) if count > 1 else [None]


def _log_to(path: str) -> None:
    """This process's log lines go to ``path`` once each (anomalib's redirect wrote every line once per logger)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logging.root.addHandler(handler)
    logging.root.setLevel(logging.INFO)
    logging.captureWarnings(capture=True)


class ZeroShotCapableBenchmark(Benchmark):
    """anomalib's benchmark pipeline, each job in a process of its own, its row written as soon as it finishes."""

    @staticmethod
    def get_parser(parser: ArgumentParser | None = None) -> ArgumentParser:
        """Anomalib's ``--config``; each job's memory limit and stall limit, and the metrics every job is tested on."""
        parser = Benchmark.get_parser(parser)
        total = psutil.virtual_memory().total / GIB
        parser.add_argument(
            "--memory_limit",
            type=float | None,
            default=None,
            help=(
                f"GiB that each job's processes may hold before the job is stopped (its row says so); default: "
                f"{MEMORY_SHARE:.0%} of this machine's memory ({MEMORY_SHARE * total:.1f} GiB) divided by the number "
                f"of jobs that run at once (one per GPU)."
            ),
        )
        parser.add_argument(
            "--stall_timeout",
            type=float,
            default=STALL_TIMEOUT,
            help=(
                "Seconds a job may go without finishing a batch or writing a line to its log before it is stopped "
                "with its loader workers (its row says so, with its last progress). The default suits ViT-L on a "
                "GPU; raise it where a step of a job may run longer without output (large models on a CPU)."
            ),
        )
        parser.add_argument(
            "--metrics",
            type=Metrics,
            default="common",
            help=(
                "common: every job is tested on the same metrics, image AUROC, AUPR and F1Max and pixel AUROC, "
                "AUPRO and AUPR (the pixel ones where the model gives maps and the data has masks; a row's "
                "`not_computed` says why one has no value); model: each model's own evaluator."
            ),
        )
        return parser

    def run(self, args: Namespace | None = None) -> None:
        """Run every job of every accelerator; raise :class:`JobsFailedError` once all are done, if a job failed."""
        if args is None:
            args = self.get_parser().parse_args()
        pipeline_args = self._get_args(args)
        _log_to(log_file)
        for name, value in ALLOCATOR_ENVIRONMENT.items():  # read by the job processes' allocator when they start
            os.environ.setdefault(name, value)
        # The job processes start from a server that has imported this module (and anomalib) once.
        multiprocessing.get_context("forkserver").set_forkserver_preload([MODULE])
        # Microseconds: two runs started in the same second must not share a folder.
        folder = Path("runs") / "benchmark" / datetime.now().strftime("%Y-%m-%d-%H_%M_%S_%f")
        folder.mkdir(parents=True)
        accelerators = pipeline_args["accelerator"]
        accelerators = accelerators if isinstance(accelerators, list) else [accelerators]
        job_args = pipeline_args.get("benchmark") or {}
        configs = list(grid_points(job_args))
        jobs = [
            BenchmarkJob(index, accelerator, config["seed"], config, args.metrics)
            for index, (accelerator, config) in enumerate((a, c) for a in accelerators for c in configs)
        ]
        table = ResultsTable(folder, planned=len(jobs))
        print(f"{len(jobs)} benchmark jobs; results.csv is written as each one finishes: {table.path}", flush=True)
        for accelerator in accelerators:
            devices = _devices(accelerator)
            limit = args.memory_limit or MEMORY_SHARE * psutil.virtual_memory().total / GIB / len(devices)
            chosen = [job for job in jobs if job.accelerator == accelerator]
            self._run_jobs(chosen, devices, folder, table, (limit, args.stall_timeout), len(jobs))
        results = table.frame()
        columns = {**job_columns(results), **RESULT_COLUMNS}
        summary = results.filter(items=list(columns)).rename(columns=columns)
        print(summary.to_string(index=False, na_rep="", float_format="{:.3f}".format, max_colwidth=60))
        print(f"Results of {len(results)} jobs, all columns: {table.path}")
        print(f"Chart and page: {table.path.with_name(RESULTS_PNG)}, {table.path.with_name(RESULTS_HTML)}")
        if results["error"].notna().any():
            raise JobsFailedError(results)

    @staticmethod
    def _run_jobs(
        jobs: list[BenchmarkJob],
        devices: list[int | None],
        folder: Path,
        table: ResultsTable,
        limits: tuple[float, float],
        total: int,
    ) -> None:
        """Run the jobs, one per device at a time, each adding its row when it ends; ``limits``: GiB and seconds."""
        pending = list(jobs)
        lock = threading.Lock()

        def work(device: int | None) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    job = pending.pop(0)
                try:
                    row = job.run(device, folder, *limits)
                except Exception as error:  # in watching the job: its row says so, and the next job runs
                    logger.exception("Benchmark job %d could not be run.", job.index)
                    row = {**job.settings, "error": f"could not be run: {one_line(error)}"}
                table.add(job.index, row)
                outcome = f"failed: {row['error']}" if isinstance(row.get("error"), str) else "done"
                print(f"[{len(table.rows)}/{total}] job {job.index}: {outcome}", flush=True)

        with ThreadPoolExecutor(max_workers=len(devices)) as executor:
            for future in [executor.submit(work, device) for device in devices]:
                future.result()


def main() -> None:
    """Command-line entry point; exit status 1, after the results table, when a job failed."""
    try:
        ZeroShotCapableBenchmark().run()
    except JobsFailedError as error:
        sys.stdout.flush()  # the table before the failures, also when both streams go to one pipe
        sys.exit(str(error))
