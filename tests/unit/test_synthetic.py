# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Synthetic dataset trees are a function of their seed alone."""

import hashlib
from pathlib import Path

import torch

from anomalib_bayes_pfl.data.synthetic import write_tree


def _digest(root: Path) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in sorted(root.rglob("*.png")))).hexdigest()


def test_same_seed_same_files_whatever_the_global_rng(tmp_path):
    torch.manual_seed(1)
    first = write_tree(tmp_path / "first", ["a"], num_test_defect=12, seed=3)
    torch.manual_seed(2)  # the defect generator draws parameters when built: it must not read this state
    second = write_tree(tmp_path / "second", ["a"], num_test_defect=12, seed=3)
    third = write_tree(tmp_path / "third", ["a"], num_test_defect=12, seed=4)
    assert _digest(first) == _digest(second)
    assert _digest(first) != _digest(third)
