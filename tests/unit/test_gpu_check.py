# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``benchmarks/gpu_check.py`` without a GPU: one line that says so, and a failing status."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_says_so_and_fails_fast(tmp_path):
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a machine with a GPU
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=60
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "gpu_check: no CUDA device is available (torch.cuda.is_available() is False); this script must run on a "
        "machine with a GPU."
    ]
