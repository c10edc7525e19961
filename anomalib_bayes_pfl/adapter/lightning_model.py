# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Bayes-PFL as an anomalib model: the Lightning hooks, which hand each job to the floor below that does it.

Paper: Qin et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025, arXiv 2503.10080.
It holds its options (``options.py``), what it tells a command-line user (``command_line.py``) and its exporter
(``deploy/export.py``); ``model/`` trains and scores, ``calibration/`` and ``reporting/`` are its callbacks.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch, InferenceBatch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, OpenUnitInterval, PositiveInt
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_bayes_pfl import reporting
from anomalib_bayes_pfl.batch import BayesPFLBatch, BayesPFLInferenceBatch
from anomalib_bayes_pfl.calibration import ProbabilityPostProcessor
from anomalib_bayes_pfl.data import ImageCategory, SyntheticAnomalies
from anomalib_bayes_pfl.deploy import BayesPFLExporter
from anomalib_bayes_pfl.model import BayesPFLLoss, BayesPFLModel
from anomalib_bayes_pfl.model.checkpoint_files import keep_head_only, put_back_clip
from anomalib_bayes_pfl.model.training import TrainingStages, training_loss
from anomalib_bayes_pfl.model.uncertainty import UncertaintyMeasure
from anomalib_bayes_pfl.settings import AUTO, BayesPFLSettings, ReviewFraction, plain_number

from . import command_line
from .building import build_callbacks, clip_pre_processor, set_image_size
from .evaluation import score_and_label
from .options import ResolvedOptions

if TYPE_CHECKING:
    import openvino as ov


class BayesPFL(AnomalibModule):
    """Bayes-PFL: zero-shot anomaly detection with prompt flows over a frozen CLIP.

    Train once on an annotated auxiliary dataset, then detect and segment defects in unseen categories. Every scoring
    option (``clip_model`` to ``export_uncertainty``, but the training ones) defaults to unset: a checkpoint that is
    loaded (``--ckpt_path`` or ``prompt_weights``) supplies it, otherwise the paper's value in ``settings.py`` applies.

    Args:
        clip_model: open_clip model name (``ViT-L-14-336``), ``bayes-pfl-tiny``, or an open_clip model-config JSON.
        clip_pretrained: open_clip tag (``openai``), local CLIP checkpoint, or ``None`` for random weights.
        clip_quick_gelu: Force QuickGELU towers; the authors' heads were trained with exact GELU.
        clip_precision: Autocast precision of the frozen CLIP (``fp32``: the trainer's); the head stays fp32.
        image_size: Side of the square model input (518 in the paper).
        tap_layers: 1-based vision blocks to tap; ``None``: the quarter points of the depth (6, 12, 18, 24).
        num_prompts: B, prompt sets in the bank.
        prompt_context_len: P, context vectors per prompt.
        prompt_state_len: Q, state vectors per prompt.
        num_flow_steps: K, planar steps per distribution (0: plain Gaussians).
        num_samples: R, Monte-Carlo rounds per image at evaluation.
        image_specific_distribution: Shift context vectors by image-specific samples (ablation switch).
        image_agnostic_distribution: Shift state vectors by image-agnostic samples (ablation switch).
        residual_attention: Use the residual cross-modal attention (ablation switch).
        orthogonality_loss: Add the authors' prompt orthogonality loss.
        iad_log_det_per_batch: Keep the authors' division of the image-agnostic log-determinant by the batch size.
        kl_weight: Weight of the KL term.
        smoothing_sigma: Gaussian sigma of the anomaly map in input pixels (0: none).
        eval_seed: Seed of the evaluation noise, and of the draw of few-shot images.
        stage_one_epochs: Epochs of stage 1 (all losses, all head parameters).
        stage_two_epochs: Epochs of stage 2 (classification loss, image classifier only); 0 skips stage 2.
        prompt_learning_rate: Learning rate of the prompt vectors.
        flow_learning_rate: Learning rate of the flow parameters and image-agnostic inputs.
        temperature_learning_rate: Learning rate of the two temperatures.
        learning_rate: Learning rate of every other head parameter, and of stage 2.
        warmup_ratio: Fraction of the training steps with a linear warm-up before the cosine decay.
        prompt_weights: Trained head to load (an ``anomalib train`` checkpoint, or the authors' released ones).
        class_name: The word in every image's prompts; ``None``: each image's category (``data/class_names.py``).
        synthetic_anomalies: Share of normal training images replaced by Perlin anomalies; ``None``: 0.5 only for
            training data without anomalous images, with a warning; 0 refuses such data.
        image_score: ``paper`` adds the authors' transductive fused score to the per-category table.
        image_threshold: Images whose abnormal probability exceeds it are labelled anomalous.
        pixel_threshold: The same for anomaly-map pixels.
        k_shot: Normal reference images per category, fused with the prompt scores as WinCLIP+ does (0: zero-shot).
        few_shot_source: Folder of normal images for references and calibration; ``None``: the training split.
        false_alarm_rate: Calibrate each category's thresholds for this share of normal images labelled anomalous.
        false_alarm_confidence: Hold the calibrated rates (false alarms, review) for the thresholds shipped with this
            probability over the draw of calibration images; ``None``: on average over draws.
        calibration_images: Normal images per category that calibrate the thresholds.
        uncertainty: How the B * R prompt samples' disagreement is measured: ``std`` or ``mutual_information``.
        review_fraction: Mark at most this share of each category's images, the most uncertain, ``needs_review``.
        review_rate: Mark each image ``needs_review`` whose uncertainty exceeds its category's threshold, calibrated
            so that this share of normal parts is sent to a person.
        export_uncertainty: Exported models also return the uncertainty, its map and (with ``review_rate``) the mark.
        pre_processor: ``True``: bicubic resize to ``image_size`` and CLIP's normalisation.
        post_processor: ``True``: labels from the probability thresholds.
        evaluator: ``True``: image AUROC / AUPR / F1Max and pixel AUROC / AUPRO.
        visualizer: ``True``: anomalib's image visualizer with each image's uncertainty map beside it.
    """

    def __init__(
        self,
        clip_model: str | None = None,
        clip_pretrained: str | None = AUTO,
        clip_quick_gelu: bool | None = None,
        clip_precision: Literal["fp32", "bf16", "fp16"] | None = None,
        image_size: PositiveInt | None = None,
        tap_layers: Sequence[int] | None = None,
        num_prompts: int | None = None,
        prompt_context_len: int | None = None,
        prompt_state_len: int | None = None,
        num_flow_steps: int | None = None,
        num_samples: int | None = None,
        image_specific_distribution: bool | None = None,
        image_agnostic_distribution: bool | None = None,
        residual_attention: bool | None = None,
        orthogonality_loss: bool = True,
        iad_log_det_per_batch: bool = True,
        kl_weight: float = 0.01,
        smoothing_sigma: float | None = None,
        eval_seed: int | None = None,
        stage_one_epochs: int = 20,
        stage_two_epochs: int = 5,
        prompt_learning_rate: float = 1e-3,
        flow_learning_rate: float = 1e-3,
        temperature_learning_rate: float = 1e-2,
        learning_rate: float = 1e-4,
        warmup_ratio: float = 0.1,
        prompt_weights: str | None = None,
        class_name: str | None = None,
        synthetic_anomalies: ClosedUnitInterval | None = None,
        image_score: Literal["probability", "paper"] | None = None,
        image_threshold: OpenUnitInterval | None = None,
        pixel_threshold: OpenUnitInterval | None = None,
        k_shot: NonNegativeInt | None = None,
        few_shot_source: str | None = None,
        false_alarm_rate: OpenUnitInterval | None = None,
        false_alarm_confidence: OpenUnitInterval | None = None,
        calibration_images: PositiveInt | None = None,
        uncertainty: UncertaintyMeasure | None = None,
        review_fraction: ReviewFraction | None = None,
        review_rate: OpenUnitInterval | None = None,
        export_uncertainty: bool | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        arguments = {name: plain_number(value) for name, value in locals().items() if name != "self"}
        synthetic_anomalies = arguments["synthetic_anomalies"]  # plain numbers before anomalib saves the arguments
        given = {name: arguments[name] for name in BayesPFLSettings.option_names()}
        options = ResolvedOptions(given, iad_log_det_per_batch=iad_log_det_per_batch, prompt_weights=prompt_weights)
        self._owns_pre_processor = pre_processor is True
        settings = options.settings
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((settings.image_size,) * 2)
        if post_processor is True:
            post_processor = ProbabilityPostProcessor(settings.image_threshold, settings.pixel_threshold)
        super().__init__(pre_processor, post_processor, evaluator, visualizer)
        command_line.skip_validation_for_own_thresholds()  # the Engine's validation before test / predict: nothing here
        learning_rates = {"prompts": prompt_learning_rate, "temperatures": temperature_learning_rate,
                          "flows": flow_learning_rate, "other": learning_rate}  # fmt: skip
        self.stages = TrainingStages(stage_one_epochs, stage_two_epochs, learning_rates, warmup_ratio)
        self.options, self.command_line, self.exporter = options, command_line.CommandLine(), BayesPFLExporter()
        self.synthetic_anomalies = SyntheticAnomalies(synthetic_anomalies)
        self.loss = BayesPFLLoss(kl_weight=kl_weight, orthogonality=orthogonality_loss)
        self.automatic_optimization = False
        self._apply_settings()
        if prompt_weights is not None:
            self._build()

    @property
    def settings(self) -> BayesPFLSettings:
        """The resolved options (``settings.py``); a loaded checkpoint may resolve them again."""
        return self.options.settings

    def current_settings(self) -> BayesPFLSettings:
        """The options now: reporting components read them when a run uses them (a checkpoint may change them)."""
        return self.options.settings

    @property
    def is_built(self) -> bool:
        """Whether the CLIP and the head exist; they are built at first use, once the options are known."""
        return "model" in self._modules

    @property
    def model(self) -> BayesPFLModel:
        """The torch model, built from the resolved options at first use."""
        if not self.is_built:
            self._build()
        return self._modules["model"]

    def _build(self) -> None:
        model = self.options.build_model()
        self.model = model.to(self.device).train(self.training)  # built late: take the module's mode
        self.apply_export_thresholds()

    def _apply_settings(self) -> None:
        """Follow the resolved options: checkpoints store them, the pre-processor resizes, exports label with them."""
        self.hparams.update(self.settings.hyperparameters())
        if self._owns_pre_processor and isinstance(self.pre_processor, PreProcessor):
            set_image_size(self.pre_processor, self.settings.image_size)
        if self.is_built:
            self.model.few_shot = self.settings.k_shot > 0
        self.apply_export_thresholds()

    def apply_export_thresholds(self) -> None:
        """Give an exported model its class name, and the post-processor, which labels it, that name's thresholds."""
        self.exporter.label_exports(self.model if self.is_built else None, self.post_processor, self.settings)

    def image_categories(
        self, image_paths: Sequence[str | None] | None, count: int | None = None
    ) -> list[ImageCategory]:
        """Each image's dataset, category and class name, by the one rule (``data/class_names.py``)."""
        trainer = self.trainer if self._trainer else None
        return self.options.image_categories(image_paths, count, trainer, self.model if self.is_built else None)

    def class_names_of(self, image_paths: Sequence[str]) -> list[str]:
        """The word in each image's prompts."""
        return [name.class_name for name in self.image_categories(image_paths)]

    configure_pre_processor = staticmethod(clip_pre_processor)  # bicubic resize to a square, CLIP's normalisation

    def configure_post_processor(self) -> PostProcessor:
        """Label with probability thresholds (the paper's until options or a checkpoint set them)."""
        return ProbabilityPostProcessor()

    def configure_visualizer(self) -> reporting.UncertaintyVisualizer:
        """The image visualizer of anomalib, with each image's uncertainty map beside it and the review banners."""
        return reporting.UncertaintyVisualizer(settings=self.current_settings)

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """The zero-shot literature's metrics: image AUROC, AP (AUPR) and F1Max; pixel AUROC and AUPRO (with masks)."""
        return reporting.ApplicableMetricsEvaluator(test_metrics=reporting.zero_shot_metrics())

    @property
    def learning_type(self) -> LearningType:
        """``ZERO_SHOT`` (``FEW_SHOT`` with ``k_shot``) once trained or loaded, and not fitting; else ``ONE_CLASS``."""
        trained = self.model.is_trained if self.is_built else self.options.prompt_weights is not None
        if not trained or (self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING):
            return LearningType.ONE_CLASS
        return LearningType.FEW_SHOT if self.settings.k_shot > 0 else LearningType.ZERO_SHOT

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Epochs are model arguments; no validation in training; a trained model validates one batch (checkpoint)."""
        if self.learning_type in {LearningType.ZERO_SHOT, LearningType.FEW_SHOT}:
            return {"limit_val_batches": 1, "num_sanity_val_steps": 0}
        return {"max_epochs": self.stages.epochs, "limit_val_batches": 0, "num_sanity_val_steps": 0}

    def configure_callbacks(self) -> list[Callback]:
        """Data checks, then references; synthetic anomalies after the pre-processor; reports, the page last."""
        transform = self.pre_processor.transform if self.pre_processor else None
        before, after = build_callbacks(lambda: self.model, self.current_settings, self.image_categories,
                                        self.class_names_of, transform, self.apply_export_thresholds)  # fmt: skip
        return [*before, *super().configure_callbacks(), self.synthetic_anomalies, *after]

    def configure_optimizers(self) -> tuple[list, list[dict[str, Any]]]:
        """Stage 1: Adam over four learning-rate groups with a warm-up cosine schedule; stage 2: the classifier."""
        return self.stages.optimizers(self.model, int(self.trainer.estimated_stepping_batches))

    def prepare_data(self) -> None:
        """Give a test or predict run a results folder of its own, before anything is written (``command_line.py``)."""
        self.command_line.prepare_results_folder(self.trainer)

    def setup(self, stage: str) -> None:
        """Refuse contradicting options, a ``--ckpt_path`` that is no checkpoint, a bad precision, before any image."""
        del stage
        self.command_line.share_results_folder(self.trainer)
        self.command_line.check_precision(self.trainer)
        self.options.check()
        self.command_line.check_checkpoint(self.trainer)

    def configure_model(self) -> None:
        """Before training: seed as the command line asks, then build the model (before DDP wraps it)."""
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING and not self.is_built:
            command_line.seed_from_command_line(self.trainer)
            self._build()

    def on_fit_end(self) -> None:
        """Say where the trained checkpoint is, and how to test it."""
        self.command_line.say_where_the_checkpoint_is(self.trainer)

    def on_validation_end(self) -> None:
        """Say where the checkpoint is that anomalib writes when it validates a trained model (``anomalib train``)."""
        if not self.trainer.sanity_checking:
            self.command_line.say_where_the_checkpoint_is(self.trainer)

    def on_train_epoch_start(self) -> None:
        """Switch the image head to the epoch's stage; stage 2 frees stage 1's Adam moments (checkpoints shrink)."""
        self.model.image_head_stage = self.stages.stage(self.current_epoch)
        if self.model.image_head_stage == 2:
            self.optimizers()[0].optimizer.state.clear()

    def training_step(self, batch: Batch, batch_idx: int = 0) -> STEP_OUTPUT:
        """One optimiser step of the current stage."""
        del batch_idx
        stage = self.model.image_head_stage
        _, terms = training_loss(self.model, self.loss, batch, self.class_names_of(batch.image_path), stage)
        optimizer = self.optimizers()[stage - 1]
        optimizer.zero_grad()
        self.manual_backward(terms.total + self.model.zero_from_every_trainable_parameter())
        optimizer.step()
        self.model.is_trained = True  # in the state of every checkpoint written from now on
        if stage == 1:
            self.lr_schedulers().step()
        self.log("train_loss", terms.total, prog_bar=True, batch_size=len(batch.image))
        parts = {f"train_loss_{name}": value for name, value in terms._asdict().items() if name != "total"}
        self.log_dict(parts, batch_size=len(batch.image))
        return {"loss": terms.total.detach()}

    def _evaluate(self, batch: Batch, *, validating: bool = False) -> BayesPFLBatch:
        names = self.image_categories(batch.image_path, len(batch))
        return score_and_label(batch, self.model, self.settings, names, self.post_processor, few_shot=not validating,
                               uncertainty=not validating, validating=validating)  # fmt: skip

    def validation_step(self, batch: Batch, *_: Any) -> STEP_OUTPUT:
        """Score only for validation metrics or another post-processor (the Engine validates to write checkpoints)."""
        read = not isinstance(self.post_processor, ProbabilityPostProcessor) or (
            self.evaluator and self.evaluator.val_metrics
        )
        return self._evaluate(batch, validating=True) if read else batch

    def test_step(self, batch: Batch, *_: Any) -> STEP_OUTPUT:
        """Score and label the test batch; it carries each image's category, thresholds and uncertainty."""
        return self._evaluate(batch)

    def predict_step(self, batch: Batch, *_: Any) -> STEP_OUTPUT:
        """Score and label the prediction batch."""
        return self._evaluate(batch)

    def val_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        before_test = "validation, which anomalib runs before testing a zero- or few-shot model without a checkpoint,"
        command_line.refuse_without_data(before_test)

    def test_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        command_line.refuse_without_data("anomalib test")

    def predict_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        command_line.refuse_without_data("anomalib predict")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint head-only: the frozen CLIP is rebuilt from ``clip_model`` / ``clip_pretrained``."""
        super().on_save_checkpoint(checkpoint)
        keep_head_only(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Score as the run that wrote the checkpoint: its stored options fill every option left unset (rebuilt)."""
        if self._owns_pre_processor:  # resized in place from the stored image size instead
            checkpoint.pop("anomalib_pre_processor_config", None)
        super().on_load_checkpoint(checkpoint)
        rebuild = self.options.take_checkpoint(checkpoint, self._trainer, type(self))
        self._apply_settings()
        self.settings.check_labels()  # calibration is checked in setup: an export loaded alone calibrates nothing
        if rebuild or not self.is_built:
            self._build()
        put_back_clip(checkpoint, self.model.clip.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load the state, then label exported models with the thresholds it holds (a checkpoint's references)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.apply_export_thresholds()
        return result

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Load as anomalib does (``anomalib export --ckpt_path``), after checking that the file is a checkpoint."""
        command_line.check_checkpoint_file(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def forward(self, batch: torch.Tensor, *_args: Any, **_kwargs: Any) -> InferenceBatch | BayesPFLInferenceBatch:
        """What an exported model computes (``deploy/export.py``): anomalib's fields, and optionally the uncertainty."""
        return self.exporter.forward(self, self.settings, batch, refuse_uncalibrated=self.is_built)

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export as anomalib does, with the file's ``metadata``; refused first for what it could not score."""
        return self.exporter.to_torch(self, self.settings, export_root, model_file_name)

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, at opset 18 with a resize every ONNX runtime computes alike."""
        return self.exporter.to_onnx(self, self.settings, *args, **kwargs)

    def to_openvino(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, INT8 calibrated on training images (arguments: ``BayesPFLExporter.to_openvino``)."""
        return self.exporter.to_openvino(self, self.settings, *args, **kwargs)

    def _post_training_quantization_ov(self, model: "ov.Model", datamodule: AnomalibDataModule) -> "ov.Model":
        """Calibrate INT8 on the training images the export chose, never on ``datamodule``'s test images."""
        del datamodule
        return self.exporter.quantize(model)
