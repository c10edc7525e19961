# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The README's main job: the offline demo trains through the Engine and improves on unseen categories."""

import pytest

from anomalib_bayes_pfl.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_training_improves_unseen_categories(tmp_path, capsys):
    figures = run_demo(output=str(tmp_path / "demo"))
    printed = capsys.readouterr().out
    assert "Mean over the unseen categories" in printed
    assert "demonstrates the pipeline, not the paper's accuracy" in printed
    assert figures["trained_pixel_AUROC"] > figures["untrained_pixel_AUROC"] + 0.05, figures
    assert len(list((tmp_path / "demo" / "results" / "trained").rglob("images/**/*.png"))) == 4 * 24
