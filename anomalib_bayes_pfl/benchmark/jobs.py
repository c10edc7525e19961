# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""One benchmark job: a model fitted and tested in a process of its own, watched for memory and for progress.

The job's process is not a daemon, so that its datamodule can start DataLoader workers (a daemon may not have
children; anomalib's ``MVTecAD`` starts 8). It reports progress to the benchmark at every batch, and everything it
prints goes to its log; a job that does neither for ``stall_timeout`` seconds, or whose processes hold more than the
memory limit, is stopped with its workers, and its row says why.
"""

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Literal

import psutil
from anomalib.data import get_datamodule
from anomalib.engine import Engine
from anomalib.models import get_model
from anomalib.utils.config import flatten_dict
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_bayes_pfl.reporting.evaluator import ApplicableMetricsEvaluator, side_by_side_metrics

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
# Share of one core that reading a job's proportional memory may take (see JobProcesses): while its resident memory is
# under the limit, and while it is over.
READING_SHARE = {False: 0.05, True: 0.5}
GIB = 2**30
# Seconds a job's process may take to end once it has sent its row (DataLoader workers stopping, files closing).
EXIT_SECONDS = 60
# Earlier errors named in a row's error, beside the last one (the one raised while handling them).
EARLIER_ERRORS = 2

Metrics = Literal["common", "model"]


def one_line(error: BaseException | str) -> str:
    """The error as one CSV- and table-friendly line, with the errors it was raised while handling.

    Lightning, failing to start a loader's workers, raises an error of its own that names nothing of the cause.
    """
    if not isinstance(error, BaseException):
        return " ".join(error.split())
    texts, seen = [], error
    while seen is not None and len(texts) <= EARLIER_ERRORS:
        texts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    text = texts[0] + "".join(f" (after {earlier})" for earlier in texts[1:])
    return " ".join(text.split())


def _process_memory(pid: int, *, proportional: bool) -> int:
    """The anonymous memory (tensors, heaps) of one process, in bytes; 0 for a process that has ended.

    ``RssAnon`` counts every page the process holds; ``Pss_Anon`` (Linux 5.8) splits each shared page between the
    processes that share it, as forked loader workers share the job's pages until they write them.
    """
    path, key = (f"/proc/{pid}/smaps_rollup", "Pss_Anon:") if proportional else (f"/proc/{pid}/status", "RssAnon:")
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return _process_memory(pid, proportional=False) if proportional else 0  # a kernel without Pss_Anon


def _tree_memory(members: list[psutil.Process], *, proportional: bool = True) -> int:
    """Anonymous memory of a job's processes, in bytes.

    File-backed pages (the libraries every worker maps) are shared and can be dropped, so they are not counted.
    """
    return sum(_process_memory(member.pid, proportional=proportional) for member in members)


class JobProcesses:
    """A job's process and every process it has started (loader workers), and their peak memory.

    Each process seen is remembered, so that a worker whose job has died (the kernel's out-of-memory killer, a crash)
    is still stopped with the job: a process that has ended has no children to list.

    The peak is the processes' proportional anonymous memory, which counts the pages that forked loader workers share
    with the job once. Reading it walks each process's page tables (38 ms for a process of 1.6 GB here), so it is
    sampled as often as :data:`READING_SHARE` of one core allows, judged by what the last reading took: a small job at
    every poll, a job of many gigabytes with 8 workers every few seconds. Resident memory, read at every poll for next
    to nothing and never below it, says when the limit may be passed: the proportional memory then decides, read ten
    times as often.
    """

    def __init__(self, pid: int, limit: float) -> None:
        self.limit, self.peak = limit, 0
        self._known: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):  # a process that has already ended has nothing to watch
            self._known[pid] = psutil.Process(pid)
        self._read_at, self._reading_seconds = -math.inf, 0.0

    def running(self) -> list[psutil.Process]:
        """The job's processes that run now, those started since the last look included."""
        for process in list(self._known.values()):
            with contextlib.suppress(psutil.Error):
                for child in process.children(recursive=True):
                    self._known.setdefault(child.pid, child)
        self._known = {pid: process for pid, process in self._known.items() if process.is_running()}
        return list(self._known.values())

    def over_limit(self) -> bool:
        """Read the memory as the pace allows; whether the job's processes have held more than the limit."""
        members = self.running()
        pace = self._reading_seconds / READING_SHARE[_tree_memory(members, proportional=False) > self.limit]
        if time.monotonic() - self._read_at >= pace:
            started = time.monotonic()
            self.peak = max(self.peak, _tree_memory(members))
            self._read_at = time.monotonic()
            self._reading_seconds = self._read_at - started
        return self.peak > self.limit

    def stop(self) -> None:
        """Kill every process of the job that still runs."""
        members = self.running()
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
        psutil.wait_procs(members, timeout=10)


class ProgressReport(Callback):
    """Tells the benchmark which stage and batch the job has reached, at every batch: a few bytes on a pipe."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def send(self, where: str) -> None:
        """The job has reached ``where``."""
        self.connection.send(("progress", where))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        """A training batch ended."""
        del pl_module, outputs, batch
        self.send(f"fit batch {batch_idx + 1} of epoch {trainer.current_epoch + 1}")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        """A validation batch ended."""
        del trainer, pl_module, outputs, batch, dataloader_idx
        self.send(f"validation batch {batch_idx + 1}")

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        """A test batch ended."""
        del trainer, pl_module, outputs, batch, dataloader_idx
        self.send(f"test batch {batch_idx + 1}")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A stage starts: before its data are loaded."""
        del trainer, pl_module
        self.send(f"{getattr(stage, 'value', stage)} setup")


@dataclass(frozen=True)
class BenchmarkJob:
    """One grid point: a model and a datamodule, fitted and tested in a process of its own."""

    index: int
    accelerator: str
    seed: int
    config: dict[str, Any]
    metrics: Metrics = "common"

    @property
    def settings(self) -> dict[str, Any]:
        """The columns that say what the job was: its accelerator and its flattened grid point."""
        return {"accelerator": self.accelerator, **flatten_dict(self.config)}

    def run(self, device: int | None, folder: Path, memory_limit: float, stall_timeout: float) -> dict[str, Any]:
        """The job's row: settings, durations, peak memory and test metrics, or settings and why it stopped."""
        log = folder / "logs" / f"{self.index:03d}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        context = multiprocessing.get_context("forkserver")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_job_process, args=(self, device, str(log), sending))
        child.start()
        sending.close()
        processes = JobProcesses(child.pid, memory_limit * GIB)
        try:
            message = self._watch(child, receiving, log, processes, stall_timeout)
            if message[0] != "stopped":  # a job stopped here is stopped at once, below; another may end on its own
                child.join(EXIT_SECONDS)
                if child.is_alive():  # its row is kept; what holds it up is stopped below
                    logger.warning(
                        "Benchmark job %d did not end %d s after its row; stopped.", self.index, EXIT_SECONDS
                    )
        finally:  # the job's processes never outlive its row, whatever happened while watching them
            processes.stop()
            child.join()
            receiving.close()
        row = {**self.settings, "peak_memory_gb": round(processes.peak / GIB, 3), "log": str(log)}
        if message[0] == "row":
            return {**row, **message[1]}
        reason = message[1] or self._death(child.exitcode)
        logger.error("Benchmark job %d %s failed: %s; its log: %s", self.index, self.settings, reason, log)
        return {**row, "error": reason}

    @staticmethod
    def _watch(
        child: BaseProcess, receiving: Connection, log: Path, processes: JobProcesses, stall_timeout: float
    ) -> tuple[str, Any]:
        """Wait for the job's ``("row", metrics)`` or ``("error", text)``.

        ``("stopped", reason)`` for a job stopped here, ``("ended", None)`` for one that ended without either.
        """
        where, progressed, log_size = "starting", time.monotonic(), 0
        while True:
            try:
                if receiving.poll(POLL_SECONDS):
                    while receiving.poll():  # every message that has come, then one check
                        kind, content = receiving.recv()
                        if kind != "progress":
                            return kind, content
                        where, progressed = content, time.monotonic()
                elif not child.is_alive():
                    if receiving.poll():  # a row sent just before the process ended
                        continue
                    return "ended", None
            except EOFError:  # the process and its workers have closed the pipe without a row
                return "ended", None
            with contextlib.suppress(OSError):
                if log.stat().st_size != log_size:  # output counts as progress: downloads, progress bars
                    log_size, progressed = log.stat().st_size, time.monotonic()
            if processes.over_limit():
                limit = processes.limit / GIB
                return "stopped", (
                    f"MemoryError: stopped when its processes held more than the memory limit of {limit:g} GiB "
                    f"(--memory_limit)"
                )
            if time.monotonic() - progressed > stall_timeout:
                return "stopped", (
                    f"Stalled: stopped after {stall_timeout:g} s without progress (--stall_timeout); its last "
                    f"progress: {where}"
                )

    @staticmethod
    def _death(exitcode: int | None) -> str:
        """Why a process that sent no row ended."""
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:  # a real-time signal has no name
                name = f"signal {-exitcode}"
            cause = " (the kernel's out-of-memory killer, or another process)" if name == "SIGKILL" else ""
            return f"JobDied: killed by {name}{cause} without an error of its own"
        return f"JobDied: its process ended with exit status {exitcode} without a result"

    def fit_and_test(self, device: int | None, progress: ProgressReport) -> dict[str, Any]:
        """Durations and test metrics, and why any metric has no value (``not_computed``).

        The datamodule goes to ``Engine.fit`` by keyword: passed positionally, it becomes ``train_dataloaders``, and
        the Engine then "fits" a zero-shot model by validating it with no data.
        """
        seed_everything(self.seed)
        progress.send("building the model and the datamodule")
        model, datamodule = get_model(self.config["model"]), get_datamodule(self.config["data"])
        if self.metrics == "common":
            model.evaluator = ApplicableMetricsEvaluator(test_metrics=side_by_side_metrics())
        devices: str | list[int] = "auto" if device is None else [device]
        started = time.time()
        with TemporaryDirectory() as folder:
            engine = Engine(
                accelerator=self.accelerator, devices=devices, default_root_dir=folder, callbacks=[progress]
            )
            engine.fit(model, datamodule=datamodule)
            fitted = time.time()
            metrics = engine.test(model, datamodule=datamodule)[0]
        finished = time.time()
        not_computed = getattr(model.evaluator, "not_computed", {})
        reasons = "; ".join(f"{name}: {reason}" for name, reason in not_computed.items())
        return {
            "job_duration": finished - started,
            "fit_duration": fitted - started,
            "test_duration": finished - fitted,
            **metrics,
            **({"not_computed": reasons} if reasons else {}),
        }


def _job_process(job: BenchmarkJob, device: int | None, log: str, connection: Connection) -> None:
    """The job's own process: everything it prints or logs goes to ``log``; its progress and row to the parent.

    Its loader workers start as in a user's own anomalib run (the platform's default, ``fork`` on Linux before Python
    3.14): a process started by a fork server inherits ``forkserver``, whose workers import torch and anomalib again,
    for seconds each, at every epoch.
    """
    multiprocessing.set_start_method(None, force=True)
    with open(log, "a") as output:
        os.dup2(output.fileno(), sys.stdout.fileno())
        os.dup2(output.fileno(), sys.stderr.fileno())
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
    logging.captureWarnings(capture=True)
    try:
        connection.send(("row", job.fit_and_test(device, ProgressReport(connection))))
    except Exception as error:  # every failure of the job is its row's error
        traceback.print_exc()
        connection.send(("error", one_line(error)))
    sys.stdout.flush()
    sys.stderr.flush()
