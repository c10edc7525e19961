# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The README's main job: the offline demo trains through the Engine and improves on unseen categories, more so
with few-shot references."""

import contextlib
import io
import logging
import re
from pathlib import Path

import pytest

from anomalib_bayes_pfl.demo import run_demo
from anomalib_bayes_pfl.reporting import CSV_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict[str, float], str]:
    """The README's main job, as it runs by default: its folder, figures and printed output."""
    output = tmp_path_factory.mktemp("demo") / "bayes_pfl_demo"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        figures = run_demo(output=str(output))
    return output, figures, printed.getvalue()


def test_demo_training_improves_unseen_categories(demo):
    output, figures, printed = demo
    assert "Mean over the unseen categories" in printed
    assert "demonstrates the pipeline, not the paper's accuracy" in printed
    assert figures["trained_pixel_AUROC"] > figures["untrained_pixel_AUROC"] + 0.05, figures
    assert "with k normal reference images per unseen category" in printed
    assert figures["0-shot_pixel_AUROC"] == figures["trained_pixel_AUROC"]  # calibration never changes scores
    assert figures["4-shot_pixel_AUROC"] > figures["0-shot_pixel_AUROC"] + 0.05, figures
    images = list((output / "results" / "trained").rglob("images/**/*.png"))
    assert len([image for image in images if not image.stem.endswith("_uncertainty")]) == 4 * 24
    assert "Uncertainty of the prompt samples" in printed
    report = Path(re.search(r"Report page, to open in a browser.*: (\S+)$", printed, re.MULTILINE).group(1))
    assert report.name == "report.html"
    assert report.is_file()
    assert report.is_relative_to((output / "results" / "4_shot").resolve())


def test_demo_is_a_function_of_its_seed_and_runs_again_in_its_folder(demo, caplog):
    """The same command again (in one process, as after any other work) prints the same tables, with no warning
    about the earlier run's files."""
    output, figures, _ = demo

    def tables() -> dict[str, str]:
        return {str(path.relative_to(output)): path.read_text() for path in output.rglob(CSV_NAME)}

    first_tables = tables()
    with caplog.at_level(logging.WARNING):
        again = run_demo(output=str(output))
    assert again == figures
    assert len(first_tables) >= 2  # untrained and trained
    assert tables() == first_tables
    assert "earlier run" not in caplog.text
