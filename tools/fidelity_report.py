# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Print the evidence behind the model card's fidelity figures: ``python tools/fidelity_report.py``.

1. The largest difference from the authors' fixture, per section, over every quantity that
   ``tests/unit/test_authors_fidelity.py`` compares.
2. How many of those quantities fail under each of five deviations from the authors' code, each applied to a
   temporary copy of the package (the working tree is not touched): the fixture must catch every one.
"""

import contextlib
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/unit/test_authors_fidelity.py"
# What the fidelity test imports besides the package, imported once by the fork server of the deviations' runs.
THIRD_PARTY = ["torch", "open_clip", "lightning.pytorch", "anomalib.data", "anomalib.engine", "pytest"]
# (file, the authors' behaviour, the deviation)
MUTATIONS = {
    "QuickGELU towers": ("settings.py", "clip_quick_gelu: bool = False", "clip_quick_gelu: bool = True"),
    "swapped temperatures": (
        "model/reference_checkpoint.py",
        '("temperature_pixel", "pixel_logit_scale"),\n    ("temperature_image", "image_head.logit_scale"),',
        '("temperature_pixel", "image_head.logit_scale"),\n    ("temperature_image", "pixel_logit_scale"),',
    ),
    "textbook image-agnostic log-determinant": (
        "adapter/lightning_model.py",
        "iad_log_det_per_batch: bool = True",
        "iad_log_det_per_batch: bool = False",
    ),
    "bilinear positional resize": (
        "model/backbone.py",
        'interpolation="bicubic", antialias=True',
        'interpolation="bilinear", antialias=True',
    ),
    "no causal mask in the text tower": (
        "model/prompts.py",
        "attn_mask=clip.attn_mask[:length, :length]",
        "attn_mask=None",
    ),
}
SECTIONS = (  # first match wins
    ("weights: positional table after the run-time resize", r"^positional"),
    ("inference: token ids", r"^image \d token"),
    ("inference: pixel logits", r"^image \d pixel logits"),
    ("inference: per-block, raw and smoothed maps", r"^image \d .*map"),
    ("inference: fuse, image logits, probabilities", r"^image \d (fuse|stage)"),
    ("inference: features, flow samples, text, RCA text", r"^image \d"),
    ("training stage 2: gradients", r"^stage 2 gradient"),
    ("training stage 2: features, text, logits, losses", r"^stage 2"),
    ("training stage 1: gradients", r"^stage 1 gradient"),
    ("training stage 1: every loss term", r"(loss|focal|dice|KL|distribution|orthogonality)"),
    ("training stage 1: features, flow samples, text, logits", r"."),
)


def largest_differences() -> None:
    """Run the fidelity test in this process, recording every comparison, and print the largest per section."""
    sys.path.insert(0, str(ROOT))
    from tests.unit import test_authors_fidelity

    rows: list[tuple[str, float, float]] = []
    compare = test_authors_fidelity.Comparisons.__call__

    def recording(self: object, name: str, ours: torch.Tensor, authors: torch.Tensor) -> None:
        difference = (ours.detach().float() - authors.float()).abs().max() if ours.shape == authors.shape else None
        rows.append((name, float("nan") if difference is None else float(difference), float(authors.abs().max())))
        compare(self, name, ours, authors)

    test_authors_fidelity.Comparisons.__call__ = recording
    if pytest.main(["-q", "-p", "no:cacheprovider", "--numprocesses=0", str(ROOT / TEST)]) != 0:
        sys.exit("the fidelity test fails: see above")
    print(f"\n{len(rows)} quantities compared at 1e-5 x max(1, |value|)\n")
    print("| section | rows | largest max abs difference (where) |\n|---|---|---|")
    for section, pattern in SECTIONS:
        chosen = [row for row in rows if re.search(pattern, row[0])]
        rows = [row for row in rows if row not in chosen]
        if chosen:
            name, difference, magnitude = max(chosen, key=lambda row: row[1])
            print(f"| {section} | {len(chosen)} | {difference:.2g} ({name}; values up to {magnitude:.3g}) |")


def _fidelity_test_on(copy: str, output: str) -> None:
    """Run the fidelity test on ``copy`` of the package, its report into ``output``; in a process of its own.

    The process is forked from a server that has imported torch and anomalib once for every deviation (7 s each). A
    server started by the test suite has imported the package itself too (anomalib's plugin hook): the package and the
    tests are forgotten here, so that the copy's are imported. If the working tree's were used, no quantity would
    differ, and the deviation's test would fail.
    """
    for module in [name for name in sys.modules if name.split(".")[0] in {"anomalib_bayes_pfl", "tests"}]:
        del sys.modules[module]
    os.chdir(copy)
    sys.path.insert(0, copy)
    with open(output, "w") as report, contextlib.redirect_stdout(report), contextlib.redirect_stderr(report):
        status = pytest.main(["-q", "-p", "no:cacheprovider", "--numprocesses=0", TEST])
    sys.exit(int(status))


def failing_quantities(name: str) -> int:
    """How many of the fixture's quantities fail with deviation ``name`` applied to a copy of the package."""
    path, authors, deviation = MUTATIONS[name]
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder)
        shutil.copytree(ROOT / "anomalib_bayes_pfl", copy / "anomalib_bayes_pfl")
        shutil.copytree(ROOT / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", copy)
        source = copy / "anomalib_bayes_pfl" / path
        text = source.read_text()
        if text.count(authors) != 1:
            sys.exit(f"{name}: the authors' line is no longer in {path}; update MUTATIONS")
        source.write_text(text.replace(authors, deviation))
        output = copy / "report.txt"
        context = multiprocessing.get_context("forkserver")
        if str(Path(__file__).parent) not in sys.path:  # where the fork server finds this module's function
            sys.path.append(str(Path(__file__).parent))
        context.set_forkserver_preload(THIRD_PARTY)  # unless a server runs already, with what it imported
        process = context.Process(target=_fidelity_test_on, args=(str(copy), str(output)))
        process.start()
        process.join()
        report = output.read_text() if output.is_file() else ""
    if process.exitcode not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):  # not a verdict: it did not run
        msg = f"{name}: the fidelity test did not run on the copy (exit status {process.exitcode}):\n{report[-3000:]}"
        raise RuntimeError(msg)
    return sum(int(count) for count in re.findall(r"(\d+) of \d+ quantities differ", report))


def mutation_counts() -> None:
    """Apply each deviation to a copy of the package and count the quantities that fail."""
    print("\n| deviation | quantities that fail |\n|---|---|")
    for name in MUTATIONS:
        print(f"| {name} | {failing_quantities(name)} |")


if __name__ == "__main__":
    largest_differences()
    mutation_counts()
