# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Where reduced precision applies: the frozen CLIP towers may compute in bf16 or fp16, the head never does.

Two sources ask for reduced precision: ``clip_precision`` (the towers' own autocast) and Lightning's mixed precision
(``--trainer.precision bf16-mixed`` or ``16-mixed``), which wraps every step in an autocast. The towers hold nearly all
the compute, so they follow either. The head (distributions, prompts, RCA, maps, image head, scores, uncertainty and
losses) is cheap and numerically delicate (planar-flow log-determinants, probabilities near 0 and 1, thresholds
compared with them), so it computes in float32 under any autocast: scores, maps and thresholds are then float32
values, not bf16 ones stored in float32.
"""

import contextlib
from collections.abc import Iterator

import torch

from .config import ClipPrecision

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def clip_precision(precision: ClipPrecision, device: torch.device) -> Iterator[None]:
    """Run the frozen CLIP under ``precision``'s autocast; ``fp32`` keeps the autocast around it (the trainer's).

    Without a trainer's mixed precision there is none, and ``fp32`` computes in float32 as the authors do.
    """
    dtype = AUTOCAST_DTYPES.get(precision)
    with torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def head_precision(device: torch.device) -> Iterator[None]:
    """Compute in float32 even inside an autocast (Lightning's mixed precision); outside one, change nothing.

    Leaving the context alone without an autocast keeps float32 runs and exported graphs free of autocast nodes.
    """
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield
