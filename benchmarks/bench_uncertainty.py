# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What the uncertainty costs: inference with it against plain inference in the same run, and peak memory.

Builds the default configuration (ViT-L-14-336 with random weights, 518 px, B = 3 prompt sets, R = 10 samples; compute
does not depend on weight values) and prints JSON lines: inference per image at batch 1 and ``batch_size`` without
uncertainty and with each measure, interleaved round by round (the order rotating) so that all see the same machine
state, with the median over rounds of each one's ratio to plain inference in the same round; and the peak memory of
plain inference and with uncertainty (process RSS on CPU, allocated memory on CUDA). Times are medians of
``repeats`` rounds after ``warmup`` rounds.

    python benchmarks/bench_uncertainty.py --threads 2 --repeats 5
"""

import json
import statistics

import torch

# This folder's scripts run with it on the path.
from bench_speed import (
    CATEGORY_NAMES,
    interleaved_times,
    peak_memory_gib,
    seconds_of,
    set_up,
)
from jsonargparse import CLI

MEASURES = (None, "mutual_information", "std")


def main(
    clip_model: str = "ViT-L-14-336",
    image_size: int = 518,
    num_samples: int = 10,
    batch_size: int = 4,
    repeats: int = 3,
    warmup: int = 1,
    device: str | None = None,
    threads: int | None = None,
) -> None:
    """Measure and print the figures as JSON lines."""
    _, model, images, target, _ = set_up(clip_model, image_size, num_samples, batch_size, device, threads)
    names = list(CATEGORY_NAMES) * (batch_size // 4 + 1)
    setup = {"device": str(target), "threads": torch.get_num_threads(), "image_size": image_size}
    setup |= {"num_prompts": model.config.prompt.num_prompts, "num_samples": num_samples, "batch_size": batch_size}
    print(json.dumps({"figure": "setup", **setup}), flush=True)

    def run(size: int, measure: str | None) -> float:
        return seconds_of(lambda: model.score(images[:size], names[:size], uncertainty=measure), target) / size

    # Peak memory before the timings: plain inference first, then with the samples' maps kept.
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    with torch.no_grad():
        run(batch_size, None)
        plain_peak = peak_memory_gib(target)
        run(batch_size, "mutual_information")
    print(json.dumps({"figure": f"peak_memory_batch{batch_size}_plain", "value": round(plain_peak, 2), "unit": "GiB"}))
    line = {"figure": f"peak_memory_batch{batch_size}_uncertainty", "value": round(peak_memory_gib(target), 2)}
    print(json.dumps({**line, "unit": "GiB"}), flush=True)

    for size in (1, batch_size):
        with torch.no_grad():
            times = interleaved_times(
                {measure: lambda m=measure, s=size: run(s, m) for measure in MEASURES}, repeats, warmup
            )
        for measure, values in times.items():
            # The median of each round's ratio: the runs of one round follow each other, so slow drifts of the
            # machine cancel in it.
            ratios = [seconds / plain for seconds, plain in zip(values, times[None], strict=True)]
            line = {"figure": f"inference_batch{size}_{measure or 'plain'}"}
            line |= {"value": round(statistics.median(values) * 1000, 1), "unit": "ms/image"}
            line |= {
                "ratio_to_plain": round(statistics.median(ratios), 3),
                "round_ratios": [round(r, 3) for r in ratios],
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    CLI(main)
