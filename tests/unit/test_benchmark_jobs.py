# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""A benchmark job's error, as its row gives it: one line that names the error the job first ran into."""

from anomalib_bayes_pfl.benchmark.jobs import one_line


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
