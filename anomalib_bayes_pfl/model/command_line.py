# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What anomalib's command line asks of a model but does not hand to it: the seed, and options export drops."""

import logging
import secrets
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.cli import SaveConfigCallback

logger = logging.getLogger(__name__)


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


def warn_that_export_ignores_model_options() -> None:
    """``anomalib export --ckpt_path`` builds a new model from the checkpoint alone: say which options it drops.

    Its command-line model is discarded (anomalib calls ``load_from_checkpoint``), so only the arguments tell.
    """
    ignored = [argument.split("=")[0] for argument in sys.argv[2:] if argument.startswith("--model.")]
    if Path(sys.argv[0]).name == "anomalib" and sys.argv[1:2] == ["export"] and ignored:
        logger.warning(
            "anomalib export --ckpt_path rebuilds BayesPFL from the checkpoint's own options and ignores %s. To "
            "export with other options, pass the checkpoint as --model.prompt_weights instead of --ckpt_path: the "
            "options are then applied, each with a warning.",
            ", ".join(ignored),
        )
