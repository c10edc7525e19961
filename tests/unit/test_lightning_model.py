# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The Lightning module: defaults, learning type, class names, input checks, optimisers and schedule."""

import inspect
from types import SimpleNamespace

import pytest
import torch
from anomalib import LearningType
from anomalib.data import ImageBatch
from anomalib.metrics import AUROC, Evaluator

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.data.validation import DataCheck
from anomalib_bayes_pfl.settings import BayesPFLSettings, is_unset

from ..helpers import tiny_module


def test_scoring_options_are_unset_and_resolve_to_the_paper():
    """Unset options are left to a checkpoint; without one they take the paper's values, and nothing is built."""
    parameters = inspect.signature(BayesPFL).parameters
    assert all(is_unset(name, parameters[name].default) for name in BayesPFLSettings.option_names())
    module = BayesPFL()  # the default ViT-L-14-336 would need a download: nothing may be built yet
    assert not module.is_built
    assert module.settings == BayesPFLSettings()
    assert module.settings.given == frozenset()
    assert module.pre_processor.transform.transforms[0].size == [518, 518]
    # The authors' values (their train.py / test.py flags and the paper's Sec. 4.1), written out, not read from code.
    settings = module.settings
    assert (settings.clip_model, settings.clip_pretrained, settings.clip_quick_gelu) == (
        "ViT-L-14-336",
        "openai",
        False,
    )
    assert (settings.image_size, settings.tap_layers) == (518, None)  # None: the quarter points, 6, 12, 18, 24
    assert (settings.num_prompts, settings.prompt_context_len, settings.prompt_state_len) == (3, 5, 5)
    assert (settings.num_flow_steps, settings.num_samples) == (10, 10)
    assert (settings.smoothing_sigma, settings.eval_seed) == (8.0, 333)
    assert (settings.image_specific_distribution, settings.image_agnostic_distribution) == (True, True)
    assert settings.residual_attention is True
    assert (settings.image_threshold, settings.pixel_threshold) == (0.5, 0.5)
    assert (settings.k_shot, settings.false_alarm_rate, settings.review_fraction) == (0, None, 0.0)


def test_untrained_head_is_one_class(tiny_clip_path):
    """The Engine trains ONE_CLASS models and skips training for ZERO_SHOT ones (tests/integration covers both)."""
    module = tiny_module(tiny_clip_path)
    assert module.learning_type == LearningType.ONE_CLASS
    assert module.trainer_arguments == {"max_epochs": 25, "limit_val_batches": 0, "num_sanity_val_steps": 0}


def test_pre_processor_resizes_and_normalises(tiny_clip_path):
    module = tiny_module(tiny_clip_path)
    image = torch.full((1, 3, 100, 80), 0.5)
    out = module.pre_processor.transform(image)
    assert out.shape == (1, 3, 64, 64)
    torch.testing.assert_close(
        out[0, :, 0, 0],
        (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )
    ramp = torch.linspace(0, 1, 100).view(1, 1, 1, 100).expand(1, 3, 80, 100)  # non-square, aspect not kept
    resized = module.pre_processor.transform(ramp)
    expected = torch.nn.functional.interpolate(ramp, size=(64, 64), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(resized[0, 0], (expected[0, 0] - 0.48145466) / 0.26862954, rtol=0, atol=1e-4)


def test_one_rule_names_category_and_class_name_of_every_image(tiny_clip_path, monkeypatch):
    """Loose files and a datamodule's images get their category by the same rule; the prompts say the same word."""
    module = tiny_module(tiny_clip_path)
    paths = ["d/MVTecAD/metal_nut/test/scratch/000.png", "d/visa_pytorch/pcb1/test/bad/001.JPG", "upload/x.png"]
    batch = ImageBatch(image=torch.zeros(3, 3, 64, 64), image_path=paths)
    loose = module.image_categories(batch.image_path, 3)  # anomalib predict on files: no datamodule
    assert [name.category for name in loose] == ["metal_nut", "pcb1", "object"]
    assert module.class_names_of(batch.image_path) == ["metal_nut", "pcb1", "object"]
    assert [name.dataset for name in loose] == ["", "", ""]
    monkeypatch.setattr(BayesPFL, "trainer", SimpleNamespace(datamodule=SimpleNamespace(category="widget")))
    module._trainer = object()
    assert module.class_names_of(batch.image_path) == ["metal_nut", "pcb1", "widget"]
    lookup = {paths[2]: "gear"}.get
    monkeypatch.setattr(
        BayesPFL, "trainer", SimpleNamespace(datamodule=SimpleNamespace(category="", class_name_of=lookup))
    )
    assert module.class_names_of(batch.image_path) == ["metal_nut", "pcb1", "gear"]
    btech = ImageBatch(image=torch.zeros(2, 3, 64, 64), image_path=["BTech/01/test/ko/0.bmp", "BTech/02/test/ok/1.bmp"])
    monkeypatch.setattr(BayesPFL, "trainer", SimpleNamespace(datamodule=SimpleNamespace(name="BTech", category="01")))
    names = module.image_categories(btech.image_path, 2)
    assert [(name.dataset, name.category, name.class_name) for name in names] == [
        ("BTech", "metal1", "metal1"),  # anomalib's BTech, by the authors' names, in the table as in the prompts
        ("BTech", "wood", "wood"),
    ]
    module.options.settings = BayesPFLSettings(class_name="gear box")
    module._trainer = None
    names = module.image_categories(batch.image_path, 3)
    assert module.class_names_of(batch.image_path) == ["gear box"] * 3
    assert [name.category for name in names] == ["metal_nut", "pcb1", "gear box"]  # the category stays the data's


def test_nan_images_are_named_by_the_data_check_of_every_stage(tiny_clip_path):
    module = tiny_module(tiny_clip_path)
    callbacks = module.configure_callbacks()
    check = callbacks[0]
    assert isinstance(check, DataCheck)  # before the pre-processor and every other callback
    image = torch.zeros(2, 3, 64, 64)
    image[1, 0, 3, 3] = float("nan")
    batch = ImageBatch(image=image, image_path=["a/good.png", "a/broken.png"])
    for hook in ("on_train_batch_start", "on_validation_batch_start", "on_test_batch_start", "on_predict_batch_start"):
        with pytest.raises(ValueError, match=r"NaN or Inf.*broken.png"):
            getattr(check, hook)(None, module, batch, 0)
    check.on_test_batch_start(None, module, ImageBatch(image=image[:1], image_path=["a/good.png"]), 0)


def test_epochs_must_be_positive(tiny_clip_path):
    with pytest.raises(ValueError, match="stage_one_epochs=0, stage_two_epochs=0: both >= 0, one positive"):
        tiny_module(tiny_clip_path, stage_one_epochs=0, stage_two_epochs=0)


def test_optimisers_and_warmup_cosine(tiny_clip_path, monkeypatch):
    module = tiny_module(tiny_clip_path, stage_one_epochs=4, stage_two_epochs=1)
    monkeypatch.setattr(BayesPFL, "trainer", SimpleNamespace(estimated_stepping_batches=50))
    (stage_one, stage_two), (schedule,) = module.configure_optimizers()
    assert [group["initial_lr"] for group in stage_one.param_groups] == [1e-3, 1e-2, 1e-3, 1e-4]
    groups = module.model.parameter_groups()
    for group, name in zip(stage_one.param_groups, ("prompts", "temperatures", "flows", "other"), strict=True):
        assert [id(p) for p in group["params"]] == [id(p) for p in groups[name]], name
    assert [group["lr"] for group in stage_one.param_groups] == [0.0, 0.0, 0.0, 0.0]  # warm-up starts at 0
    assert stage_one.defaults["betas"] == (0.5, 0.999)
    assert stage_two.param_groups[0]["lr"] == 1e-4
    assert len(stage_two.param_groups[0]["params"]) == len(groups["classifier"])
    scheduler = schedule["scheduler"]
    assert schedule["interval"] == "step"
    factors = []
    for _ in range(50):  # warm-up over 10% of all 50 steps, then a cosine that ends with the last epoch
        stage_one.step()
        scheduler.step()
        factors.append(scheduler.get_last_lr()[0] / 1e-3)
    assert factors[2] == pytest.approx(0.6)
    assert max(factors) == pytest.approx(1.0)
    assert factors[39] > 0.05  # still training when stage 2 starts after 40 steps, as in the authors' schedule
    assert factors[-1] == pytest.approx(0.0, abs=1e-9)


def test_command_line_seed_is_applied_and_true_draws_a_new_one(monkeypatch):
    """anomalib's CLI parses --seed_everything but never applies it; BayesPFL does, before building its head."""
    from lightning.pytorch.cli import SaveConfigCallback

    from anomalib_bayes_pfl.adapter.command_line import seed_from_command_line

    def initial_seed_after(seed) -> int:
        callback = SaveConfigCallback.__new__(SaveConfigCallback)
        callback.config = {"seed_everything": seed}
        seed_from_command_line(SimpleNamespace(callbacks=[callback]))
        return torch.initial_seed()

    assert initial_seed_after(42) == initial_seed_after(42) == 42
    drawn = {initial_seed_after(True) for _ in range(3)}
    assert len(drawn) == 3  # a random seed each time, never a fixed one
    torch.manual_seed(5)
    assert initial_seed_after(False) == 5  # left alone


def test_validation_scores_only_what_something_reads(tiny_clip_path, monkeypatch):
    """A trained model is validated only so that the Engine writes its checkpoint: no image is scored, and the
    post-processor takes no statistics of the validation (test) images; validation metrics get scores."""
    module = tiny_module(tiny_clip_path)
    module._build()
    scored = []
    monkeypatch.setattr(module.model, "score", lambda *args, **kwargs: scored.append(args) or pytest.fail("scored"))
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64), gt_label=torch.tensor([0, 1]), image_path=["a.png", "b.png"])
    assert module.validation_step(batch) is batch
    assert batch.pred_score is None
    assert not scored
    # The post-processor takes no statistics of validation images, scored or not (anomalib's takes F1 thresholds).
    scored_batch = ImageBatch(image=batch.image, gt_label=batch.gt_label, pred_score=torch.tensor([0.2, 0.9]))
    for outputs in (batch, scored_batch):
        module.post_processor.on_validation_batch_end(None, module, outputs, outputs, 0)
    module.post_processor.on_validation_epoch_end(None, module)
    assert not module.post_processor._image_threshold_metric.update_called
    assert torch.isnan(module.post_processor._image_threshold)

    monkeypatch.undo()
    module.evaluator = Evaluator(val_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")])
    output = module.validation_step(batch)
    assert output.pred_score.shape == (2,)
    assert output.pred_label is not None
