# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The scripts in benchmarks/ run and print their figures (on the tiny CLIP; their timings are not judged here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import TINY_CLIP

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "figures"),
    [
        ("bench_speed.py", {"inference_batch4", "train_step_batch4", "peak_memory_eval"}),
        ("bench_few_shot.py", {"inference_batch4_k4", "checkpoint_added_per_category_k4", "peak_memory_batch4_k4"}),
        ("bench_uncertainty.py", {"inference_batch4_std", "inference_batch4_mutual_information"}),
    ],
)
def test_benchmark_prints_its_figures(script, figures):
    command = [sys.executable, script, f"--clip_model={TINY_CLIP}", "--image_size=64", "--repeats=1", "--threads=1"]
    result = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert figures <= set(lines)
    assert all(line["value"] > 0 for name, line in lines.items() if name.startswith(("inference", "train")))
