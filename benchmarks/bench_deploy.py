# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Deployment on a CPU: each runtime and precision's latency, its difference from torch fp32, and export's cost.

Builds the default configuration (ViT-L-14-336 with random weights, 518 px, R = 10; compute does not depend on weight
values) and prints JSON lines:

- ``export_*``: wall seconds and peak memory (the exporting process's peak RSS, the built model included) of the
  ONNX export and of the OpenVINO FP32, FP16 and INT8 exports, each in its own process, as ``anomalib export`` runs
  them. ``build`` is the same process building the model and exporting nothing. INT8 calibrates on
  ``calibration_images`` synthetic auxiliary images.
- ``latency_*``: milliseconds per raw image (batch 1, ``raw_size``; every model resizes it to 518 px itself) of torch
  fp32, torch with ``clip_precision bf16``, ONNX Runtime, and OpenVINO's IRs through anomalib's
  ``OpenVINOInferencer``: FP32 computed in f32 (``INFERENCE_PRECISION_HINT``) and with the CPU's default precision,
  FP16 and INT8 with the CPU's default. Runs are interleaved round by round, the order rotating; medians of
  ``repeats`` rounds after ``warmup``. Each line has the largest difference of the anomaly map and of the image
  probability from torch fp32 over ``num_images`` raw images of different sizes, and the ratio of torch fp32's
  latency to its own (the speed-up).
- With ``--uncertainty true``, each runtime also runs a model exported with ``export_uncertainty`` (and a review
  threshold, so the review mark is computed too), read by ``BayesPFLInferencer`` for ONNX and OpenVINO, beside the
  default export read the same way; ``uncertainty_cost_*`` is the ratio of the two latencies, in the same rounds.

    python benchmarks/bench_deploy.py --threads 2
    python benchmarks/bench_deploy.py --threads 2 --exports '[onnx, openvino_fp32]' --uncertainty true
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

# This folder's scripts run with it on the path.
from bench_speed import interleaved_times, seconds_of, set_up
from jsonargparse import CLI

from anomalib_bayes_pfl import BayesPFL, BayesPFLInferencer, ZeroShotCrossDataset
from anomalib_bayes_pfl.data.synthetic import write_tree
from anomalib_bayes_pfl.model.references import CategoryReferences

Export = Literal["build", "onnx", "openvino_fp32", "openvino_fp16", "openvino_int8"]
EXPORTS: tuple[Export, ...] = get_args(Export)
MODEL_SEED = 0  # every process builds the same random weights
UNCERTAINTY = "uncertainty"  # the sub-folder and name suffix of the exports with uncertainty
REVIEW_THRESHOLD = 0.01  # any value: the export then compares each image's uncertainty with it
ONNX_FILE = "weights/onnx/model.onnx"
FP32_IR = "fp32/weights/openvino/model.xml"


def build(
    clip_model: str, image_size: int, num_samples: int, threads: int, *, uncertainty: bool = False, **options: object
) -> BayesPFL:
    """The benchmark's model in eval mode, with the same random weights in every process.

    With ``uncertainty`` it returns the uncertainty, its map and the review mark, as an export with
    ``export_uncertainty`` and a calibrated ``review_rate`` does.
    """
    torch.manual_seed(MODEL_SEED)
    if uncertainty:
        options |= {"export_uncertainty": True, "review_rate": 0.1}
    module = set_up(clip_model, image_size, num_samples, 1, "cpu", threads, **options).module.eval()
    if uncertainty:
        module.model.references.set("object", CategoryReferences([], {}, review_threshold=REVIEW_THRESHOLD))
        module.apply_export_thresholds()
    return module


def export(
    kind: str,
    folder: Path,
    calibration_root: Path,
    calibration_images: int,
    clip_model: str = "ViT-L-14-336",
    image_size: int = 518,
    num_samples: int = 10,
    threads: int = 2,
    uncertainty: bool = False,
) -> None:
    """Build the model and export it as ``kind`` into ``folder`` (run in a child process), printing the seconds."""
    from anomalib.deploy import CompressionType

    module = build(clip_model, image_size, num_samples, threads, uncertainty=uncertainty)
    started = time.perf_counter()
    if kind == "onnx":
        module.to_onnx(folder, opset_version=18)
    elif kind.startswith("openvino"):
        precision = kind.removeprefix("openvino_")
        compression = {"fp32": None, "fp16": CompressionType.FP16, "int8": CompressionType.INT8_PTQ}[precision]
        datamodule = ZeroShotCrossDataset(
            auxiliary_root=str(calibration_root),
            auxiliary_format="mvtec",
            target_root=str(calibration_root),
            target_format="mvtec",
            num_workers=0,
        )
        module.to_openvino(
            folder / precision,
            compression_type=compression,
            datamodule=datamodule,
            int8_calibration_images=calibration_images,
        )
    print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)


def _exported(kind: str, folder: Path, calibration_root: Path, calibration_images: int, **model: object) -> dict:
    """Run :func:`export` in a child process: its seconds, and its peak RSS from the kernel's accounting."""
    arguments = [f"--{name}={value}" for name, value in model.items()]
    command = [sys.executable, __file__, "export", kind, str(folder), str(calibration_root), str(calibration_images)]
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen([*command, *arguments], stdout=output, cwd=folder)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        lines = output.read().splitlines()
    if child.returncode != 0:
        msg = f"export {kind} failed with exit code {child.returncode}"
        raise RuntimeError(msg)
    seconds = json.loads(lines[-1])["seconds"]
    return {"seconds": round(seconds, 1), "peak_memory_gib": round(usage.ru_maxrss / 2**20, 2)}


def _raw_images(count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Random RGB images in [0, 1] of different sizes, none of them the model's."""
    sizes = [(700, 900), (1024, 1024), (480, 640), (600, 400)]
    return [torch.rand(1, 3, *sizes[index % len(sizes)], generator=generator) for index in range(count)]


def _inferencer_runner(path: Path, threads: int) -> Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    """An ONNX file or IR read by ``BayesPFLInferencer`` (OpenVINO, f32), which also reads the uncertainty outputs."""
    inferencer = BayesPFLInferencer(path, config={"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})

    def run(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        prediction = inferencer.predict(image)
        return prediction.anomaly_map, prediction.pred_score

    return run


def _torch_runner(module: BayesPFL) -> Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    def run(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            output = module(image)
        return output.anomaly_map.float().numpy(), output.pred_score.float().numpy()

    return run


def _onnx_runner(path: Path, threads: int) -> Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        outputs = dict(zip(names, session.run(None, {"input": image.numpy()}), strict=True))
        return outputs["anomaly_map"], outputs["pred_score"]

    return run


def _openvino_runner(
    path: Path, threads: int, precision_hint: str | None
) -> Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    from anomalib.deploy import OpenVINOInferencer

    config = {"INFERENCE_NUM_THREADS": threads}
    if precision_hint is not None:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    inferencer = OpenVINOInferencer(path, device="CPU", config=config)

    def run(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        prediction = inferencer.predict(image)
        return prediction.anomaly_map, prediction.pred_score

    return run


def main(
    clip_model: str = "ViT-L-14-336",
    image_size: int = 518,
    num_samples: int = 10,
    threads: int = 2,
    repeats: int = 3,
    warmup: int = 1,
    num_images: int = 2,
    calibration_images: int = 16,
    exports: tuple[Export, ...] = EXPORTS,
    uncertainty: bool = False,
) -> None:
    """Export in child processes, then time every runtime on the same raw images and print JSON lines.

    ``exports`` narrows the grid (for a quick check): torch always runs, and each runtime runs when its export did.
    ``uncertainty`` adds the exports with uncertainty outputs (ONNX and OpenVINO FP32) and their cost.
    """
    import openvino as ov

    if Path(clip_model).is_file():  # a config file: the exports run in another folder
        clip_model = str(Path(clip_model).resolve())
    model = {"clip_model": clip_model, "image_size": image_size, "num_samples": num_samples, "threads": threads}
    cpu_precision = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    print(json.dumps({"figure": "setup", **model, "openvino_cpu_default_precision": cpu_precision}), flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        half = calibration_images // 2  # the auxiliary data is the annotated test split: good and defective images
        calibration_root = write_tree(
            folder / "auxiliary",
            ["part"],
            image_size=256,
            num_test_good=half,
            num_test_defect=calibration_images - half,
        )
        for kind in exports:
            figures = _exported(kind, folder, calibration_root, calibration_images, **model)
            print(json.dumps({"figure": f"export_{kind}", **figures}), flush=True)
        with_uncertainty = [kind for kind in exports if uncertainty and kind in {"onnx", "openvino_fp32"}]
        for kind in with_uncertainty:
            (folder / UNCERTAINTY).mkdir(exist_ok=True)
            figures = _exported(kind, folder / UNCERTAINTY, calibration_root, calibration_images, **model,
                                uncertainty=True)  # fmt: skip
            print(json.dumps({"figure": f"export_{kind}_{UNCERTAINTY}", **figures}), flush=True)

        os.chdir(folder)  # OpenVINOInferencer writes its cache folder into the working directory
        torch.set_num_threads(threads)
        reference = build(clip_model, image_size, num_samples, threads)
        runners = {
            "torch_fp32": _torch_runner(reference),
            "torch_bf16": _torch_runner(build(clip_model, image_size, num_samples, threads, clip_precision="bf16")),
        }
        if "onnx" in exports:
            runners["onnxruntime_fp32"] = _onnx_runner(folder / ONNX_FILE, threads)
        if "openvino_fp32" in exports:
            ir = folder / FP32_IR
            runners["openvino_fp32"] = _openvino_runner(ir, threads, "f32")
            runners[f"openvino_fp32_{cpu_precision}"] = _openvino_runner(ir, threads, None)
        for precision in ("fp16", "int8"):
            if f"openvino_{precision}" in exports:
                ir = folder / f"{precision}/weights/openvino/model.xml"
                runners[f"openvino_{precision}"] = _openvino_runner(ir, threads, None)
        with_outputs_of = {}  # each runtime's runner without uncertainty outputs, and the same runtime's with them
        if uncertainty:
            with_outputs_of["torch_fp32"] = f"torch_fp32_{UNCERTAINTY}"
            runners[with_outputs_of["torch_fp32"]] = _torch_runner(build(**model, uncertainty=True))
        if "onnx" in with_uncertainty:
            with_outputs_of["onnxruntime_fp32"] = f"onnxruntime_fp32_{UNCERTAINTY}"
            runners[with_outputs_of["onnxruntime_fp32"]] = _onnx_runner(folder / UNCERTAINTY / ONNX_FILE, threads)
        if "openvino_fp32" in with_uncertainty:  # both read by BayesPFLInferencer (anomalib's reads four fields)
            with_outputs_of["openvino_fp32_inferencer"] = f"openvino_fp32_inferencer_{UNCERTAINTY}"
            runners["openvino_fp32_inferencer"] = _inferencer_runner(folder / FP32_IR, threads)
            runners[with_outputs_of["openvino_fp32_inferencer"]] = _inferencer_runner(
                folder / UNCERTAINTY / FP32_IR, threads
            )
        images = _raw_images(num_images, torch.Generator().manual_seed(0))
        outputs = {name: [run(image) for image in images] for name, run in runners.items()}
        cpu = torch.device("cpu")
        steps = {name: partial(seconds_of, partial(run, images[0]), cpu) for name, run in runners.items()}
        times = interleaved_times(steps, repeats, warmup)
    floor = statistics.median(times["torch_fp32"])
    for name, seconds in times.items():
        pairs = list(zip(outputs[name], outputs["torch_fp32"], strict=True))
        line = {
            "figure": f"latency_{name}",
            "value": round(statistics.median(seconds) * 1000),
            "unit": "ms/image",
            "speedup_over_torch_fp32": round(floor / statistics.median(seconds), 2),
            "max_map_difference": float(max(np.abs(ours[0] - theirs[0]).max() for ours, theirs in pairs)),
            "max_probability_difference": float(max(np.abs(ours[1] - theirs[1]).max() for ours, theirs in pairs)),
        }
        print(json.dumps(line), flush=True)
    for name, with_outputs in with_outputs_of.items():
        ratio = statistics.median(times[with_outputs]) / statistics.median(times[name])
        print(json.dumps({"figure": f"uncertainty_cost_{name}", "ratio": round(ratio, 3)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:  # the child processes
        CLI(export, args=sys.argv[2:])
    else:
        CLI(main)
