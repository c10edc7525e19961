# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The checks that need a GPU, in one command of a few minutes (at most 10 on one H100).

Prints JSON lines, like the other benchmarks:

1. the ``fake_cuda`` tests run on the real ``cuda`` device (``BAYES_PFL_REAL_CUDA=1 pytest -m fake_cuda -n 0``, in a
   process of their own): every step path of the model, with no CPU tensor mixed in;
2. two training steps of the paper's configuration (ViT-L-14-336 with random weights at 518 px; B = 3 prompt sets,
   P = Q = 5, K = 10 flow steps, R = 10 samples, as ``configs/bayes_pfl_visa_to_mvtec.yaml``), through Lightning's
   ``Trainer`` and ``BayesPFL.training_step``, in ``32-true`` and in ``bf16-mixed`` (Lightning's own autocast): each
   step's loss (it must be finite) and time;
3. BayesPFL inference per image at batch 1 and 8, in float32 and under the bf16 autocast that ``--trainer.precision
   bf16-mixed`` puts around the test step, beside the image-encoder floor (open_clip's ``encode_image`` at the same
   batch and precision, measured in the same process) and beside published GPU figures of other zero-shot detectors.
   Those were measured on other GPUs with other code: context, not a like-for-like comparison.

Without a CUDA device it says so in one line and exits with status 1, before building anything.

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --tests false --repeats 10     # the figures only
"""

import contextlib
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jsonargparse import CLI

if TYPE_CHECKING:  # the package and anomalib are imported once a GPU is known to be there
    from anomalib.data import ImageBatch

    from anomalib_bayes_pfl import BayesPFL
    from anomalib_bayes_pfl.model import BayesPFLModel

REPOSITORY = Path(__file__).resolve().parent.parent
# The paper's head (configs/bayes_pfl_visa_to_mvtec.yaml): B, P, Q, K; R is num_samples.
PAPER_HEAD = {"num_prompts": 3, "prompt_context_len": 5, "prompt_state_len": 5, "num_flow_steps": 10}
PRECISIONS = ("32-true", "bf16-mixed")
# Published GPU inference times of other zero-shot detectors, ms per image. Measured on other GPUs, with other code.
PUBLISHED = {
    "AnomalyCLIP": 70.7,
    "Bayes-PFL, the authors' code": 154.9,
}
PUBLISHED_SOURCE = (
    "UniADet (Gao & Wang, 'One Language-Free Foundation Model Is Enough for Universal Vision Anomaly Detection', "
    "arXiv:2601.05552), inference-time table"
)
NO_CUDA = (
    "gpu_check: no CUDA device is available (torch.cuda.is_available() is False); this script must run on a machine "
    "with a GPU."
)


def emit(figure: str, **values: object) -> None:
    """Print one JSON line."""
    print(json.dumps({"figure": figure, **values}), flush=True)


def run_fake_cuda_tests(timeout: int) -> bool:
    """Run the ``fake_cuda`` tests on the real ``cuda`` device in a process of their own; print their outcome."""
    command = [sys.executable, "-m", "pytest", "-m", "fake_cuda", "-n", "0", "-q", "tests"]
    environment = {**os.environ, "BAYES_PFL_REAL_CUDA": "1"}
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        emit("fake_cuda_tests_on_cuda", passed=False, summary=f"timed out after {timeout} s")
        return False
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    summary = lines[-1] if lines else result.stderr.strip()[-500:]
    emit(
        "fake_cuda_tests_on_cuda",
        passed=result.returncode == 0,
        returncode=result.returncode,
        summary=summary,
        failures=failures,
        seconds=round(time.perf_counter() - started, 1),
        command=f"BAYES_PFL_REAL_CUDA=1 {' '.join(command[1:])}",
    )
    return result.returncode == 0


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_batch(batch_size: int, image_size: int, generator: torch.Generator) -> "ImageBatch":
    """Random images, normal and anomalous in turn, each anomalous one with a mask; two categories (by their paths)."""
    from anomalib.data import ImageBatch

    masks = torch.zeros(batch_size, image_size, image_size, dtype=torch.bool)
    masks[1::2, : image_size // 4, : image_size // 4] = True
    paths = [f"parts/{('screw', 'bottle')[index % 2]}/test/{('good', 'crack')[index % 2]}/{index:03}.png"
             for index in range(batch_size)]  # fmt: skip
    return ImageBatch(
        image=torch.rand(batch_size, 3, image_size, image_size, generator=generator),
        gt_label=torch.arange(batch_size) % 2,
        gt_mask=masks,
        image_path=paths,
    )


def training_steps(
    module: "BayesPFL", precision: str, accelerator: str, steps: int, batch_size: int, image_size: int
) -> list[tuple[float, float]]:
    """Run ``steps`` training steps through Lightning's ``Trainer``; each step's loss and seconds.

    The steps are ``BayesPFL.training_step`` (manual optimisation: forward, loss, backward and Adam step), under
    Lightning's precision plugin: with ``bf16-mixed``, its autocast wraps the whole step.
    """
    from lightning.pytorch import Callback, Trainer
    from torch.utils.data import DataLoader

    class StepClock(Callback):
        def __init__(self) -> None:
            self.records: list[tuple[float, float]] = []
            self.started = 0.0

        def on_train_batch_start(self, trainer: Trainer, pl_module: "BayesPFL", *_: Any) -> None:
            del trainer
            synchronize(pl_module.device)
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer: Trainer, pl_module: "BayesPFL", outputs: Any, *_: Any) -> None:
            del trainer
            synchronize(pl_module.device)
            self.records.append((float(outputs["loss"]), time.perf_counter() - self.started))

    generator = torch.Generator().manual_seed(0)
    batches = [training_batch(batch_size, image_size, generator) for _ in range(steps)]
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)
    clock = StepClock()
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    module.train()  # Lightning keeps the mode it is given
    trainer.fit(module, train_dataloaders=loader)
    return clock.records


def median_seconds(step: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall seconds of ``step`` over ``repeats`` calls after ``warmup`` calls, the GPU synchronised."""
    times = []
    for _ in range(warmup + repeats):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


@contextlib.contextmanager
def inference_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Float32, or the bf16 autocast that ``--trainer.precision bf16-mixed`` puts around a test step."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


@contextlib.contextmanager
def resized_positions(visual: torch.nn.Module, image_size: int) -> Iterator[None]:
    """open_clip's own ``encode_image`` at ``image_size``: the positional embedding resized once to its patch grid."""
    from anomalib_bayes_pfl.model.backbone import interpolate_positional_embedding

    native = visual.positional_embedding
    grid = image_size // visual.conv1.kernel_size[0]
    visual.positional_embedding = torch.nn.Parameter(interpolate_positional_embedding(native, grid))
    try:
        yield
    finally:
        visual.positional_embedding = native


def inference_figures(
    model: "BayesPFLModel",
    images: torch.Tensor,
    names: list[str],
    batch_sizes: tuple[int, ...],
    repeats: int,
    warmup: int,
) -> None:
    """Print BayesPFL's and the floor's ms/image at each batch size, in float32 and bf16, and their ratio."""
    device, image_size = images.device, images.shape[-1]
    model.eval()
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            for size in batch_sizes:
                batch = images[:size]
                with resized_positions(model.clip.visual, image_size), inference_precision(precision, device):
                    floor = median_seconds(lambda b=batch: model.clip.encode_image(b), device, repeats, warmup)
                with inference_precision(precision, device):
                    seconds = median_seconds(lambda b=batch, s=size: model.score(b, names[:s]), device, repeats, warmup)
                emit(
                    f"inference_{precision}_batch{size}",
                    value=round(seconds * 1000 / size, 1),
                    unit="ms/image",
                    floor_encode_image=round(floor * 1000 / size, 1),
                    ratio_to_floor=round(seconds / floor, 2),
                )


def main(
    clip_model: str = "ViT-L-14-336",
    image_size: int = 518,
    num_samples: int = 10,
    train_batch_size: int = 8,
    train_steps: int = 2,
    batch_sizes: tuple[int, ...] = (1, 8),
    repeats: int = 5,
    warmup: int = 2,
    tests: bool = True,
    tests_timeout: int = 300,
) -> int:
    """Run the GPU checks and print the figures as JSON lines; 0 when the tests pass and every loss is finite.

    Args:
        clip_model: open_clip model (random weights: compute does not depend on them).
        image_size: Side of the model input.
        num_samples: R, Monte-Carlo rounds per image at inference.
        train_batch_size: Images per training step.
        train_steps: Training steps per precision.
        batch_sizes: Inference batch sizes.
        repeats: Timed calls per inference figure (the median is printed).
        warmup: Calls before the timed ones.
        tests: Run the ``fake_cuda`` tests on the GPU first.
        tests_timeout: Seconds the tests may take.
    """
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr, flush=True)
        return 1
    device = torch.device("cuda")
    emit(
        "setup",
        gpu=torch.cuda.get_device_name(device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        clip_model=clip_model,
        image_size=image_size,
        num_samples=num_samples,
        **PAPER_HEAD,
    )
    passed = run_fake_cuda_tests(tests_timeout) if tests else True

    # This folder's scripts run with it on the path; the package is imported only once a GPU is known to be there.
    from bench_speed import CATEGORY_NAMES, set_up

    largest = max(batch_sizes)
    module, model, images, _, _ = set_up(clip_model, image_size, num_samples, largest, "cuda", None, **PAPER_HEAD)
    initial_head = copy.deepcopy(model.head_state_dict())  # with its extra state: not trained yet
    finite = True
    for precision in PRECISIONS:
        # Each precision trains the same head from the same seed; the frozen CLIP is not in the head's state.
        loaded = model.load_state_dict(initial_head, strict=False)
        if loaded.unexpected_keys or any(not key.startswith("clip.") for key in loaded.missing_keys):
            msg = f"the head's state does not fit the model: {loaded}"
            raise RuntimeError(msg)
        torch.manual_seed(0)
        records = training_steps(module, precision, "gpu", train_steps, train_batch_size, image_size)
        losses = [loss for loss, _ in records]
        finite = finite and len(losses) == train_steps and all(math.isfinite(loss) for loss in losses)
        emit(
            f"train_steps_{precision}",
            losses=[round(loss, 4) for loss in losses],
            finite=all(math.isfinite(loss) for loss in losses),
            seconds_per_step=[round(seconds, 3) for _, seconds in records],
            batch_size=train_batch_size,
            peak_memory_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
        )
        torch.cuda.reset_peak_memory_stats(device)

    model = module.model.to(device)
    names = list(CATEGORY_NAMES) * (largest // len(CATEGORY_NAMES) + 1)
    inference_figures(model, images, names, tuple(batch_sizes), repeats, warmup)
    for method, value in PUBLISHED.items():
        emit(
            "published_gpu_inference",
            method=method,
            value=value,
            unit="ms/image",
            source=PUBLISHED_SOURCE,
            note="measured on other GPUs with other code: context, not a like-for-like comparison",
        )
    emit("gpu_check", tests_passed=passed, losses_finite=finite, ok=passed and finite)
    return 0 if passed and finite else 1


if __name__ == "__main__":
    sys.exit(CLI(main))
