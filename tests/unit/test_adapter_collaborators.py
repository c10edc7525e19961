# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""``BayesPFL`` composes its collaborators: each is tested here on its own, without a Lightning module around it."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import lightning
import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.adapter.command_line import CommandLine
from anomalib_bayes_pfl.adapter.options import ResolvedOptions
from anomalib_bayes_pfl.calibration import ProbabilityPostProcessor
from anomalib_bayes_pfl.deploy import BayesPFLExporter
from anomalib_bayes_pfl.model.references import CategoryReferences
from anomalib_bayes_pfl.settings import BayesPFLSettings

from ..helpers import tiny_module


def _given(**options) -> dict:
    return {name: options.get(name) for name in BayesPFLSettings.option_names()} | {"clip_pretrained": "auto"}


def test_the_module_inherits_only_anomalib_and_holds_its_collaborators(tiny_clip_path):
    """No class of the package in the MRO but ``BayesPFL``; the collaborators are attributes, and pickle with it."""
    assert [cls for cls in BayesPFL.__mro__ if cls.__module__.startswith("anomalib_bayes_pfl")] == [BayesPFL]
    module = tiny_module(tiny_clip_path)
    assert isinstance(module.options, ResolvedOptions)
    assert isinstance(module.command_line, CommandLine)
    assert isinstance(module.exporter, BayesPFLExporter)
    copy = pickle.loads(pickle.dumps(module))  # anomalib's torch export pickles the module
    assert copy.settings == module.settings
    assert copy.options is not module.options


def test_resolved_options_take_a_checkpoint_and_say_whether_the_scores_change():
    options = ResolvedOptions(_given(image_size=64), iad_log_det_per_batch=True, prompt_weights=None)
    assert (options.settings.image_size, options.settings.num_samples) == (64, 10)
    stored = {"hyper_parameters": {"image_size": 64, "num_samples": 3, "review_fraction": 0.2}}
    assert options.take_checkpoint(stored, trainer=SimpleNamespace(ckpt_path="run.ckpt"), model_class=BayesPFL)
    assert (options.settings.num_samples, options.settings.review_fraction) == (3, 0.2)
    assert options.settings.stored_in == "checkpoint run.ckpt"
    assert not options.take_checkpoint(stored, trainer=SimpleNamespace(ckpt_path="run.ckpt"), model_class=BayesPFL)
    report_only = {"hyper_parameters": {**stored["hyper_parameters"], "review_fraction": 0.3}}
    assert not options.take_checkpoint(report_only, SimpleNamespace(ckpt_path="run.ckpt"), BayesPFL)


def test_loaded_alone_only_the_options_that_differ_from_the_checkpoint_count_as_given():
    """``load_from_checkpoint`` passes the stored options back as arguments: they are not the caller's."""
    options = ResolvedOptions(_given(image_size=64, num_samples=3), iad_log_det_per_batch=True, prompt_weights=None)
    options.take_checkpoint({"hyper_parameters": {"image_size": 64, "num_samples": 3}}, None, BayesPFL)
    assert options.settings.given == frozenset()
    assert options.settings.num_samples == 3


def test_resolved_options_name_each_image_by_the_one_rule(tiny_model):
    options = ResolvedOptions(_given(), iad_log_det_per_batch=True, prompt_weights=None)
    paths = ["d/MVTecAD/metal_nut/test/scratch/000.png", "upload/x.png"]
    assert [name.category for name in options.image_categories(paths, None, None, None)] == ["metal_nut", "object"]
    trainer = SimpleNamespace(datamodule=SimpleNamespace(category="widget"))
    assert [name.class_name for name in options.image_categories(paths, 2, trainer, None)] == ["metal_nut", "widget"]
    tiny_model.references.set("grain_plank", CategoryReferences([], {}))
    assert options.image_categories(paths[1:], 1, None, tiny_model)[0].class_name == "grain_plank"


def test_options_that_contradict_each_other_are_refused_before_any_image():
    options = ResolvedOptions(_given(image_threshold=0.4, false_alarm_rate=0.1), iad_log_det_per_batch=True,
                              prompt_weights=None)  # fmt: skip
    with pytest.raises(ValueError, match="image_threshold"):
        options.check()


def _trainer(root: Path, stage: TrainerFn, **extra) -> SimpleNamespace:
    return SimpleNamespace(default_root_dir=str(root), _default_root_dir=str(root), state=SimpleNamespace(fn=stage),
                           is_global_zero=True, **extra)  # fmt: skip


def test_a_test_after_training_writes_to_a_folder_of_its_own(tmp_path):
    """The training run's folder, which ``latest`` points to, is left as it is; a second test gets the next one."""
    (tmp_path / "v0").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "v0")
    command_line = CommandLine()
    fit = _trainer(tmp_path / "v0", TrainerFn.FITTING)
    command_line.prepare_results_folder(fit)
    assert fit._default_root_dir == str(tmp_path / "v0")  # fit and test of one anomalib train share it
    for expected in ("v1", "v2"):
        test = _trainer(tmp_path / "v0", TrainerFn.TESTING)
        CommandLine().prepare_results_folder(test)
        assert test._default_root_dir == str(tmp_path / expected)
    assert (tmp_path / "latest").resolve() == tmp_path / "v0"


def test_the_checkpoint_is_announced_once_with_the_command_that_tests_it(tmp_path, capsys):
    command_line = CommandLine()
    callback = SimpleNamespace(best_model_path=str(tmp_path / "model.ckpt"), last_model_path="")
    trainer = SimpleNamespace(checkpoint_callback=callback, is_global_zero=True)
    command_line.say_where_the_checkpoint_is(trainer)
    command_line.say_where_the_checkpoint_is(trainer)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1
    assert printed[0].startswith("Checkpoint written to ")
    assert "anomalib test --model BayesPFL --ckpt_path" in printed[0]


def test_a_precision_that_casts_the_head_is_refused():
    trainer = SimpleNamespace(precision="bf16-true", callbacks=[])
    with pytest.raises(ValueError, match="casts the weights"):
        CommandLine.check_precision(trainer)
    CommandLine.check_precision(SimpleNamespace(precision="bf16-mixed", callbacks=[]))


def test_the_exporter_labels_with_the_one_category_the_head_stores(tiny_model):
    """Exported models score the stored category, labelled with its calibrated thresholds (the fixed ones before)."""
    post_processor = ProbabilityPostProcessor()
    settings = BayesPFLSettings(false_alarm_rate=0.1)
    BayesPFLExporter.label_exports(None, post_processor, settings)
    assert post_processor.thresholds == (settings.image_threshold, settings.pixel_threshold)
    tiny_model.references.set("gear", CategoryReferences([], {}, image_threshold=0.3, pixel_threshold=0.7))
    BayesPFLExporter.label_exports(tiny_model, post_processor, settings)
    assert tiny_model.default_class_name == "gear"
    assert post_processor.thresholds == pytest.approx((0.3, 0.7))
    assert post_processor.review_threshold is None


def test_the_exporter_refuses_a_class_name_without_calibrated_thresholds(tiny_model):
    settings = BayesPFLSettings(false_alarm_rate=0.1, class_name="bolt")
    module = SimpleNamespace(model=tiny_model, post_processor=ProbabilityPostProcessor(), pre_processor=None)
    with pytest.raises(ValueError, match="no calibrated image threshold for class name 'bolt'"):
        BayesPFLExporter.check(module, settings)
    tiny_model.default_class_name = "bolt"
    with pytest.raises(RuntimeError, match="no calibrated image threshold"):
        BayesPFLExporter.forward(module, settings, torch.zeros(1, 3, 64, 64))


def test_a_checkpoint_loaded_alone_is_not_held_to_a_calibration_it_will_not_run(tiny_clip_path, tmp_path):
    """``anomalib export --ckpt_path`` loads alone: it calibrates nothing, so calibration is checked only in setup."""
    module = tiny_module(tiny_clip_path)
    assert not module.model.is_trained  # built now: its head goes into the checkpoint
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}  # fmt: skip
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = BayesPFL.load_from_checkpoint(tmp_path / "model.ckpt", false_alarm_rate=0.01)  # needs 99 images to run
    assert loaded.settings.false_alarm_rate == 0.01
    with pytest.raises(ValueError, match="needs at least 99 calibration images"):
        loaded.options.check()
