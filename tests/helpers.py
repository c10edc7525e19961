# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Test helpers: the tiny CLIP, tiny modules and head configurations, the command line in a fresh process."""

import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_bayes_pfl import BayesPFL, ZeroShotCrossDataset
from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
from anomalib_bayes_pfl.model import BayesPFLConfig, ScoringConfig
from anomalib_bayes_pfl.model.config import FlowConfig, PromptConfig

TINY_CLIP = Path(TINY_CLIP_CONFIG)
TINY_IMAGE_SIZE = 64
# BayesPFL arguments of a small, fast head on the tiny CLIP: B=2, P=2, Q=2, K=2, R=2 at 64 px.
TINY_ARGUMENTS = {
    "clip_model": str(TINY_CLIP),
    "clip_pretrained": None,
    "image_size": TINY_IMAGE_SIZE,
    "num_prompts": 2,
    "prompt_context_len": 2,
    "prompt_state_len": 2,
    "num_flow_steps": 2,
    "num_samples": 2,
    "smoothing_sigma": 1.0,
}
# The same as anomalib CLI options.
TINY_CLI = tuple(f"--model.{name}={'null' if value is None else value}" for name, value in TINY_ARGUMENTS.items())
# A tiny model for fresh-process CLI runs: one epoch per stage.
TINY_MODEL = (
    f"--model.clip_model={TINY_CLIP}",
    "--model.clip_pretrained=null",
    "--model.image_size=64",
    "--model.num_samples=2",
    "--model.stage_one_epochs=1",
    "--model.stage_two_epochs=1",
)
# The script of the environment running the tests, whether or not that environment is activated.
ANOMALIB = str(Path(sys.executable).with_name("anomalib"))
# Command-line runs fork from a server that imported anomalib (and, through the autoload hook, this plugin) once.
_CLI_PROCESSES = multiprocessing.get_context("forkserver")
_CLI_PROCESSES.set_forkserver_preload(["anomalib.cli.cli"])


def tiny_module(tiny_clip_path: str | Path = TINY_CLIP, **kwargs) -> BayesPFL:
    """``BayesPFL`` with the tiny head on the tiny CLIP; ``kwargs`` replace or add arguments."""
    return BayesPFL(**{**TINY_ARGUMENTS, "clip_model": str(tiny_clip_path), **kwargs})


def train_tiny(root: Path, tree: Path) -> tuple[BayesPFL, list[dict], Path]:
    """Train the tiny model (seed 7, two epochs of stage 1, one of stage 2) on ``cross_dataset(tree)`` in ``root``.

    Returns the module, the Engine's test results and the checkpoint.
    """
    seed_everything(7)
    module = tiny_module(stage_one_epochs=2, stage_two_epochs=1)
    engine = Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False)
    results = engine.train(module, datamodule=cross_dataset(tree))
    return module, results, next(root.rglob("model.ckpt"))


def anomalib_cli(*args: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """``anomalib <args>`` in a process of its own, as a user runs it (the autoload hook on).

    The process forks from a server that has imported anomalib once (about 10 s saved per run) and runs the
    ``anomalib`` script there: its own working directory, output and exit status, nothing shared with the test.
    With ``pythonpath`` the script runs in a new interpreter instead, as a multi-process (DDP) run needs: its other
    ranks start the script again.
    """
    if pythonpath is None:
        return forked_main(None, *args, cwd=cwd)
    environment = {key: value for key, value in os.environ.items() if key != "ANOMALIB_BAYES_PFL_NO_AUTOLOAD"}
    environment["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [ANOMALIB, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=600, check=False
    )


def forked_main(
    module: str | None, *args: str, cwd: Path, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m module args`` (``anomalib args`` for ``None``, ``python module args`` for a ``.py`` file), forked
    from the server that imported anomalib."""
    with tempfile.TemporaryDirectory() as folder:
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
        child = _CLI_PROCESSES.Process(
            target=_main_in_this_process, args=(module, list(args), str(cwd), str(stdout), str(stderr), environment)
        )
        child.start()
        child.join(timeout=600)
        if child.exitcode is None:
            child.kill()
            child.join()
        output = [path.read_text(errors="replace") for path in (stdout, stderr)]
    return subprocess.CompletedProcess([module or "anomalib", *args], child.exitcode, *output)


def _main_in_this_process(
    module: str | None, args: list[str], cwd: str, stdout: str, stderr: str, environment: dict[str, str] | None
) -> None:
    """Run ``module`` (or the ``anomalib`` script) as ``__main__``, its output into two files; exit with its status."""
    os.chdir(cwd)
    # Loader workers start as from a shell (fork on Linux), not from a fork server of their own that imports anew.
    multiprocessing.set_start_method(None, force=True)
    os.environ.pop("ANOMALIB_BAYES_PFL_NO_AUTOLOAD", None)
    os.environ.update(environment or {})
    for descriptor, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), descriptor)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process ends with its exit below
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = [ANOMALIB if module is None else module, *args]
    try:
        if module is None:
            from anomalib.cli.cli import main

            sys.exit(main())
        if module.endswith(".py"):  # a script, with its folder on the path as Python puts it
            sys.path.insert(0, str(Path(module).parent))
            runpy.run_path(module, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        sys.exit(0)
    except SystemExit as stop:  # as the interpreter ends: a message is printed and means status 1
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    except BaseException:  # reported as the interpreter reports it, with its exit status 1
        sys.excepthook(*sys.exc_info())
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def cross_data_cli(tree: Path) -> tuple[str, ...]:
    """``cross_dataset(tree)`` as anomalib CLI options."""
    return (
        "--data=ZeroShotCrossDataset",
        f"--data.auxiliary_root={tree}",
        "--data.auxiliary_format=mvtec",
        "--data.auxiliary_categories=[tile_a, tile_b]",
        f"--data.target_root={tree}",
        "--data.target_format=mvtec",
        "--data.target_categories=[tile_c]",
        "--data.train_batch_size=2",
        "--data.num_workers=0",
    )


def sparsification_by_hand(uncertainty: list[float], error: list[float]) -> tuple[float, float]:
    """AUSE and random AUSE step by step: remove one image at a time, most uncertain or largest error first."""
    count = len(error)
    by_uncertainty = [e for _, e in sorted(zip(uncertainty, error, strict=True), reverse=True)]
    by_error = sorted(error, reverse=True)
    model = [sum(by_uncertainty[k:]) / (count - k) for k in range(count)]
    oracle = [sum(by_error[k:]) / (count - k) for k in range(count)]
    mean = sum(error) / count
    return (
        sum(m - o for m, o in zip(model, oracle, strict=True)) / count,
        sum(mean - o for o in oracle) / count,
    )


def cross_dataset(tree: Path, target_categories: Sequence[str] = ("tile_c",)) -> ZeroShotCrossDataset:
    """Train on tile_a and tile_b of a synthetic MVTec AD tree, test on tile_c (or ``target_categories``)."""
    return ZeroShotCrossDataset(
        auxiliary_root=str(tree),
        auxiliary_format="mvtec",
        auxiliary_categories=["tile_a", "tile_b"],
        target_root=str(tree),
        target_format="mvtec",
        target_categories=list(target_categories),
        train_batch_size=2,
        eval_batch_size=3,
        num_workers=0,
    )


def tiny_config(**overrides) -> BayesPFLConfig:
    """A small head: B=2 prompts, P=2, Q=2, K=3 steps, R=3 samples at 64 px."""
    prompt = overrides.pop("prompt", PromptConfig(num_prompts=2, context_len=2, state_len=2))
    flow = overrides.pop("flow", FlowConfig(num_flow_steps=3))
    scoring = overrides.pop("scoring", ScoringConfig(num_samples=3, smoothing_sigma=1.0))
    return BayesPFLConfig(
        tap_layers=(1, 2, 3, 4),
        prompt=prompt,
        flow=flow,
        scoring=scoring,
        **overrides,
    )


class SaveHeadPerRank(Callback):
    """Save each process's trained head, to compare the ranks of a distributed run."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.model.head_state_dict(), self.folder / f"rank{trainer.global_rank}.pt")
