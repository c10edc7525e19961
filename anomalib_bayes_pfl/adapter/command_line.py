# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What anomalib's command line asks of a model but does not hand to it, and what its users should hear instead.

The seed that anomalib 2.7's CLI parses but ignores, the options ``anomalib export --ckpt_path`` drops (applied
here), a file given as ``--ckpt_path`` that is not a checkpoint (Lightning's error would advise running code from it),
or a checkpoint of another model, a run without ``--data``, results folders (a test or predict run writes to a folder
of its own, never into the training run that ``latest`` points to; training says where its checkpoint is), and a
``--trainer.precision`` that Lightning changes (``16-mixed`` on a CPU) or that casts the head (``bf16-true``).
:class:`CommandLine` is what ``BayesPFL``'s hooks call for them.
"""

import inspect
import logging
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from anomalib.utils.path import create_versioned_dir
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_bayes_pfl.calibration.post_processor import ProbabilityPostProcessor
from anomalib_bayes_pfl.model.checkpoint_files import BAYES_PFL_CHECKPOINT, read_checkpoint

logger = logging.getLogger(__name__)

# ``--trainer.precision`` values that ask for float16 autocast (``16`` is Lightning's older spelling); the precisions
# that keep the weights in float32 (the others, ``16-true``, ``bf16-true``, ``64-true``, cast them).
FLOAT16_MIXED = ("16", "16-mixed")
FLOAT32_WEIGHTS = ("32-true", "16-mixed", "bf16-mixed")
VERSION_FOLDER = re.compile(r"v\d+")  # anomalib's run folders, <root>/<model>/<dataset>/<category>/v<n>
# The keys of every Lightning checkpoint, and the options only a BayesPFL checkpoint has.
LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")
BAYES_PFL_OPTIONS = {"clip_model", "num_flow_steps"}
COMPONENTS = {"pre_processor", "post_processor", "evaluator", "visualizer"}


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


def skip_validation_for_own_thresholds() -> None:
    """Let anomalib's Engine test and predict a trained BayesPFL without validating it first; idempotent.

    Called by every ``BayesPFL`` as it is built. The Engine validates a zero- or few-shot model before ``test`` and
    ``predict`` without a checkpoint (with ``--model.prompt_weights``), only to collect its post-processor's adaptive
    thresholds and normalisation. BayesPFL's post-processor labels with probability thresholds and collects nothing,
    and that validation would read validation data a test does not need (loose files given to predict have none), and
    save a checkpoint into the folder ``latest`` points to. So any model whose post-processor is BayesPFL's skips it
    (that post-processor collects nothing, whichever model holds it); models with another post-processor, BayesPFL
    among them, are validated as anomalib does.
    """
    from anomalib.engine import Engine  # not at import: the autoload hook imports this while anomalib.engine loads

    original = Engine._should_run_validation
    if getattr(original, "_bayes_pfl", False):
        return

    def should_run_validation(model: Any, ckpt_path: str | Path | None) -> bool:
        if isinstance(getattr(model, "post_processor", None), ProbabilityPostProcessor):
            return False
        return original(model, ckpt_path)

    should_run_validation._bayes_pfl = True  # type: ignore[attr-defined]
    Engine._should_run_validation = staticmethod(should_run_validation)  # type: ignore[method-assign]


def refuse_without_data(what: str) -> NoReturn:
    """Say what to give to a run that has no images (Lightning's message names a method to implement)."""
    msg = (
        f"{what} needs images to score: add --data, e.g. --data MVTecAD --data.root datasets/MVTecAD --data.category "
        f"bottle, --data ZeroShotCrossDataset --data.target_root <folder> --data.target_format folder, or (anomalib "
        f"predict) --data <image or folder>."
    )
    raise ValueError(msg)


def _relative(path: Path) -> Path:
    """``path`` from the working directory when it lies below it, as a user would type it; else as it is."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _model_classes(options: set[str]) -> list[str]:
    """The anomalib models whose arguments are exactly ``options`` (a checkpoint's ``hyper_parameters``)."""
    from anomalib.models import AnomalibModule  # every built-in model is imported with it

    found, pending = set(), list(AnomalibModule.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        arguments = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"} - COMPONENTS
        if arguments == options and not inspect.isabstract(cls):
            found.add(cls.__name__)
    return sorted(found)


def check_bayes_pfl_checkpoint(stored: Any, path: str | Path, option: str, expected: str) -> None:
    """Refuse a file that torch reads but that is no Lightning checkpoint of BayesPFL, naming what it is.

    Lightning would stop at a missing key (``KeyError: 'pytorch-lightning_version'``), and another model's checkpoint
    would first build BayesPFL's default CLIP (a download) before its weights fail to fit.
    """
    if not isinstance(stored, Mapping) or not all(key in stored for key in LIGHTNING_KEYS):
        keys = ", ".join(repr(key) for key in list(stored)[:5]) if isinstance(stored, Mapping) else ""
        held = f"a dict of {keys}" if keys else f"a {type(stored).__name__}"
        msg = (
            f"{option} {path} is not a Lightning checkpoint: it holds {held}, without 'pytorch-lightning_version' "
            f"and 'state_dict'. Pass {expected}; a trained head saved another way (the authors' train_visa.pth) goes "
            f"to --model.prompt_weights instead."
        )
        raise ValueError(msg)
    options = set(stored.get("hyper_parameters") or {})
    if options & BAYES_PFL_OPTIONS:
        return
    models = _model_classes(options)
    if models:
        what, fix = f"a checkpoint of {' or '.join(models)}", f"or test it with --model {models[0]}"
    else:
        listed = ", ".join(sorted(options)) or "none"
        what = f"the checkpoint of another model (its options: {listed})"
        fix = "or test it with the model that wrote it"
    msg = f"{option} {path} is {what}, not of BayesPFL. Pass {expected}, {fix}."
    raise ValueError(msg)


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a ``--ckpt_path`` file that is no BayesPFL checkpoint (unreadable, another format, another model)."""
    stored = read_checkpoint(path, "--ckpt_path", BAYES_PFL_CHECKPOINT)
    check_bayes_pfl_checkpoint(stored, path, "--ckpt_path", BAYES_PFL_CHECKPOINT)


def new_results_folder(root: Path) -> Path:
    """A new ``v<n>`` folder beside ``root``, numbered after the highest; ``latest`` keeps pointing where it did.

    ``latest`` stays on the training run, so that ``--ckpt_path <...>/latest/weights/lightning/model.ckpt`` keeps
    naming the trained model after any number of test and predict runs.
    """
    parent = root.parent
    while True:
        numbers = [int(folder.name[1:]) for folder in parent.iterdir() if VERSION_FOLDER.fullmatch(folder.name)]
        folder = parent / f"v{max(numbers, default=-1) + 1}"
        try:
            folder.mkdir()
        except FileExistsError:  # another run took this number meanwhile
            continue
        return folder


class CommandLine:
    """What ``BayesPFL`` tells a user of the command line, and the results folder its run writes to.

    The module's Lightning hooks call it with their trainer; it keeps only the folder this process writes to and the
    checkpoint path it has printed, so that an exported module pickles without a trainer.
    """

    def __init__(self) -> None:
        self.own_results: Path | None = None  # the folder this process's fit or validation writes to
        self.announced: str | None = None  # the checkpoint path already printed

    @staticmethod
    def check_precision(trainer: Trainer) -> None:
        """Refuse a ``--trainer.precision`` the run would not get or the head cannot take, before any image is read.

        Lightning runs no float16 autocast on a CPU: for ``16-mixed`` it runs ``bf16-mixed`` instead, with a warning
        lost in the log, so the figures would not be those of the precision asked for. ``16-true``, ``bf16-true`` and
        ``64-true`` cast the head's weights, which then meet float32 features (``mat1 and mat2 must have the same
        dtype``). Only the command line keeps what was asked: ``Engine(precision="16-mixed")`` on a CPU gets
        Lightning's swap and its warning.
        """
        precision = trainer.precision
        asked = _command_line_option(trainer, "trainer.precision")
        if str(asked) in FLOAT16_MIXED and precision not in FLOAT16_MIXED:
            device = trainer.strategy.root_device.type.upper()
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

    @staticmethod
    def check_checkpoint(trainer: Trainer) -> None:
        """Refuse a ``--ckpt_path`` that is no BayesPFL checkpoint; Lightning loads it after ``setup``, saying worse."""
        checkpoint = command_line_checkpoint(trainer)
        if checkpoint is not None:
            check_checkpoint_file(checkpoint)

    def prepare_results_folder(self, trainer: Trainer) -> None:
        """Give a test or predict run a results folder of its own, before anything is written (``config.yaml`` first).

        anomalib's Engine points test and predict at the folder ``latest`` links to, which after ``anomalib train`` is
        the training run's: its table, page and config would be overwritten. Such a run gets a new ``v<n>`` folder
        instead (the fit and test of one ``anomalib train`` share theirs). Where no run has made ``latest``, it becomes
        a link to a new version folder: anomalib would leave a plain folder, on which every later ``anomalib train``
        there fails (``IsADirectoryError``). Lightning's ``prepare_data`` precedes every ``setup``; with several
        processes the first one decides and :meth:`share_results_folder` tells the others.
        """
        root, stage = Path(trainer.default_root_dir), trainer.state.fn
        if stage in {TrainerFn.FITTING, TrainerFn.VALIDATING}:
            self.own_results = root
        first = trainer.is_global_zero  # prepare_data runs once per node: one folder for all of them
        if first and root.name == "latest" and not root.exists() and not root.is_symlink():
            self.own_results = create_versioned_dir(root.parent)
            trainer._default_root_dir = str(self.own_results)  # Lightning has no setter
            return
        earlier_run = VERSION_FOLDER.fullmatch(root.name) and (root.parent / "latest").is_symlink()
        evaluating = stage in {TrainerFn.TESTING, TrainerFn.PREDICTING}
        if first and evaluating and earlier_run and root != self.own_results:
            self.own_results = new_results_folder(root)
            trainer._default_root_dir = str(self.own_results)
            logger.info("Results of this run go to %s; %s, which latest points to, is left as it is.",
                        self.own_results, root)  # fmt: skip

    def share_results_folder(self, trainer: Trainer) -> None:
        """With several processes, every one writes where the first one's :meth:`prepare_results_folder` decided."""
        if trainer.world_size > 1:
            folder = trainer.strategy.broadcast(str(trainer.default_root_dir), src=0)
            trainer._default_root_dir = folder
            self.own_results = Path(folder)

    def say_where_the_checkpoint_is(self, trainer: Trainer) -> None:
        """Print the checkpoint a training run wrote, and the command that tests it (once per file)."""
        callback = trainer.checkpoint_callback
        path = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
        if not path or not trainer.is_global_zero or path == self.announced:
            return
        self.announced = path
        shown = _relative(Path(path))
        print(f"Checkpoint written to {shown}: test it with anomalib test --model BayesPFL --ckpt_path {shown} "
              f"--data <data>")  # fmt: skip
