# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The scripts in benchmarks/ run and print their figures (on the tiny CLIP; their timings are not judged here)."""

import json
from pathlib import Path

import pytest

from ..helpers import TINY_CLIP, forked_main

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
    options = [f"--clip_model={TINY_CLIP}", "--image_size=64", "--repeats=1", "--threads=1"]
    result = forked_main(str(BENCHMARKS / script), *options, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert figures <= set(lines)
    assert all(line["value"] > 0 for name, line in lines.items() if name.startswith(("inference", "train")))


def test_deployment_benchmark_measures_the_cost_of_the_uncertainty_outputs():
    """The torch runners with and without the uncertainty outputs agree, and the cost line is printed.

    The grid is narrowed to torch: each export takes about 20 s even for the tiny model. The exports, the uncertainty
    ones included, are checked against torch in ``test_deploy.py`` and ``test_few_shot.py`` (the on-line recipe:
    OpenVINO, converted from the ONNX graph, within 1e-5 of ``anomalib predict``).
    """
    options = [f"--clip_model={TINY_CLIP}", "--image_size=64", "--num_samples=2", "--repeats=1", "--threads=1"]
    options += ["--exports=[build]", "--uncertainty=true"]
    result = forked_main(str(BENCHMARKS / "bench_deploy.py"), *options, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert not {name for name in lines if name.startswith("export_")} - {"export_build"}  # no ONNX, no OpenVINO
    for name in ["torch_fp32_uncertainty", "torch_bf16"]:
        assert name in {line.removeprefix("latency_") for line in lines}
    uncertainty = lines["latency_torch_fp32_uncertainty"]
    assert uncertainty["max_map_difference"] < 1e-4  # the same scores with the outputs
    assert uncertainty["max_probability_difference"] < 1e-5
    assert lines["uncertainty_cost_torch_fp32"]["ratio"] > 0
    assert "latency_torch_bf16" in lines
