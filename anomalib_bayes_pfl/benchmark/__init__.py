# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``anomalib benchmark`` that can also run zero-shot models, and that keeps every job's result.

    python -m anomalib_bayes_pfl.benchmark --config configs/benchmark_zero_shot_mvtec.yaml [--memory_limit 12]

anomalib's benchmark config format (``grid`` keys, one runner per accelerator) and
``runs/benchmark/<time>/results.csv``, with the jobs run otherwise, because anomalib 2.7's

- passes the datamodule to ``Engine.fit`` as ``train_dataloaders``, so that the Engine validates a zero-shot model
  (BayesPFL with trained prompts, WinClip) with no data and every such job fails;
- builds the models in the generator, so that one model that cannot be built (WinClip without network access to
  its weights) ends the generator and drops the rows of the jobs that had already finished;
- writes ``results.csv`` only once every job has finished, and runs the jobs in its own process: one job that dies
  without raising (the kernel's out-of-memory killer, a signal, a crash in a native library) loses every row;
- writes no row for a failed job, needs every row to have the same keys, and exits 0 whatever failed.

Here each job builds its own model and datamodule in a process of its own, whose memory is watched: a job whose
processes hold more than ``--memory_limit`` GiB is stopped. A job that fails, raises, dies or is stopped leaves a row
with its settings and the reason in the ``error`` column, and the next job runs. ``results.csv`` is written again as
each job finishes, so a run that is itself killed keeps every finished row, and with it ``results.png``, a chart of
each metric per model and category, and ``results.html``, the chart and the rows on one page. Each row names its
job's log (everything the job printed, logged or crashed with) in the ``log`` column, and its peak memory in
``peak_memory_gb``. At the end the command prints a short table and the CSV path, then names the failed jobs and
exits 1 if there are any.

Memory. Jobs run with glibc's ``MALLOC_TRIM_THRESHOLD_=0`` unless it is set: anomalib's Patchcore coreset selection
allocates and frees an embedding-sized temporary in each of its thousands of steps, and glibc's allocator kept the
freed ones, so that one job's resident memory grew by the temporary's size at every step (past 18 GB on the offline
config). Returning free memory at once keeps it at the job's working size.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pandas as pd
import psutil
import torch
from anomalib.data import get_datamodule
from anomalib.engine import Engine
from anomalib.models import get_model
from anomalib.pipelines import Benchmark
from anomalib.pipelines.components.base.pipeline import log_file
from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
from anomalib.utils.config import flatten_dict
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import seed_everything

from anomalib_bayes_pfl.reporting.comparison import RESULTS_HTML, RESULTS_PNG, write_comparison

logger = logging.getLogger(__name__)

# Columns that name a job (CSV column: header), where present; ``model`` is a model given by name, not class_path.
JOB_COLUMNS = {
    "model": "model",
    "model.class_path": "model",
    "data.class_path": "data",
    "data.init_args.category": "category",
}
# The settings columns of a row: the flattened config of its grid point, and its runner's accelerator.
SETTINGS = r"^(accelerator|seed|model|data)(\.|$)"
# The printed table's other columns, where present; results.csv has every column.
RESULT_COLUMNS = {
    **{name: name for name in ("image_AUROC", "pixel_AUROC", "category_mean_image_AUROC", "category_mean_pixel_AUROC")},
    "job_duration": "seconds",
    "peak_memory_gb": "GB",
    "error": "error",
}
# Each job's memory: a share of this machine's for each job that runs at the same time.
MEMORY_SHARE = 0.5
POLL_SECONDS = 0.2
MODULE = "anomalib_bayes_pfl.benchmark"
GIB = 2**30
# glibc returns freed memory to the system at once (see the module docstring); a value set by the user is kept.
ALLOCATOR_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": "0"}


def _one_line(error: BaseException | str) -> str:
    """The error as one CSV- and table-friendly line."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    return " ".join(text.split())


def _job_columns(results: pd.DataFrame) -> dict[str, str]:
    """The columns that name a job (CSV column: header).

    Model, data and category, and the settings that differ between jobs of one model class (a grid over a model's
    arguments, over seeds or accelerators); arguments of another model class, empty in a row, do not count.
    """
    named = {column: header for column, header in JOB_COLUMNS.items() if column in results}
    settings = results.filter(regex=SETTINGS).drop(columns=list(named)).astype(str)
    model_class = results.get("model.class_path", pd.Series(None, index=results.index))
    varying = settings.groupby(model_class, dropna=False).nunique(dropna=False).gt(1).any()
    return {**named, **{column: column.replace(".init_args.", ".") for column in varying.index[varying]}}


def _job_name(row: pd.Series, columns: dict[str, str]) -> str:
    """E.g. ``BayesPFL / MVTecAD / bottle / model.clip_pretrained=x.pt``: the grid point of a row."""
    values = row[list(columns)].dropna()
    return " / ".join(
        str(value) if column in JOB_COLUMNS else f"{columns[column]}={value}" for column, value in values.items()
    )


def models_and_categories(results: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each row's model (with the settings that vary between its jobs) and category (with its data, where they vary).

    The chart's groups: a job is one model on one category.
    """
    columns = _job_columns(results)
    model_columns = {column: header for column, header in columns.items() if header not in ("data", "category")}
    models = results.apply(lambda row: _job_name(row, model_columns), axis=1)
    data = results.get("data.class_path", pd.Series("", index=results.index)).fillna("").astype(str)
    category = results.get("data.init_args.category", pd.Series(None, index=results.index))
    categories = category.fillna(data).astype(str)
    if data.nunique() > 1:
        categories = data + "/" + categories
    return models, categories


class JobsFailedError(RuntimeError):
    """Some jobs failed; raised after all results, theirs included, are written."""

    def __init__(self, results: pd.DataFrame) -> None:
        columns = _job_columns(results)
        failed = results[results["error"].notna()]
        lines = [f"  {_job_name(row, columns)}: {row['error']}" for _, row in failed.iterrows()]
        super().__init__(
            f"{len(failed)} of {len(results)} benchmark jobs failed (their logs: the `log` column of the CSV):\n"
            + "\n".join(lines)
        )


class ResultsTable:
    """``results.csv``, written again whenever a job's row is added, so that it always holds every finished job.

    ``results.png`` and ``results.html`` are drawn again from the same rows.

    Rows keep the grid's order whatever order their jobs finish in. The file is replaced in one step (written beside,
    then renamed), so that a reader, or a run killed while writing, never sees half of it.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "results.csv"
        self.rows: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, index: int, row: dict[str, Any]) -> None:
        """Record the row of job ``index`` and write the file."""
        with self._lock:
            self.rows[index] = row
            frame = self.frame()
            partial = self.path.with_suffix(".csv.partial")
            frame.to_csv(partial, index=False)
            partial.replace(self.path)
            write_comparison(frame, *models_and_categories(frame), self.path.parent)

    def frame(self) -> pd.DataFrame:
        """One row per finished job, in grid order, ``error`` last; models with other metrics leave empty cells."""
        frame = pd.DataFrame([self.rows[index] for index in sorted(self.rows)])
        last = [column for column in ("log", "error") if column in frame]
        return frame.reindex(columns=[*frame.columns.drop(last), "log", "error"])


def _tree_memory(process: psutil.Process) -> int:
    """Anonymous resident memory (tensors, heaps) of a process and its descendants, in bytes.

    File-backed pages (the libraries every worker maps) are shared and can be dropped, so they are not counted.
    """
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error, OSError):  # a process that has just ended
            status = Path(f"/proc/{member.pid}/status").read_text()
            # A process that is ending (a zombie) has no memory left and no RssAnon line.
            total += sum(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("RssAnon:"))
    return total


def _stop_tree(process: psutil.Process) -> None:
    """Kill a job's process and every process it started."""
    members = [process, *process.children(recursive=True)]
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(members, timeout=10)


@dataclass(frozen=True)
class BenchmarkJob:
    """One grid point: a model and a datamodule, fitted and tested in a process of its own."""

    index: int
    accelerator: str
    seed: int
    config: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        """The columns that say what the job was: its accelerator and its flattened grid point."""
        return {"accelerator": self.accelerator, **flatten_dict(self.config)}

    def run(self, device: int | None, folder: Path, memory_limit: float) -> dict[str, Any]:
        """The job's row: settings, durations, peak memory and test metrics, or settings and why it stopped."""
        log = folder / "logs" / f"{self.index:03d}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("forkserver")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_job_process, args=(self, device, str(log), sending), daemon=True)
        child.start()
        sending.close()
        watched, peak, message, over_limit = psutil.Process(child.pid), 0, None, False
        while child.is_alive() and message is None:
            if receiving.poll(POLL_SECONDS):
                with contextlib.suppress(EOFError):
                    message = receiving.recv()
                break
            with contextlib.suppress(psutil.Error):
                peak = max(peak, _tree_memory(watched))
            if peak > memory_limit * GIB:
                over_limit = True
                _stop_tree(watched)
        if message is None:  # the child may have sent its row just before it ended
            with contextlib.suppress(EOFError, OSError):
                message = receiving.recv() if receiving.poll(0) else None
        child.join()
        row = {**self.settings, "peak_memory_gb": round(peak / GIB, 3), "log": str(log)}
        if message is not None and message[0] == "row":
            return {**row, **message[1]}
        if message is not None:
            reason = message[1]
        elif over_limit:
            reason = (
                f"MemoryError: stopped when its processes held more than the memory limit of {memory_limit:g} GiB "
                f"(--memory_limit)"
            )
        elif child.exitcode is not None and child.exitcode < 0:
            name = signal.Signals(-child.exitcode).name
            cause = " (the kernel's out-of-memory killer, or another process)" if name == "SIGKILL" else ""
            reason = f"JobDied: killed by {name}{cause} without an error of its own"
        else:
            reason = f"JobDied: its process ended with exit status {child.exitcode} without a result"
        logger.error("Benchmark job %d %s failed: %s; its log: %s", self.index, self.settings, reason, log)
        return {**row, "error": reason}

    def fit_and_test(self, device: int | None) -> dict[str, float]:
        """Durations and test metrics.

        The datamodule goes to ``Engine.fit`` by keyword: passed positionally, it becomes ``train_dataloaders``, and
        the Engine then "fits" a zero-shot model by validating it with no data.
        """
        seed_everything(self.seed)
        model, datamodule = get_model(self.config["model"]), get_datamodule(self.config["data"])
        devices: str | list[int] = "auto" if device is None else [device]
        started = time.time()
        with TemporaryDirectory() as folder:
            engine = Engine(accelerator=self.accelerator, devices=devices, default_root_dir=folder)
            engine.fit(model, datamodule=datamodule)
            fitted = time.time()
            metrics = engine.test(model, datamodule=datamodule)[0]
        finished = time.time()
        return {
            "job_duration": finished - started,
            "fit_duration": fitted - started,
            "test_duration": finished - fitted,
            **metrics,
        }


def _job_process(job: BenchmarkJob, device: int | None, log: str, connection: Connection) -> None:
    """The job's own process: everything it prints or logs goes to ``log``; its row (or its error) to the parent."""
    with open(log, "a") as output:
        os.dup2(output.fileno(), sys.stdout.fileno())
        os.dup2(output.fileno(), sys.stderr.fileno())
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
    logging.captureWarnings(capture=True)
    try:
        connection.send(("row", job.fit_and_test(device)))
    except Exception as error:  # every failure of the job is its row's error
        traceback.print_exc()
        connection.send(("error", _one_line(error)))
    sys.stdout.flush()
    sys.stderr.flush()


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
        """Anomalib's ``--config``, and the memory limit of each job."""
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
        table = ResultsTable(folder)
        accelerators = pipeline_args["accelerator"]
        accelerators = accelerators if isinstance(accelerators, list) else [accelerators]
        job_args = pipeline_args.get("benchmark") or {}
        configs = list(grid_points(job_args))
        jobs = [
            BenchmarkJob(index, accelerator, config["seed"], config)
            for index, (accelerator, config) in enumerate((a, c) for a in accelerators for c in configs)
        ]
        print(f"{len(jobs)} benchmark jobs; results.csv is written as each one finishes: {table.path}", flush=True)
        for accelerator in accelerators:
            devices = _devices(accelerator)
            limit = args.memory_limit or MEMORY_SHARE * psutil.virtual_memory().total / GIB / len(devices)
            chosen = [job for job in jobs if job.accelerator == accelerator]
            self._run_jobs(chosen, devices, folder, table, limit, len(jobs))
        results = table.frame()
        columns = {**_job_columns(results), **RESULT_COLUMNS}
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
        limit: float,
        total: int,
    ) -> None:
        """Run the jobs, one per device at a time, each adding its row when it ends."""
        pending = list(jobs)
        lock = threading.Lock()

        def work(device: int | None) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    job = pending.pop(0)
                try:
                    row = job.run(device, folder, limit)
                except Exception as error:  # in watching the job: its row says so, and the next job runs
                    logger.exception("Benchmark job %d could not be run.", job.index)
                    row = {**job.settings, "error": f"could not be run: {_one_line(error)}"}
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
