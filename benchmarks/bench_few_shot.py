# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What the few-shot memory costs: inference time against zero-shot in the same run, checkpoint size, peak memory.

Builds the default configuration (ViT-L-14-336 with random weights, 518 px, R = 10; compute does not depend on weight
values), gives the batch's category a memory of k reference images (k = 1 and 4 by default), and prints JSON lines:
inference per image at batch 1 and ``batch_size`` with k = 0 (zero-shot) and each k, interleaved round by round (the
order rotating) so that all see the same machine state, with each k's ratio to zero-shot; the bytes that each
category's references add to a checkpoint; and the peak memory of zero-shot and few-shot inference (process RSS on
CPU, allocated memory on CUDA). Times are medians of ``repeats`` rounds after ``warmup`` rounds.

    python benchmarks/bench_few_shot.py --threads 2 --repeats 5
"""

import io
import json
import statistics

import torch

# This folder's scripts run with it on the path.
from bench_speed import (
    interleaved_times,
    peak_memory_gib,
    seconds_of,
    set_up,
)
from jsonargparse import CLI

from anomalib_bayes_pfl.model.references import CategoryReferences, ReferenceMemory, memory_tokens


def main(
    clip_model: str = "ViT-L-14-336",
    image_size: int = 518,
    num_samples: int = 10,
    shots: tuple[int, ...] = (1, 4),
    batch_size: int = 4,
    repeats: int = 3,
    warmup: int = 1,
    device: str | None = None,
    threads: int | None = None,
) -> None:
    """Measure and print the figures as JSON lines."""
    _, model, images, target, generator = set_up(clip_model, image_size, num_samples, batch_size, device, threads)
    setup = {"device": str(target), "threads": torch.get_num_threads(), "image_size": image_size}
    print(json.dumps({"figure": "setup", **setup, "num_samples": num_samples, "batch_size": batch_size}), flush=True)

    with torch.no_grad():
        for k_shot in shots:
            references = torch.randn(k_shot, 3, image_size, image_size, generator=generator).to(target)
            per_image = [model.encode_images(image[None]).patch_tokens for image in references]
            tokens = [torch.cat(layer) for layer in zip(*per_image, strict=True)]
            references = CategoryReferences(memory_tokens(tokens), {"k_shot": k_shot})
            model.references.set(f"{k_shot}-shot", references)  # one category per k: each keeps its memory
            saved = ReferenceMemory()
            saved.set("category", references)  # as a checkpoint holds it
            buffer = io.BytesIO()
            torch.save(saved.state(), buffer)
            line = {"figure": f"checkpoint_added_per_category_k{k_shot}", "unit": "MB"}
            print(json.dumps({**line, "value": round(buffer.getbuffer().nbytes / 1e6, 1)}), flush=True)

    def run(size: int, k_shot: int) -> float:
        model.few_shot = k_shot > 0
        return seconds_of(lambda: model.score(images[:size], [f"{k_shot}-shot"] * size), target) / size

    # Peak memory before the timings: zero-shot first (the peak so far is one reference's encoding), then few-shot.
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    with torch.no_grad():
        run(batch_size, 0)
        zero_shot_peak = peak_memory_gib(target)
        run(batch_size, max(shots))
    print(json.dumps({"figure": f"peak_memory_batch{batch_size}_k0", "value": round(zero_shot_peak, 2), "unit": "GiB"}))
    line = {"figure": f"peak_memory_batch{batch_size}_k{max(shots)}", "value": round(peak_memory_gib(target), 2)}
    print(json.dumps({**line, "unit": "GiB"}))

    for size in (1, batch_size):
        with torch.no_grad():
            times = interleaved_times(
                {k_shot: lambda k=k_shot, s=size: run(s, k) for k_shot in (0, *shots)}, repeats, warmup
            )
        medians = {k_shot: statistics.median(values) for k_shot, values in times.items()}
        for k_shot, seconds in medians.items():
            line = {"figure": f"inference_batch{size}_k{k_shot}", "value": round(seconds * 1000, 1)}
            line |= {"unit": "ms/image", "ratio_to_zero_shot": round(seconds / medians[0], 3)}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    CLI(main)
