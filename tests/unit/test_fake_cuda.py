# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Each step path of the model on a ``cuda`` device: any CPU tensor mixed into it fails the test.

Without a GPU the device is FakeTensorMode's (``tests/fake_cuda.py``); with ``BAYES_PFL_REAL_CUDA=1`` it is the real
one (``python benchmarks/gpu_check.py`` runs them so). Code that reads values cannot run on fake tensors: each place
says where it stops, and the part after the read is run from its inputs on the fake device. The last tests prove that
the harness fails when a CPU tensor, a CPU generator or a CPU parameter gets into a cuda path.
"""

import contextlib
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from anomalib.metrics import AUROC, Evaluator
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image

from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.adapter import lightning_model
from anomalib_bayes_pfl.calibration import preparation, prepare_references, reference_settings, thresholds_of
from anomalib_bayes_pfl.calibration.post_processor import ProbabilityPostProcessor
from anomalib_bayes_pfl.data import DataCheck, synthetic_anomalies
from anomalib_bayes_pfl.deploy.resize import resize_by_matrices
from anomalib_bayes_pfl.model import BayesPFLModel, load_clip, training
from anomalib_bayes_pfl.model.references import CategoryReferences, memory_tokens

from ..fake_cuda import CudaHarness
from ..helpers import TINY_CLIP, TINY_IMAGE_SIZE, tiny_config, tiny_module

pytestmark = pytest.mark.fake_cuda

# The categories of the test batches (by the MVTec AD layout of their paths), and "object" for loose files.
CATEGORIES = ("tile_c", "bottle")
PATHS = ("parts/tile_c/test/good/000.png", "parts/bottle/test/crack/001.png")


@pytest.fixture
def cuda() -> CudaHarness:
    return CudaHarness()


def step_precision(precision: str) -> contextlib.AbstractContextManager:
    """The autocast that Lightning's ``--trainer.precision`` wraps each step in (none for ``32``)."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cuda_module(cuda: CudaHarness, references: dict[str, float] | None = None, **options) -> BayesPFL:
    """The tiny module built on the CPU, its tokeniser warmed for the test's class names, then moved to cuda.

    Tokenising finds the end-of-text token by value: fake tensors cannot, so every name is tokenised first.
    ``references``: ``k_shot`` and thresholds that each category's references get (:func:`set_references`).
    """
    torch.manual_seed(0)
    module = tiny_module(**options)
    module.model.tokenizer([*CATEGORIES, "object"])
    if references is not None:
        set_references(module, **references)
    with cuda:
        return cuda.to_cuda(module)


def set_references(module: BayesPFL, k_shot: int = 0, **thresholds: float) -> None:
    """Give each category references made on the CPU (as a loaded checkpoint has them) and calibrated thresholds.

    The memory is of random images: only devices matter here. ``thresholds`` differ per category (+0.1 for bottle).
    """
    model = module.model
    for offset, category in enumerate(CATEGORIES):
        tokens = []
        if k_shot:
            with torch.no_grad():
                images = torch.rand(k_shot, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
                tokens = memory_tokens(model.encode_images(images).patch_tokens)
        values = {name: value + 0.1 * offset for name, value in thresholds.items()}
        model.references.set(category, CategoryReferences(tokens, reference_settings(module.settings), **values))


class ManualOptimizer:
    """What Lightning's optimizer wrapper gives a manual-optimisation step: the optimizer, ``zero_grad``, ``step``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.optimizer.step()


def attach_optimisers(module: BayesPFL, cuda: CudaHarness, monkeypatch: pytest.MonkeyPatch) -> list[ManualOptimizer]:
    """Give ``module`` what Lightning gives it for a step without a trainer: optimisers, schedule and backward.

    On fake tensors, two reads of values in the step are made on the CPU: the draw of the prompt set
    (``int(torch.randint(...))``), and which masks are known (``known_masks`` reads ``bool(known.all())``; it runs
    up to that read, then answers "all", true of the harness's batches).
    """
    optimizers, (schedule,) = module.stages.optimizers(module.model, 10)
    wrapped = [ManualOptimizer(optimizer) for optimizer in optimizers]
    monkeypatch.setattr(module, "optimizers", lambda: wrapped)
    monkeypatch.setattr(module, "lr_schedulers", lambda: schedule["scheduler"])
    monkeypatch.setattr(module, "manual_backward", cuda.backward)
    if not cuda.real:

        def known_masks(batch: ImageBatch) -> None:
            cuda.until_value_read(lambda: synthetic_anomalies.known_masks(batch), "synthetic_anomalies.py")

        def training_loss(*args, **kwargs):
            with cuda.on_cpu():
                prompt_index = int(torch.randint(module.model.config.prompt.num_prompts, (1,)))
            return training.training_loss(*args, prompt_index=prompt_index, **kwargs)

        monkeypatch.setattr(training, "known_masks", known_masks)
        monkeypatch.setattr(lightning_model, "training_loss", training_loss)
    return wrapped


def run_training_step(module: BayesPFL, cuda: CudaHarness, precision: str = "32") -> dict:
    with cuda, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no trainer to log to
        batch = cuda.image_batch(paths=PATHS)
        with step_precision(precision):
            return module.training_step(batch)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_stage_one_training_step(cuda, monkeypatch, precision):
    """Stage 1: loss on cuda, a gradient on cuda for every trainable parameter, Adam's moments on cuda."""
    module = cuda_module(cuda).train()
    optimizers = attach_optimisers(module, cuda, monkeypatch)
    output = run_training_step(module, cuda, precision)
    cuda.assert_on_cuda(output["loss"])
    assert output["loss"].dtype == torch.float32  # the head computes in float32 under any autocast
    trainable = [parameter for parameter in module.model.parameters() if parameter.requires_grad]
    cuda.assert_on_cuda(*(parameter.grad for parameter in trainable))
    moments = [state["exp_avg"] for state in optimizers[0].optimizer.state.values()]
    assert len(moments) == len(trainable)
    cuda.assert_on_cuda(*moments)
    assert not optimizers[1].optimizer.state  # stage 2's optimiser is not stepped in stage 1


def test_stage_two_training_step(cuda, monkeypatch):
    """Stage 2 (the image head's classifier over pooled patches): loss on cuda, the classifier's moments on cuda."""
    module = cuda_module(cuda, stage_one_epochs=0, stage_two_epochs=1).train()
    optimizers = attach_optimisers(module, cuda, monkeypatch)
    module.on_train_epoch_start()  # epoch 0 is in stage 2
    assert module.model.image_head_stage == 2
    output = run_training_step(module, cuda)
    cuda.assert_on_cuda(output["loss"])
    classifier = module.model.parameter_groups()["classifier"]
    cuda.assert_on_cuda(*(parameter.grad for parameter in classifier))
    moments = [optimizers[1].optimizer.state[parameter]["exp_avg"] for parameter in classifier]
    cuda.assert_on_cuda(*moments)


@pytest.mark.parametrize(("clip_precision", "precision"), [("fp32", "32"), ("bf16", "32"), ("fp32", "bf16-mixed")])
def test_validation_step(cuda, clip_precision, precision):
    """Zero-shot scores and labels on cuda, in float32 whether the CLIP or the whole step runs under autocast.

    Validation scores only where something reads the scores: here validation metrics.
    """
    evaluator = Evaluator(val_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")])
    module = cuda_module(cuda, clip_precision=clip_precision, evaluator=evaluator).eval()
    with cuda:
        batch = cuda.image_batch(paths=PATHS)
        with step_precision(precision):
            output = module.validation_step(batch)
    cuda.assert_on_cuda(output.pred_score, output.anomaly_map, output.pred_label, output.pred_mask)
    assert output.pred_score.dtype == output.anomaly_map.dtype == torch.float32
    assert output.uncertainty is None


def test_few_shot_test_step_with_calibrated_thresholds(cuda):
    """k_shot > 0: each category's memory (kept on the CPU, as checkpoints hold it) is scored on cuda; thresholds
    calibrated per category label the images there."""
    references = {"k_shot": 1, "image_threshold": 0.3, "pixel_threshold": 0.6}
    module = cuda_module(cuda, references, k_shot=1, false_alarm_rate=0.2, calibration_images=4)
    assert module.model.few_shot
    with cuda:
        output = module.eval().test_step(cuda.image_batch(paths=PATHS))
    cuda.assert_on_cuda(output.pred_score, output.anomaly_map, output.pred_label, output.pred_mask)
    cuda.assert_on_cuda(output.uncertainty, output.uncertainty_map)
    memory = module.model.references._on_device
    assert {device for _, device in memory} == {cuda.device}
    cuda.assert_on_cuda(*(tokens for layers in memory.values() for tokens in layers))
    assert output.image_threshold.shape == output.pixel_threshold.shape == (2,)
    if cuda.real:  # values: each image's own category's thresholds
        assert output.image_threshold.tolist() == pytest.approx([0.3, 0.4])


@pytest.mark.parametrize("measure", ["std", "mutual_information"])
def test_uncertainty_and_review(cuda, measure):
    """Uncertainty, its map and the review mark on cuda.

    On fake tensors too the whole test step runs: which categories lack a review threshold is read from the stored
    thresholds, not from tensors. The mark is also checked from the same inputs.
    """
    references = {"review_threshold": 0.01}
    module = cuda_module(cuda, references, uncertainty=measure, review_rate=0.5, calibration_images=4)
    with cuda:
        batch = cuda.image_batch(paths=PATHS)
        scores = module.eval().model.score(batch.image, list(CATEGORIES), uncertainty=measure)
        cuda.assert_on_cuda(scores.uncertainty, scores.uncertainty_map)
        assert scores.uncertainty_map.shape == scores.anomaly_map.shape
        output = module.test_step(batch)
        cuda.assert_on_cuda(output.needs_review, output.uncertainty, output.uncertainty_map)
        thresholds = thresholds_of(module.model.references, module.settings, list(CATEGORIES))
        needs_review = ProbabilityPostProcessor.review(scores.uncertainty, thresholds.review)
    cuda.assert_on_cuda(needs_review)
    assert needs_review.dtype == torch.bool


def test_predict_step(cuda):
    """Loose files (class name ``object``, no labels) scored and labelled on cuda."""
    module = cuda_module(cuda).eval()
    with cuda:
        batch = ImageBatch(
            image=torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, device=cuda.device),
            image_path=["loose_a.png", "loose_b.png"],
        )
        output = module.predict_step(batch)
    assert output.class_name == ["object", "object"]
    cuda.assert_on_cuda(output.pred_score, output.anomaly_map, output.pred_label, output.pred_mask)
    cuda.assert_on_cuda(output.uncertainty, output.uncertainty_map)


@pytest.mark.parametrize("export_uncertainty", [False, True])
@pytest.mark.parametrize("trace", ["eager", "exporting"])
def test_exported_forward(cuda, monkeypatch, export_uncertainty, trace):
    """What the torch, ONNX and OpenVINO exports trace: ``forward`` on raw images of another size, pre- and
    post-processing included, with the ONNX resize by matrices; ``exporting`` takes the branches a trace takes."""
    options = {"export_uncertainty": export_uncertainty, "review_rate": 0.5, "calibration_images": 4, "k_shot": 1}
    module = cuda_module(cuda, {"k_shot": 1, "review_threshold": 0.01}, **options)
    module.model.references.categories.pop("bottle")  # an export scores one class name: the one stored
    module.eval().apply_export_thresholds()
    if trace == "exporting":
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    with cuda, resize_by_matrices(module.pre_processor), torch.no_grad():
        output = module(torch.rand(2, 3, 80, 96, device=cuda.device))
    cuda.assert_on_cuda(output.pred_score, output.pred_label, output.anomaly_map, output.pred_mask)
    assert output.anomaly_map.shape == (2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    if export_uncertainty:
        cuda.assert_on_cuda(output.uncertainty, output.uncertainty_map, output.needs_review)


def test_paper_score_and_image_head_stage_two(cuda):
    """The authors' map score (a top-k of each unsmoothed map) and the stage-2 image head, scored on cuda."""
    module = cuda_module(cuda, image_score="paper").eval()
    module.model.image_head_stage = 2
    with cuda:
        output = module.test_step(cuda.image_batch(paths=PATHS))
    cuda.assert_on_cuda(output.paper_map_score, output.pred_score)
    assert output.paper_map_score.shape == (2,)


def write_normal_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03}.png")
    return folder


@pytest.mark.parametrize("calibrate", [False, True], ids=["references", "calibration"])
def test_few_shot_reference_extraction(cuda, monkeypatch, tmp_path, calibrate):
    """References drawn from a folder, encoded on cuda and kept on the CPU; calibration scores on cuda.

    On fake tensors, reading and decoding the files and drawing them (a seeded permutation read as a list) run on
    the CPU; the calibration stops where it sorts the scores into a threshold (``conformal.py``).
    """
    source = write_normal_images(tmp_path / "good", 6)
    options = {"false_alarm_rate": 0.25, "calibration_images": 3} if calibrate else {}
    module = cuda_module(cuda, k_shot=2, few_shot_source=str(source), **options)
    if not cuda.real:
        for name in ("read_image", "draw"):
            function = getattr(preparation, name)
            monkeypatch.setattr(preparation, name, lambda *args, f=function, **kwargs: on_cpu(cuda, f, args, kwargs))

    def prepare() -> None:
        prepare_references(module.model, module.settings, [PATHS[0]], class_names_of=module.class_names_of,
                           transform=module.pre_processor.transform, datamodule=None, folder=None)  # fmt: skip

    with cuda:
        if calibrate:
            cuda.until_value_read(prepare, "conformal.py")
        else:
            prepare()
        stored = module.model.references.get("tile_c")
        assert len(stored.reference_images) == 2
        assert all(tokens.device.type == "cpu" and tokens.dtype == torch.float16 for tokens in stored.patch_tokens)
        scores = module.eval().model.score(torch.rand(1, 3, 64, 64, device=cuda.device), ["tile_c"])
    cuda.assert_on_cuda(scores.pred_score, scores.anomaly_map)


def on_cpu(cuda: CudaHarness, function, args: tuple, kwargs: dict):
    with cuda.on_cpu():
        return function(*args, **kwargs)


def test_training_batch_callbacks_on_a_cuda_batch(cuda):
    """The data check and the Perlin anomalies work on the batch's device: images, masks and labels stay on cuda.

    On fake tensors the data check stops where it asks whether any pixel is NaN, and anomalib's generator at its first
    draw read as a number; the rest of the anomalies runs on stand-in outputs of the generator.
    """
    with cuda:
        batch = cuda.image_batch()
        cuda.until_value_read(lambda: DataCheck().on_train_batch_start(None, None, batch, 0), "validation.py")
        generator = PerlinAnomalyGenerator(probability=1.0)
        cuda.until_value_read(lambda: synthetic_anomalies.add_synthetic_anomalies(batch, generator), "perlin.py")
        if not cuda.real:
            masks = torch.ones(2, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, device=cuda.device)
            synthetic_anomalies.add_synthetic_anomalies(batch, lambda images: (images, masks))
    cuda.assert_on_cuda(batch.image, batch.gt_mask, batch.gt_label)


def fitting_trainer() -> SimpleNamespace:
    """What ``configure_model`` reads of a fitting trainer (outside the command line: no seed option)."""
    return SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), callbacks=[])


def test_head_built_under_the_default_device_lightning_sets(cuda, monkeypatch):
    """A fitting run builds the model in ``configure_model``, which Lightning calls with its root device as the default
    device (``Strategy.tensor_init_context``): tensors made there without a device are CUDA tensors.

    The evaluation noise is drawn by a CPU generator: it must draw on the CPU (a GPU refuses a CPU generator for a CUDA
    draw, :class:`GeneratorDeviceCheck` too), which also gives the same noise on every device. On fake tensors the
    head is constructed under the default device from a CLIP built on the CPU (open_clip's ``create_model`` moves it
    there); ``Module.to`` cannot move fake parameters (torch swaps them, and fake tensors hold weak references), so
    the whole hook runs on the real device only.
    """
    clip = load_clip(str(TINY_CLIP), pretrained=None)
    expected = BayesPFLModel(tiny_config(), clip)
    if not cuda.real:  # torch's truncated normal rejects draws by their values: the prompts keep their empty values
        monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda tensor, *args, **kwargs: tensor)
    with cuda, torch.device(cuda.device):
        model = BayesPFLModel(tiny_config(), clip)
    assert model.pixel_logit_scale.device == cuda.device  # the default device at work
    noises = ("eval_context_noise", "eval_normal_noise", "eval_abnormal_noise")
    if cuda.real:
        for name in noises:
            torch.testing.assert_close(getattr(model, name).cpu(), getattr(expected, name), rtol=0, atol=0)
        module = tiny_module()
        monkeypatch.setattr(module, "_trainer", fitting_trainer())
        with torch.device(cuda.device):
            module.configure_model()
        assert module.is_built


def test_clip_built_the_same_under_any_default_device_and_cuda_generators_left_alone(cuda, monkeypatch):
    """``load_clip`` draws random weights from a fixed seed so that a checkpoint's CLIP is rebuilt the same on load: on
    the CPU, whatever the default device (``configure_model``'s is ``cuda``), and without reseeding the CUDA generators,
    which draw the training noise under the run's own seed.

    On fake tensors ``meta`` stands in for the default device: fake parameters cannot be moved to the CPU (see above),
    and a CLIP drawn on ``meta`` has no values to move there either.
    """
    expected = load_clip(str(TINY_CLIP), pretrained=None).state_dict()
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    cuda_state = torch.cuda.get_rng_state() if cuda.real else None
    with torch.device(cuda.device if cuda.real else "meta"):
        clip = load_clip(str(TINY_CLIP), pretrained=None)
    assert reseeded == []
    if cuda_state is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    for name, value in clip.state_dict().items():
        assert value.device.type == "cpu", name
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("mix", ["buffer", "generator", "parameter_gradient"])
def test_a_cpu_tensor_in_a_cuda_path_fails(cuda, mix):
    """The harness fails when it should: a buffer put back on the CPU, a CPU generator drawing on cuda (which fake
    tensors alone would accept), and a parameter left on the CPU, whose gradient then lands there."""
    module = cuda_module(cuda).eval()
    with cuda:
        if mix == "buffer":
            module.model.eval_context_noise = torch.zeros_like(module.model.eval_context_noise, device="cpu")
            with cuda.raises_mismatch():
                module.model.score(torch.rand(1, 3, 64, 64, device=cuda.device))
        elif mix == "generator":
            with cuda.raises_mismatch():
                torch.randn(3, device=cuda.device, generator=torch.Generator())
        else:
            on_cpu = torch.nn.Parameter(torch.ones(3, device="cpu"))
            loss = (on_cpu.to(cuda.device) * torch.rand(3, device=cuda.device)).sum()
            with pytest.raises(AssertionError):  # the walk of the graph, or the gradient's device on a GPU
                backward_then_check(cuda, loss, on_cpu)


def backward_then_check(cuda: CudaHarness, loss: torch.Tensor, parameter: torch.nn.Parameter) -> None:
    cuda.backward(loss)
    cuda.assert_on_cuda(parameter.grad)
