# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Bayes-PFL as an anomalib model: it steers the training stages and composes the rooms that score and report.

Paper: Qin et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025, arXiv 2503.10080.

``learning_type`` is ``ONE_CLASS`` while the head is untrained (so the Engine trains it) and ``ZERO_SHOT``
(``FEW_SHOT`` with ``k_shot > 0``) once it is trained or loaded (so the Engine only evaluates). Options resolve once
(``settings.py``); ``training.py`` computes the loss and the optimisers, ``calibration/`` prepares references and
thresholds and labels each batch, ``reporting/`` writes what a run reports, ``deploy/`` exports. The README's
"Faithfulness" section lists every deliberate difference from the authors' training.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, OpenUnitInterval, PositiveInt
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_bayes_pfl import calibration, reporting
from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.data import DataCheck, DropSamplerPadding, SyntheticAnomalies
from anomalib_bayes_pfl.deploy import ExportMixin
from anomalib_bayes_pfl.settings import AUTO, BayesPFLSettings, ReviewFraction, plain_number

from .building import clip_pre_processor
from .checkpoint_files import PROMPT_WEIGHTS, keep_head_only, put_back_clip, read_checkpoint
from .command_line import CommandLineHooks, seed_from_command_line, skip_validation_for_own_thresholds
from .loss import BayesPFLLoss
from .post_processor import ProbabilityPostProcessor
from .resolved_model import ResolvedModel
from .training import stage_optimizers, training_loss
from .uncertainty import UncertaintyMeasure


class BayesPFL(ExportMixin, CommandLineHooks, ResolvedModel, AnomalibModule):
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

    Example:
        >>> from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
        >>> BayesPFL(clip_model=TINY_CLIP_CONFIG, clip_pretrained=None, image_size=64).learning_type.value
        'one_class'
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
        self._given_options = {name: arguments[name] for name in BayesPFLSettings.option_names()}
        stored = read_checkpoint(prompt_weights, "--model.prompt_weights", PROMPT_WEIGHTS) if prompt_weights else None
        hyper_parameters = stored.get("hyper_parameters") if isinstance(stored, Mapping) else None
        settings = BayesPFLSettings.resolve(self._given_options, hyper_parameters, f"prompt weights {prompt_weights}")
        self._owns_pre_processor = pre_processor is True
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((settings.image_size,) * 2)
        if post_processor is True:
            post_processor = ProbabilityPostProcessor(settings.image_threshold, settings.pixel_threshold)
        super().__init__(pre_processor, post_processor, evaluator, visualizer)
        skip_validation_for_own_thresholds()  # the Engine's validation before test and predict collects nothing here
        if stage_one_epochs < 0 or stage_two_epochs < 0 or stage_one_epochs + stage_two_epochs == 0:
            msg = f"stage_one_epochs={stage_one_epochs}, stage_two_epochs={stage_two_epochs}: both >= 0, one positive."
            raise ValueError(msg)
        self.synthetic_anomalies = SyntheticAnomalies(synthetic_anomalies)
        self.loss = BayesPFLLoss(kl_weight=kl_weight, orthogonality=orthogonality_loss)
        self.iad_log_det_per_batch, self.prompt_weights = iad_log_det_per_batch, prompt_weights
        self.stage_one_epochs, self.stage_two_epochs = stage_one_epochs, stage_two_epochs
        self.warmup_ratio = warmup_ratio
        self.learning_rates = {"prompts": prompt_learning_rate, "temperatures": temperature_learning_rate,
                               "flows": flow_learning_rate, "other": learning_rate}  # fmt: skip
        self.automatic_optimization = False
        self._use_settings(settings)
        if prompt_weights is not None:
            self._build()

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to a square with bicubic interpolation (aspect ratio not kept) and apply CLIP's normalisation."""
        return clip_pre_processor(image_size)

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
        trained = self.model.is_trained if self.is_built else self.prompt_weights is not None
        if not trained or (self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING):
            return LearningType.ONE_CLASS
        return LearningType.FEW_SHOT if self.settings.k_shot > 0 else LearningType.ZERO_SHOT

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Epochs are model arguments; no validation batches while training (nothing selects on validation data).

        A zero- or few-shot model is only validated, so that anomalib's Engine writes its checkpoint: one batch.
        """
        if self.learning_type in {LearningType.ZERO_SHOT, LearningType.FEW_SHOT}:
            return {"limit_val_batches": 1, "num_sanity_val_steps": 0}
        epochs = self.stage_one_epochs + self.stage_two_epochs
        return {"max_epochs": epochs, "limit_val_batches": 0, "num_sanity_val_steps": 0}

    def configure_callbacks(self) -> list[Callback]:
        """Data checks, then references; synthetic anomalies after the pre-processor; reports, the page last."""
        transform = self.pre_processor.transform if self.pre_processor else None
        references = calibration.FewShotPreparation(
            lambda: self.model, self.current_settings, self.class_names_of, transform, self.apply_export_thresholds
        )
        metrics = reporting.PerCategoryMetrics(self.image_categories, self.current_settings)
        page = reporting.RunReport(
            self.current_settings, lambda: metrics.table, lambda: self.model.references.categories
        )
        reports = [metrics, reporting.PredictionTable(self.current_settings), page]
        checks = [DataCheck(), DropSamplerPadding(), references]
        return [*checks, *super().configure_callbacks(), self.synthetic_anomalies, *reports]

    def configure_optimizers(self) -> tuple[list, list[dict[str, Any]]]:
        """Stage 1: Adam over four learning-rate groups with a warm-up cosine schedule; stage 2: the classifier."""
        steps = int(self.trainer.estimated_stepping_batches)
        return stage_optimizers(self.model, self.learning_rates, self.warmup_ratio, steps)

    def setup(self, stage: str) -> None:
        """Refuse contradicting options, a ``--ckpt_path`` that is no checkpoint, a bad precision, before any image."""
        del stage
        self.share_results_folder()
        self.check_precision()
        self.settings.check_labels()
        calibration.check_calibration(self.settings)
        self.check_command_line_checkpoint()

    def configure_model(self) -> None:
        """Before training: seed as the command line asks, then build the model (before DDP wraps it)."""
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING and not self.is_built:
            seed_from_command_line(self.trainer)
            self._build()

    def on_fit_end(self) -> None:
        """Say where the trained checkpoint is, and how to test it."""
        self.say_where_the_checkpoint_is()

    def on_validation_end(self) -> None:
        """Say where the checkpoint is that anomalib writes when it validates a trained model (``anomalib train``)."""
        if not self.trainer.sanity_checking:
            self.say_where_the_checkpoint_is()

    def on_train_epoch_start(self) -> None:
        """Switch the image head to the epoch's stage; stage 2 frees stage 1's Adam moments (checkpoints shrink)."""
        self.model.image_head_stage = 1 if self.current_epoch < self.stage_one_epochs else 2
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
        for name, value in terms._asdict().items():
            if name != "total":
                self.log(f"train_loss_{name}", value, batch_size=len(batch.image))
        return {"loss": terms.total.detach()}

    def _evaluate(self, batch: Batch, *, validating: bool = False) -> BayesPFLBatch:
        names = self.image_categories(batch.image_path, len(batch))
        labelled = calibration.score_and_label
        return labelled(batch, self.model, self.settings, names, self.post_processor, few_shot=not validating,
                        uncertainty=not validating, validating=validating)  # fmt: skip

    def validation_step(self, batch: Batch, *_: Any) -> STEP_OUTPUT:
        """Score nothing unless validation metrics or another post-processor read the scores (zero-shot, then).

        A trained model is validated only so that the Engine writes its checkpoint; labels never come from validation.
        """
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint head-only: the frozen CLIP is rebuilt from ``clip_model`` / ``clip_pretrained``."""
        super().on_save_checkpoint(checkpoint)
        keep_head_only(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Score as the run that wrote the checkpoint: its stored options fill every option left unset."""
        if self._owns_pre_processor:  # resized in place from the stored image size instead
            checkpoint.pop("anomalib_pre_processor_config", None)
        super().on_load_checkpoint(checkpoint)
        self._apply_checkpoint_options(checkpoint)
        put_back_clip(checkpoint, self.model.clip.state_dict())
