# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""A benchmark job as its row gives it: one line that names the error it first ran into, and its memory."""

import os
import subprocess
import sys

import psutil

from anomalib_bayes_pfl.benchmark.jobs import _anonymous_memory, _tree_memory, one_line


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


def test_a_job_s_memory_counts_the_pages_its_forked_workers_share_once():
    """A loader worker forked from a job shares the job's pages until it writes them: counted once, not twice."""
    holder = subprocess.Popen(
        [sys.executable, "-c", FORKED_HOLDER], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""}
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        job = psutil.Process(holder.pid)
        assert len(job.children()) == 1
        held = _tree_memory(job)
        assert 256 * 2**20 < held < 300 * 2**20, held / 2**20  # RssAnon would count the shared 256 MiB twice
        assert _anonymous_memory(holder.pid) < 0.75 * held  # the job's share: about half of what both share
    finally:
        for process in psutil.Process(holder.pid).children():
            process.kill()
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
