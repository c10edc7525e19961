# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What anomalib's command line asks of a model but does not hand to it, and what its users should hear instead.

The seed that anomalib 2.7's CLI parses but ignores, the options ``anomalib export --ckpt_path`` drops (applied
here), a file given as ``--ckpt_path`` that is not a checkpoint (Lightning's error would advise running code from it),
a run without ``--data``, a ``latest`` results folder that anomalib would leave as a plain folder, and a
``--trainer.precision`` that Lightning changes (``16-mixed`` on a CPU) or that casts the head (``bf16-true``).
:class:`CommandLineHooks` is a base of ``BayesPFL`` that holds the hooks for them.
"""

import logging
import secrets
import sys
from pathlib import Path
from typing import Any, NoReturn

from anomalib.utils.path import create_versioned_dir
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.cli import SaveConfigCallback

from .checkpoint_files import BAYES_PFL_CHECKPOINT, read_checkpoint

logger = logging.getLogger(__name__)

# ``--trainer.precision`` values that ask for float16 autocast (``16`` is Lightning's older spelling); the precisions
# that keep the weights in float32 (the others, ``16-true``, ``bf16-true``, ``64-true``, cast them).
FLOAT16_MIXED = ("16", "16-mixed")
FLOAT32_WEIGHTS = ("32-true", "16-mixed", "bf16-mixed")


def _command_line_option(trainer: Trainer, name: str) -> Any:
    """The value of an option of the anomalib command that runs ``trainer``; ``None`` outside the command line."""
    configs = [callback.config for callback in trainer.callbacks if isinstance(callback, SaveConfigCallback)]
    return configs[0].get(name) if configs else None


def command_line_checkpoint(trainer: Trainer) -> str | None:
    """The ``--ckpt_path`` of the anomalib command, known before Lightning loads it (``trainer.ckpt_path`` is not)."""
    path = _command_line_option(trainer, "ckpt_path")
    return str(path) if path else None


def seed_from_command_line(trainer: Trainer) -> None:
    """Apply ``--seed_everything`` (or a config's ``seed_everything``), which anomalib 2.7's CLI parses but ignores.

    ``True`` (the CLI default) draws a random seed and logs it; ``False`` leaves the RNGs alone.
    Outside the CLI nothing happens: Python users call ``seed_everything`` themselves.
    """
    seed = _command_line_option(trainer, "seed_everything")
    if seed is True:
        seed = secrets.randbelow(2**31)  # Lightning's seed_everything() would take 0 every time
    if seed is not None and seed is not False:
        seed_everything(int(seed), workers=True)  # logs "Seed set to <seed>": pass it again to repeat the run


def export_model_options(model_class: type) -> dict[str, Any]:
    """The ``--model.*`` options of the running ``anomalib export``, typed by ``model_class``'s signature.

    With ``--ckpt_path``, anomalib rebuilds the model from the checkpoint (``load_from_checkpoint``) and drops them, so
    only the arguments tell. The module applies them as ``test`` and ``predict`` do: each with a warning, or refused
    when the trained head cannot take it. Outside ``anomalib export`` there are none.
    """
    if Path(sys.argv[0]).name != "anomalib" or sys.argv[1:2] != ["export"]:
        return {}
    arguments, names = [], []
    rest = sys.argv[2:]
    for index, argument in enumerate(rest):
        if not argument.startswith("--model."):
            continue
        name, separator, value = argument.removeprefix("--model.").partition("=")
        if not separator:  # --model.name value
            value = rest[index + 1] if index + 1 < len(rest) else ""
        name = name.removeprefix("init_args.")
        arguments.append(f"--model.{name}={value}")
        names.append(name)
    if not names:
        return {}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(model_class, "model")
    parsed = parser.parse_args(arguments)
    return {name: parsed[f"model.{name}"] for name in names}


def refuse_without_data(what: str) -> NoReturn:
    """Say what to give to a run that has no images (Lightning's message names a method to implement)."""
    msg = (
        f"{what} needs images to score: add --data, e.g. --data MVTecAD --data.root datasets/MVTecAD --data.category "
        f"bottle, --data ZeroShotCrossDataset --data.target_root <folder> --data.target_format folder, or (anomalib "
        f"predict) --data <image or folder>."
    )
    raise ValueError(msg)


class CommandLineHooks:
    """The hooks of ``BayesPFL`` that speak to a user of the command line."""

    trainer: Trainer

    def check_precision(self) -> None:
        """Refuse a ``--trainer.precision`` the run would not get or the head cannot take, before any image is read.

        Lightning runs no float16 autocast on a CPU: for ``16-mixed`` it runs ``bf16-mixed`` instead, with a warning
        lost in the log, so the figures would not be those of the precision asked for. ``16-true``, ``bf16-true`` and
        ``64-true`` cast the head's weights, which then meet float32 features (``mat1 and mat2 must have the same
        dtype``). Only the command line keeps what was asked: ``Engine(precision="16-mixed")`` on a CPU gets
        Lightning's swap and its warning.
        """
        precision = self.trainer.precision
        asked = _command_line_option(self.trainer, "trainer.precision")
        if str(asked) in FLOAT16_MIXED and precision not in FLOAT16_MIXED:
            device = self.trainer.strategy.root_device.type.upper()
            msg = (
                f"--trainer.precision {asked}: float16 mixed precision needs a GPU, and this run is on the {device}, "
                f"where Lightning would run {precision} instead. Pass --trainer.precision bf16-mixed on a CPU, or run "
                f"16-mixed on a GPU (--trainer.accelerator gpu)."
            )
            raise ValueError(msg)
        if precision not in FLOAT32_WEIGHTS:
            msg = (
                f"--trainer.precision {precision} casts the weights: BayesPFL keeps its head in float32 (planar-flow "
                f"log-determinants, probabilities and thresholds). Pass --trainer.precision bf16-mixed (16-mixed on a "
                f"GPU), under which the CLIP towers compute in half precision and the head in float32, or 32-true."
            )
            raise ValueError(msg)

    def check_command_line_checkpoint(self) -> None:
        """Refuse a ``--ckpt_path`` that is not a checkpoint; Lightning loads it after ``setup``, and says worse."""
        checkpoint = command_line_checkpoint(self.trainer)
        if checkpoint is not None:
            read_checkpoint(checkpoint, "--ckpt_path", BAYES_PFL_CHECKPOINT)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Load as anomalib does (``anomalib export --ckpt_path``), after checking that the file is a checkpoint."""
        read_checkpoint(checkpoint_path, "--ckpt_path", BAYES_PFL_CHECKPOINT)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def prepare_data(self) -> None:
        """Make anomalib's ``latest`` results folder a link to a new version folder where no run has made one yet.

        anomalib's test and predict write into ``<root>/latest``; where no run has made it, it becomes a plain folder,
        on which every later ``anomalib train`` there fails (``IsADirectoryError``), also after a run that stopped.
        Lightning's ``prepare_data`` precedes every ``setup``, so nothing is written there yet.
        """
        root = Path(self.trainer.default_root_dir)
        if root.name == "latest" and not root.exists() and not root.is_symlink():
            create_versioned_dir(root.parent)

    def val_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        refuse_without_data("validation, which anomalib runs before testing a zero- or few-shot model without a "
                            "checkpoint,")  # fmt: skip

    def test_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        refuse_without_data("anomalib test")

    def predict_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        refuse_without_data("anomalib predict")
