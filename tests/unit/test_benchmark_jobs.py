# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""A benchmark job as its row gives it: one line that names the error it first ran into, and its memory."""

import os
import subprocess
import sys

from anomalib_bayes_pfl.benchmark import jobs
from anomalib_bayes_pfl.benchmark.jobs import GIB, _process_memory, _tree_memory, one_line


def _raised(function) -> BaseException:
    try:
        function()
    except Exception as error:
        return error
    raise AssertionError


def _loader_fails() -> None:
    """As Lightning, when a loader's workers cannot start: its own error, raised while handling the cause."""
    try:
        msg = "daemonic processes are not allowed\nto have children"
        raise AssertionError(msg)
    except AssertionError:
        msg = "Please call `iter(combined_loader)` first."
        raise RuntimeError(msg)  # noqa: B904 - as Lightning raises it


def test_a_job_s_error_names_the_errors_it_was_raised_while_handling():
    error = _raised(_loader_fails)
    assert one_line(error) == (
        "RuntimeError: Please call `iter(combined_loader)` first. "
        "(after AssertionError: daemonic processes are not allowed to have children)"
    )


def test_an_error_raised_from_another_names_it_and_a_suppressed_context_is_left_out():
    def caused() -> None:
        try:
            {}["weights"]
        except KeyError as cause:
            msg = "no weights"
            raise ValueError(msg) from cause

    def suppressed() -> None:
        try:
            {}["weights"]
        except KeyError:
            msg = "no weights"
            raise ValueError(msg) from None

    assert one_line(_raised(caused)) == "ValueError: no weights (after KeyError: 'weights')"
    assert one_line(_raised(suppressed)) == "ValueError: no weights"
    assert one_line("two\n  lines") == "two lines"


def test_a_job_s_memory_counts_shared_pages_once_and_its_workers_are_stopped_when_it_has_died():
    """A loader worker forked from a job shares the job's pages until it writes them: counted once, not twice. A
    worker whose job was killed (as by the kernel's out-of-memory killer) is still stopped with the job."""
    holder = subprocess.Popen(
        [sys.executable, "-c", FORKED_HOLDER], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""}
    )
    processes = jobs.JobProcesses(holder.pid, limit=GIB)
    try:
        assert holder.stdout.readline().strip() == "ready"
        members = processes.running()
        assert len(members) == 2
        held = _tree_memory(members)
        assert 256 * 2**20 < held < 300 * 2**20, held / 2**20
        assert _tree_memory(members, proportional=False) > 2 * 256 * 2**20  # resident memory counts it in each
        assert _process_memory(holder.pid, proportional=True) < 0.75 * held  # the job's share: about half
        worker = next(member for member in members if member.pid != holder.pid)
        holder.kill()
        holder.wait()
        assert worker.is_running()  # orphaned, no longer a child of anything the job's process can list
        processes.stop()
        assert not worker.is_running()
    finally:
        processes.stop()
        holder.kill()
        holder.wait()


# 256 MiB written by the job, then a forked worker that only reads: the pages stay shared.
FORKED_HOLDER = """
import os, sys, time
held = bytearray(256 * 2**20)
for index in range(0, len(held), 4096):
    held[index] = 1
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


def test_proportional_memory_is_read_at_a_pace_its_cost_allows(monkeypatch):
    """A reading that takes 0.1 s is repeated after 2 s (5 % of a core) while resident memory is under the limit, after
    0.2 s while it is over; the peak is the largest proportional reading."""
    clock = [0.0]
    readings = []

    def tree_memory(members, *, proportional=True):
        if not proportional:
            return resident[0]
        readings.append(clock[0])
        clock[0] += 0.1  # what a reading of a large job with its workers takes
        return resident[0] // 4  # the workers share three quarters of what each holds

    resident = [2 * GIB]
    monkeypatch.setattr(jobs, "_tree_memory", tree_memory)
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    watch = jobs.JobProcesses(os.getpid(), limit=6 * GIB)  # the readings are the stand-in's
    for _ in range(50):  # 10 s of polls under the limit
        assert not watch.over_limit()
        clock[0] += jobs.POLL_SECONDS
    assert len(readings) == 5
    assert watch.peak == GIB // 2
    resident[0] = 20 * GIB  # over the limit in resident memory, not in proportional memory
    for _ in range(10):
        assert not watch.over_limit()
        clock[0] += jobs.POLL_SECONDS
    assert len(readings) == 5 + 10  # at every poll: a reading is due 0.2 s after the last
    resident[0] = 28 * GIB
    while not watch.over_limit():
        clock[0] += jobs.POLL_SECONDS
    assert watch.peak == 7 * GIB
