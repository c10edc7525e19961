# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The last lines of an error say what is wrong and how to fix it, and never advise running code from a file.

The command line runs in this process (anomalib's ``AnomalibCLI``), as ``anomalib ...`` would run it.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib import LearningType
from anomalib.cli import AnomalibCLI
from anomalib.engine import Engine
from anomalib.post_processing import PostProcessor
from anomalib.utils.path import create_versioned_dir
from PIL import Image

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.model.backbone import load_clip
from anomalib_bayes_pfl.parser_errors import summarise

from ..helpers import TINY_ARGUMENTS, TINY_CLI, TINY_CLIP


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(path)
    return path


def _last_line_of_parser_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        AnomalibCLI(list(args), run=False)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_parser_errors_end_with_the_option_value_and_reason(capsys):
    last = _last_line_of_parser_error(capsys, "train", "--model", "BayesPFL", "--model.kshot", "1", "--data", "MVTecAD")
    assert last == (
        "In short: --model.kshot 1: BayesPFL has no option 'kshot'; did you mean --model.k_shot? "
        "(--model.help BayesPFL lists them)"
    )
    last = _last_line_of_parser_error(capsys, "train", "--model", "BayesPFL", "--model.k_shot", "-1")
    assert last == "In short: --model.k_shot -1: Not of type NonNegativeInt: does not conform to restriction v>=0"
    last = _last_line_of_parser_error(
        capsys, "test", "--model", "BayesPFL", "--data", "ZeroShotCrossDataset", "--data.target_format", "mvtc"
    )
    assert last == "In short: --data.target_format mvtc: expected one of 'mvtec', 'visa', 'folder'"


@pytest.mark.parametrize(
    ("subcommand", "option", "restriction"),
    [
        ("train", "image_threshold=1.5", "does not conform to restriction v>0 and v<1"),
        ("test", "review_fraction=1", "v>=0 and v<1"),
        ("test", "uncertainty=entropy", "'mutual_information', 'std'"),
    ],
)
def test_out_of_range_values_are_refused_by_the_parser_with_their_name(capsys, subcommand, option, restriction):
    """A short parser error (exit 2) naming the option and its range, not a traceback from inside the model."""
    with pytest.raises(SystemExit) as stopped:
        AnomalibCLI([subcommand, "--model", "BayesPFL", *TINY_CLI, f"--model.{option}"], run=False)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    last_lines = "\n".join(error.splitlines()[-12:])
    assert f'Parser key "{option.split("=")[0]}"' in last_lines, last_lines
    assert restriction in last_lines, last_lines
    assert "Traceback" not in error


def test_other_parser_errors_are_left_as_they_are():
    report = (
        'Parser key "model":\n'
        "  Problem with given class_path 'anomalib.models.Padim':\n"
        "    Option 'x' is not accepted\n"
        "  Given value: NestedArg(key='x', val='1')"
    )
    assert summarise(report) is None


def _no_unsafe_advice(error: BaseException) -> None:
    """Nothing printed with the error suggests unpickling: no chained exception, no such words."""
    assert error.__cause__ is None
    assert error.__context__ is None
    assert "weights_only=False" not in str(error)


def test_an_image_given_as_clip_weights_is_named(png):
    expected = r"--model.clip_pretrained .*photo.png is not a checkpoint: it is a PNG image. Pass OpenAI's"
    with pytest.raises(ValueError, match=expected) as error:
        load_clip(str(TINY_CLIP), pretrained=str(png))
    _no_unsafe_advice(error.value)


def test_an_image_given_as_prompt_weights_is_named(png):
    expected = r"--model.prompt_weights .*photo.png is not a checkpoint: it is a PNG image. Pass the model.ckpt"
    with pytest.raises(ValueError, match=expected) as error:
        BayesPFL(**TINY_ARGUMENTS, prompt_weights=str(png))
    _no_unsafe_advice(error.value)


def test_a_text_file_given_as_prompt_weights_is_named(tmp_path):
    notes = tmp_path / "notes.ckpt"
    notes.write_text("hello world, this is text\n")  # torch's safe loader fails on it with a bare KeyError
    with pytest.raises(ValueError, match=r"--model.prompt_weights .*notes.ckpt is not a checkpoint: .* Pass") as error:
        BayesPFL(**TINY_ARGUMENTS, prompt_weights=str(notes))
    _no_unsafe_advice(error.value)


def test_an_image_given_as_ckpt_path_is_named_by_export_and_by_every_stage(png, tmp_path):
    expected = r"--ckpt_path .*photo.png is not a checkpoint: it is a PNG image. Pass the model.ckpt that 'anomalib"
    with pytest.raises(ValueError, match=expected) as error:
        BayesPFL.load_from_checkpoint(png)  # what anomalib export --ckpt_path calls
    _no_unsafe_advice(error.value)
    image = tmp_path / "part.png"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(ValueError, match=expected) as error:
        AnomalibCLI(["predict", "--model", "BayesPFL", *TINY_CLI, f"--ckpt_path={png}", f"--data={image}",
                     f"--default_root_dir={tmp_path / 'results'}"])  # fmt: skip
    _no_unsafe_advice(error.value)


def test_testing_without_data_says_what_to_give_and_leaves_a_usable_results_folder(tmp_path):
    engine = Engine(default_root_dir=tmp_path / "results", accelerator="cpu", devices=1, logger=False)
    with pytest.raises(ValueError, match=r"anomalib test needs images to score: add --data, e.g. --data MVTecAD"):
        engine.test(BayesPFL(**TINY_ARGUMENTS))
    latest = tmp_path / "results" / "BayesPFL" / "latest"
    assert latest.is_symlink()  # anomalib would leave a plain folder, on which a later train fails
    assert create_versioned_dir(latest.parent).name == "v1"


def test_a_missing_or_wrong_prompt_weights_file_ends_the_command_line_s_error(tmp_path, png):
    """jsonargparse would bury the sentence in its report on every model, then dump every option."""
    for weights, named in ((tmp_path / "gone.ckpt", "does not exist"), (png, "is not a checkpoint: it is a PNG image")):
        with pytest.raises(ValueError, match=r"gone|photo") as error:
            AnomalibCLI(["test", "--model", "BayesPFL", *TINY_CLI, f"--model.prompt_weights={weights}"], run=False)
        message = str(error.value)
        assert message.startswith(f"--model.prompt_weights {weights} {named}"), message
        assert message.endswith("or the authors' train_visa.pth / train_mvtec.pth."), message
        assert "Namespace(" not in message
        _no_unsafe_advice(error.value)


PADIM_LIKE = {
    "epoch": 0,
    "global_step": 1,
    "pytorch-lightning_version": "2.6.6",
    "state_dict": {"model.feature_extractor.conv1.weight": torch.zeros(1)},
    "hparams_name": "kwargs",
    "hyper_parameters": {"backbone": "resnet18", "layers": ["layer1"], "pre_trained": False, "n_features": None},
}


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (PADIM_LIKE, r"is a checkpoint of Padim, not of BayesPFL\. Pass the model\.ckpt .*, or test it with "
                     r"--model Padim\."),
        ({"a": 1}, r"is not a Lightning checkpoint: it holds a dict of 'a', without 'pytorch-lightning_version' and "
                   r"'state_dict'\. Pass the model\.ckpt .*goes to --model\.prompt_weights instead\."),
    ],
)  # fmt: skip
def test_another_model_s_checkpoint_or_a_hand_made_file_is_named_by_export_and_every_stage(tmp_path, stored, expected):
    checkpoint = tmp_path / "other.ckpt"
    torch.save(stored, checkpoint)
    with pytest.raises(ValueError, match=rf"^--ckpt_path .*other\.ckpt {expected}$"):
        BayesPFL.load_from_checkpoint(checkpoint)  # anomalib export --ckpt_path
    image = tmp_path / "part.png"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(ValueError, match=rf"^--ckpt_path .*other\.ckpt {expected}$"):
        AnomalibCLI(["predict", "--model", "BayesPFL", *TINY_CLI, f"--ckpt_path={checkpoint}", f"--data={image}",
                     f"--default_root_dir={tmp_path / 'results'}"])  # fmt: skip


def test_the_engine_validates_bayes_pfl_before_testing_only_for_another_post_processor(monkeypatch):
    """anomalib validates zero-shot models before test and predict for adaptive thresholds; BayesPFL sets its own."""
    monkeypatch.setattr(BayesPFL, "learning_type", property(lambda self: LearningType.ZERO_SHOT))
    own, another_post_processor = BayesPFL(**TINY_ARGUMENTS), BayesPFL(**TINY_ARGUMENTS, post_processor=PostProcessor())
    patched = Engine._should_run_validation  # installed by the first model built, once only
    assert not patched(own, None)
    assert patched(another_post_processor, None)
    BayesPFL(**TINY_ARGUMENTS)
    assert Engine._should_run_validation is patched  # a model built later wraps it no further
    another_zero_shot = SimpleNamespace(learning_type=LearningType.ZERO_SHOT, post_processor=PostProcessor())
    assert Engine._should_run_validation(another_zero_shot, None)  # anomalib's rule for every other model
    assert not Engine._should_run_validation(another_zero_shot, "model.ckpt")
