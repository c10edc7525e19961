# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Speed and memory of BayesPFL against the bare CLIP image encoder, measured in one process.

Builds the default configuration (ViT-L-14-336 with random weights: compute does not depend on weight values) and
prints JSON lines: (a) open_clip's ``encode_image`` per image, the floor; (b) BayesPFL inference per image at batch
1 and 4; (c) a training step per image at batch 4 (forward, loss, backward, optimiser step); (d) peak memory of
evaluation and of training (process RSS on CPU, allocated memory on CUDA); and each time's ratio to the floor at the
same batch size. Times are medians of ``repeats`` runs after ``warmup`` runs.

    python benchmarks/bench_speed.py                      # the default configuration, on CUDA if present
    python benchmarks/bench_speed.py --threads 2          # like a 2-core CPU machine
"""

import json
import resource
import statistics
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch
from jsonargparse import CLI

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.model import BayesPFLModel
from anomalib_bayes_pfl.model.backbone import interpolate_positional_embedding


def seconds_of(step: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``step``, waiting for the GPU's queued work on both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _median_seconds(step: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    return statistics.median([seconds_of(step, device) for _ in range(warmup + repeats)][warmup:])


def interleaved_times(
    runs: dict[Hashable, Callable[[], float]], repeats: int, warmup: int
) -> dict[Hashable, list[float]]:
    """Seconds of each run (each returns its own time) in each of ``repeats`` rounds, the order rotating.

    Each run takes each position of a round in turn, so that all see the same machine state; the first ``warmup``
    rounds are not counted.
    """
    times: dict[Hashable, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = runs[name]()
            if round_index >= warmup:
                times[name].append(seconds)
    return times


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated memory on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


CATEGORY_NAMES = ("bottle", "screw", "metal_nut", "pcb1")


class Setup(NamedTuple):
    """A benchmark's model in eval mode, its random input batch, the device, and the generator that drew it."""

    module: BayesPFL
    model: BayesPFLModel
    images: torch.Tensor
    device: torch.device
    generator: torch.Generator


def set_up(
    clip_model: str,
    image_size: int,
    num_samples: int,
    batch_size: int,
    device: str | None,
    threads: int | None,
    **options: Any,
) -> Setup:
    """Build BayesPFL with random CLIP weights (compute does not depend on them) and a seeded random input batch."""
    if threads is not None:
        torch.set_num_threads(threads)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = BayesPFL(
        clip_model=clip_model, clip_pretrained=None, image_size=image_size, num_samples=num_samples, **options
    )
    model = module.model.to(target).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(target)
    return Setup(module, model, images, target, generator)


def main(
    clip_model: str = "ViT-L-14-336",
    image_size: int = 518,
    num_samples: int = 10,
    batch_size: int = 4,
    repeats: int = 3,
    warmup: int = 1,
    device: str | None = None,
    threads: int | None = None,
    clip_precision: str = "fp32",
) -> None:
    """Measure and print the figures as JSON lines."""
    module, model, images, target, generator = set_up(
        clip_model, image_size, num_samples, batch_size, device, threads, clip_precision=clip_precision
    )
    names = list(CATEGORY_NAMES) * (batch_size // 4 + 1)

    def report(figure: str, seconds: float, floor: float | None = None, **extra: object) -> None:
        line = {"figure": figure, "value": round(seconds * 1000, 1), "unit": "ms/image", **extra}
        if floor is not None:
            line["ratio_to_floor"] = round(seconds / floor, 3)
        print(json.dumps(line), flush=True)

    setup = {"device": str(target), "threads": torch.get_num_threads(), "clip_precision": clip_precision}
    setup |= {"image_size": image_size, "num_samples": num_samples, "batch_size": batch_size}
    print(json.dumps({"figure": "setup", **setup}), flush=True)
    model.eval()
    floors = {}
    visual = model.clip.visual
    native_positions = visual.positional_embedding
    with torch.no_grad():
        # open_clip's own forward, with the positional embedding resized once to the input's patch grid.
        grid = image_size // visual.conv1.kernel_size[0]
        visual.positional_embedding = torch.nn.Parameter(interpolate_positional_embedding(native_positions, grid))
        for size in (1, batch_size):
            seconds = _median_seconds(lambda s=size: model.clip.encode_image(images[:s]), repeats, warmup, target)
            floors[size] = seconds / size
            report(f"floor_encode_image_batch{size}", floors[size])
        visual.positional_embedding = native_positions
        for size in (1, batch_size):
            seconds = _median_seconds(lambda s=size: model.score(images[:s], names[:s]), repeats, warmup, target) / size
            report(f"inference_batch{size}", seconds, floors[size])
    print(json.dumps({"figure": "peak_memory_eval", "value": round(peak_memory_gib(target), 2), "unit": "GiB"}))

    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    model.train()
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam(groups["prompts"] + groups["temperatures"] + groups["flows"] + groups["other"])
    masks = (torch.rand(batch_size, image_size, image_size, generator=generator) > 0.95).float().to(target)
    labels = torch.tensor([0, 1] * (batch_size // 2 + 1))[:batch_size].to(target)

    def train_step() -> None:
        output = model(images, names[:batch_size])
        terms = module.loss(*output[:2], output.text_embeddings, output.kl, labels, masks, prompt_index=0, stage=1)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()

    seconds = _median_seconds(train_step, repeats, warmup, target) / batch_size
    report(f"train_step_batch{batch_size}", seconds, floors[batch_size])
    print(json.dumps({"figure": "peak_memory_train", "value": round(peak_memory_gib(target), 2), "unit": "GiB"}))


if __name__ == "__main__":
    CLI(main)
