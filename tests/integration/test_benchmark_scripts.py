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


def test_deployment_benchmark_compares_the_exact_runtimes_with_the_same_weights():
    """Exports run in other processes: the exact runtimes agreeing with torch shows they built the same model.

    The grid is narrowed to ONNX, with and without the uncertainty outputs (each export takes about 20 s even for the
    tiny model); the OpenVINO exports are checked in ``test_deploy.py`` and ``test_few_shot.py``.
    """
    options = [f"--clip_model={TINY_CLIP}", "--image_size=64", "--num_samples=2", "--repeats=1", "--threads=1"]
    options += ["--exports=[onnx]", "--uncertainty=true"]
    result = forked_main(str(BENCHMARKS / "bench_deploy.py"), *options, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, result.stdout.splitlines())}
    exports = {"export_onnx", "export_onnx_uncertainty"}
    assert exports <= set(lines)
    assert not {"export_openvino_fp32", "export_openvino_int8", "latency_openvino_fp32"} & set(lines)
    assert all(lines[name]["peak_memory_gib"] > 0 for name in exports)
    for name in ["onnxruntime_fp32", "onnxruntime_fp32_uncertainty", "torch_fp32_uncertainty"]:
        assert lines[f"latency_{name}"]["max_map_difference"] < 1e-4, name  # the same scores with the outputs
        assert lines[f"latency_{name}"]["max_probability_difference"] < 1e-5, name
    costs = {"uncertainty_cost_torch_fp32", "uncertainty_cost_onnxruntime_fp32"}
    assert costs <= set(lines)
    assert all(lines[name]["ratio"] > 0 for name in costs)
    assert "latency_torch_bf16" in lines
