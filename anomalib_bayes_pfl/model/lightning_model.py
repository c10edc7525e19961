# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Bayes-PFL as an anomalib model: training stages, optimisers, components and head-only checkpoints.

Paper: Qin et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025, arXiv 2503.10080.

Training follows the authors' code (train.py); the README's "Faithfulness" section lists every deliberate difference,
such as a stage switch after a fixed epoch count instead of patience on the *target* dataset, so that nothing here
ever looks at the categories it will be evaluated on. ``learning_type`` is ``ONE_CLASS`` while the head is untrained
(so the Engine trains it) and ``ZERO_SHOT`` (``FEW_SHOT`` with ``k_shot > 0``) once it is trained or loaded (so the
Engine only evaluates). Scoring options left unset come from the checkpoint that is loaded (``options.py``).
"""

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import torch
from anomalib import LearningType
from anomalib.data import AnomalibDataModule, Batch
from anomalib.deploy import CompressionType
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.utils.path import create_versioned_dir
from anomalib.visualization import Visualizer
from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveInt,
    restricted_number_type,
)
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

from anomalib_bayes_pfl.batch import BayesPFLBatch
from anomalib_bayes_pfl.data.class_names import DEFAULT_CLASS_NAME, ImageCategory, image_categories
from anomalib_bayes_pfl.data.distributed import DropSamplerPadding
from anomalib_bayes_pfl.data.synthetic_anomalies import SyntheticAnomalies, known_masks
from anomalib_bayes_pfl.data.validation import DataCheck
from anomalib_bayes_pfl.few_shot import FewShotPreparation
from anomalib_bayes_pfl.metrics import ApplicableMetricsEvaluator, PerCategoryMetrics, zero_shot_metrics
from anomalib_bayes_pfl.openvino_export import (
    INT8_CALIBRATION_IMAGES,
    calibration_image_paths,
    check_openvino_export,
    quantize,
    resize_by_matrices,
    warn_if_cpu_lowers_precision,
)
from anomalib_bayes_pfl.paper_score import paper_map_scores
from anomalib_bayes_pfl.prediction_writer import PredictionTable
from anomalib_bayes_pfl.visualization import UncertaintyVisualizer

from .backbone import load_clip
from .checkpoint_files import BAYES_PFL_CHECKPOINT, read_checkpoint
from .command_line import command_line_checkpoint, seed_from_command_line, warn_that_export_ignores_model_options
from .config import BayesPFLConfig, FlowConfig, PromptConfig, ScoringConfig
from .loss import BayesPFLLoss, LossTerms
from .options import AUTO, PAPER_DEFAULTS, plain_number, plain_options_differ, resolve_options, stored_options
from .post_processor import ProbabilityPostProcessor, minimum_calibration_images
from .reference_checkpoint import load_head_weights
from .torch_model import BayesPFLModel, BayesPFLTrainOutput
from .uncertainty import UNCERTAINTY_UNITS, UncertaintyMeasure

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

CLIP_PREFIX = "model.clip."
ReviewFraction = restricted_number_type("ReviewFraction", float, [(">=", 0), ("<", 1)])
ADAM_BETAS = (0.5, 0.999)
ONNX_OPSET = 18


class BayesPFL(AnomalibModule):
    """Bayes-PFL: zero-shot anomaly detection with prompt flows over a frozen CLIP.

    Train once on an annotated auxiliary dataset, then detect and segment defects in unseen categories.

    Every scoring option (from ``clip_model`` to ``residual_attention``, ``smoothing_sigma``, ``eval_seed``,
    ``class_name``, ``image_score`` and the thresholds) defaults to unset: a checkpoint that is loaded
    (``--ckpt_path`` or ``prompt_weights``) supplies it, and otherwise the paper's value named below applies
    (:data:`~anomalib_bayes_pfl.model.options.PAPER_DEFAULTS`).

    Args:
        clip_model: open_clip model name (``ViT-L-14-336``), ``bayes-pfl-tiny``, or the path of an open_clip
            model-config JSON file.
        clip_pretrained: open_clip tag (``"openai"``), local CLIP checkpoint (e.g. OpenAI's ``ViT-L-14-336px.pt``),
            or ``None`` for random weights; ``"auto"`` leaves it unset.
        clip_quick_gelu: Force QuickGELU towers; the authors' heads were trained with exact GELU.
        clip_precision: Autocast precision of the frozen CLIP (``fp32``, ``bf16`` or ``fp16``; the last two for
            GPUs); the head always computes in float32.
        image_size: Side of the square model input (518 in the paper).
        tap_layers: 1-based vision blocks to tap; ``None`` = quarter points of the depth (6, 12, 18, 24).
        num_prompts: B, prompt sets in the bank.
        prompt_context_len: P, context vectors per prompt.
        prompt_state_len: Q, state vectors per prompt.
        num_flow_steps: K, planar steps per distribution (0 = plain Gaussians).
        num_samples: R, Monte-Carlo rounds per image at evaluation.
        image_specific_distribution: Shift context vectors by image-specific samples (ablation switch).
        image_agnostic_distribution: Shift state vectors by image-agnostic samples (ablation switch).
        residual_attention: Use the residual cross-modal attention (ablation switch).
        orthogonality_loss: Add the authors' prompt orthogonality loss.
        iad_log_det_per_batch: Keep the authors' division of the image-agnostic log-determinant by the batch size.
        kl_weight: Weight of the KL term.
        smoothing_sigma: Gaussian sigma of the anomaly map in input pixels (0 = none).
        eval_seed: Seed of the evaluation noise.
        stage_one_epochs: Epochs of stage 1 (all losses, all head parameters).
        stage_two_epochs: Epochs of stage 2 (classification loss, image classifier only); 0 skips stage 2.
        prompt_learning_rate: Learning rate of the prompt vectors.
        flow_learning_rate: Learning rate of the flow parameters and image-agnostic inputs.
        temperature_learning_rate: Learning rate of the two temperatures.
        learning_rate: Learning rate of every other head parameter, and of stage 2.
        warmup_ratio: Fraction of the stage-1 steps with a linear warm-up before the cosine decay.
        prompt_weights: Trained head to load: a checkpoint of ``anomalib train``, or the authors'
            ``train_visa.pth`` / ``train_mvtec.pth``. With it the model is zero-shot and is not trained again.
        class_name: Class name for every image; ``None`` takes each image's category from the datamodule
            (``ZeroShotCrossDataset``, or the MVTec AD / VisA folder layout), then the datamodule's category, then
            ``"object"`` (also for loose files given to ``anomalib predict``).
        synthetic_anomalies: Probability that a normal training image is replaced by a synthetic anomaly (anomalib's
            Perlin generator) with its mask; ``None`` uses them (0.5) only for training data without anomalous
            images, with a warning, and 0 refuses such data (:mod:`anomalib_bayes_pfl.data.synthetic_anomalies`).
        image_score: ``probability`` reports the model's own score in the per-category table; ``paper`` adds the
            authors' transductive fusion of the probability and the top-k map mean, min-max normalised per
            category (for comparison with published numbers only).
        image_threshold: Images whose abnormal probability exceeds it are labelled anomalous. Scores are the
            probabilities of the head trained on the auxiliary data, so the default 0.5 is that classifier's own
            decision and uses no labels of the data being scored.
        pixel_threshold: The same for anomaly-map pixels (the predicted masks).
        k_shot: Normal reference images per scored category; their patch tokens are a memory that each test patch is
            compared with, fused with the prompt scores as WinCLIP+ does (``few_shot.py``, ``references.py``).
            0 is the paper's zero-shot model.
        few_shot_source: Folder of normal images for the references and calibration (one sub-folder per category
            for several); ``None`` takes them from the datamodule's training split, never from its test split.
        false_alarm_rate: Calibrate each category's thresholds on ``calibration_images`` further normal images, so
            that at most this share of its normal images is labelled anomalous (in expectation), and at most this
            share of their pixels; replaces ``image_threshold`` / ``pixel_threshold``.
        calibration_images: Normal images per category that calibrate the thresholds (at least ``1/rate - 1``).
        uncertainty: How test and predict runs measure the disagreement of the B * R prompt samples behind each
            score and map pixel (``model/uncertainty.py``): ``std``, the standard deviation of their probabilities,
            or ``mutual_information`` in bits (the epistemic part of the predictive entropy). Scores do not depend on
            it.
        review_fraction: Mark at most this share of each category's images, the most uncertain, ``needs_review``
            (prediction table, visualisations, and the test table's error rate of the images decided alone); decided
            once the run has scored all of them (``review.py``). 0 (the default): no review, also for a checkpoint
            that stores a share.
        pre_processor: Pre-processor, ``True`` for the default (bicubic resize, CLIP normalisation).
        post_processor: Post-processor, ``True`` for the default, which labels with the two thresholds
            (:class:`~anomalib_bayes_pfl.model.post_processor.ProbabilityPostProcessor`).
        evaluator: Evaluator, ``True`` for image AUROC / AUPR / F1Max and pixel AUROC / AUPRO.
        visualizer: Visualizer, ``True`` for anomalib's image visualizer with each image's uncertainty map beside it
            (:class:`~anomalib_bayes_pfl.visualization.UncertaintyVisualizer`).

    Example:
        >>> from anomalib_bayes_pfl.assets import TINY_CLIP_CONFIG
        >>> model = BayesPFL(
        ...     clip_model=TINY_CLIP_CONFIG, clip_pretrained=None, image_size=64
        ... )
        >>> model.learning_type.value
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
        calibration_images: PositiveInt | None = None,
        uncertainty: UncertaintyMeasure | None = None,
        review_fraction: ReviewFraction | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        image_size, synthetic_anomalies, image_threshold, pixel_threshold = (
            plain_number(value) for value in (image_size, synthetic_anomalies, image_threshold, pixel_threshold)
        )  # before anomalib saves the arguments as hyper-parameters
        k_shot, false_alarm_rate, calibration_images, review_fraction = (
            plain_number(value) for value in (k_shot, false_alarm_rate, calibration_images, review_fraction)
        )
        given = {name: value for name, value in locals().items() if name in PAPER_DEFAULTS}
        source = f"prompt weights {prompt_weights}"
        options = resolve_options(given, stored_options(prompt_weights) if prompt_weights else None, source)
        _check_options(options)
        self._owns_pre_processor = pre_processor is True
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((options["image_size"],) * 2)
        if post_processor is True:
            post_processor = ProbabilityPostProcessor(options["image_threshold"], options["pixel_threshold"])
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if stage_one_epochs < 0 or stage_two_epochs < 0 or stage_one_epochs + stage_two_epochs == 0:
            msg = (
                f"stage_one_epochs={stage_one_epochs} and stage_two_epochs={stage_two_epochs}: both must be >= 0 "
                f"and at least one positive."
            )
            raise ValueError(msg)
        self.synthetic_anomalies = SyntheticAnomalies(synthetic_anomalies)
        self._given_options = given
        self._apply_options(options)
        self.loss = BayesPFLLoss(kl_weight=kl_weight, orthogonality=orthogonality_loss)
        self.iad_log_det_per_batch = iad_log_det_per_batch
        self.prompt_weights = prompt_weights
        self._int8_calibration_paths: list[Path] = []  # chosen by to_openvino, for anomalib's quantization hook
        self.stage_one_epochs = stage_one_epochs
        self.stage_two_epochs = stage_two_epochs
        self.learning_rates = {
            "prompts": prompt_learning_rate,
            "temperatures": temperature_learning_rate,
            "flows": flow_learning_rate,
            "other": learning_rate,
        }
        self.warmup_ratio = warmup_ratio
        self.automatic_optimization = False
        if prompt_weights is not None:
            self._build()

    def _apply_options(self, options: dict[str, Any]) -> None:
        """Take resolved scoring options; checkpoints store them, so that they carry everything needed to score."""
        _check_options(options)
        fixed = [name for name in ("image_threshold", "pixel_threshold") if self._given_options.get(name) is not None]
        if fixed and options["false_alarm_rate"] is not None and self._given_options.get("false_alarm_rate") is None:
            logger.warning(
                "--model.%s given: labelling with fixed thresholds, not with the thresholds calibrated for a "
                "false-alarm rate of %s that the loaded head stores.",
                fixed[0],
                options["false_alarm_rate"],
            )
            options = {**options, "false_alarm_rate": None}
        self.options = options
        self.hparams.update(options)
        self.class_name = options["class_name"]
        self.image_score = options["image_score"]
        if self._owns_pre_processor and isinstance(self.pre_processor, PreProcessor):
            # In place: the datamodule resizes in its workers with this very transform.
            for resize in (t for t in self.pre_processor.transform.transforms if isinstance(t, Resize)):
                resize.size = [options["image_size"]] * 2
            self.pre_processor.export_transform = self.pre_processor.transform  # keep antialiasing when exported
        if self.is_built:
            self.model.few_shot = options["k_shot"] > 0
        self.apply_export_thresholds()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load the state, then label exported models with the thresholds it holds (a checkpoint's references)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.apply_export_thresholds()
        return result

    def reference_settings(self) -> dict[str, Any]:
        """The options that a category's stored references and thresholds must have been made under to be reused.

        The source folder counts only when it is given now: a checkpoint's references serve without it.
        """
        names = ["k_shot", "eval_seed", "image_size"]
        if self.options["false_alarm_rate"] is not None:
            names += ["false_alarm_rate", "calibration_images"]
        settings = {name: self.options[name] for name in names}
        source = self._given_options.get("few_shot_source")
        if source is not None:
            settings["few_shot_source"] = str(Path(source).expanduser().resolve())
        return settings

    def thresholds_of(self, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and pixel threshold ``(N,)`` of each class name: its calibrated ones, else the options'."""
        fixed = (self.options["image_threshold"], self.options["pixel_threshold"])
        calibrated = self.options["false_alarm_rate"] is not None and self.is_built
        pairs = []
        for name in class_names:
            stored = self.model.references.get(name) if calibrated else None
            has_thresholds = stored is not None and stored.image_threshold is not None
            pairs.append((stored.image_threshold, stored.pixel_threshold) if has_thresholds else fixed)
        image, pixel = torch.tensor(pairs, dtype=torch.float64).reshape(-1, 2).unbind(dim=1)
        return image, pixel

    @property
    def export_class_name(self) -> str:
        """What an exported model's prompts say.

        The class name; else the one category the head stores references or calibrated thresholds for (a few-shot
        checkpoint of one part); else ``"object"``.
        """
        if self.options["class_name"] is not None:
            return self.options["class_name"]
        stored = list(self.model.references.categories) if self.is_built else []
        return stored[0] if len(stored) == 1 else DEFAULT_CLASS_NAME

    def apply_export_thresholds(self) -> None:
        """Give an exported model its class name, and the post-processor, which labels it, that name's thresholds."""
        name = self.export_class_name
        if self.is_built:
            self.model.default_class_name = name
        if isinstance(self.post_processor, ProbabilityPostProcessor):
            image, pixel = self.thresholds_of([name])
            self.post_processor.set_thresholds(float(image), float(pixel))

    @property
    def is_built(self) -> bool:
        """Whether the CLIP and the head exist; they are built at first use, once the options are known."""
        return "model" in self._modules

    @property
    def model(self) -> BayesPFLModel:
        """The torch model, built from the resolved options at first use.

        Building waits so that ``anomalib test|predict --ckpt_path X`` builds the CLIP and head that X was trained
        with (see :meth:`on_load_checkpoint`), never the defaults of an unset command line.
        """
        if not self.is_built:
            self._build()
        return self._modules["model"]

    def _build(self) -> None:
        """Build the frozen CLIP and the head from :attr:`options`, and load ``prompt_weights`` if given."""
        options = self.options
        config = BayesPFLConfig(
            tap_layers=tuple(options["tap_layers"]) if options["tap_layers"] is not None else None,
            residual_attention=options["residual_attention"],
            clip_precision=options["clip_precision"],
            prompt=PromptConfig(options["num_prompts"], options["prompt_context_len"], options["prompt_state_len"]),
            flow=FlowConfig(
                options["num_flow_steps"],
                options["image_specific_distribution"],
                options["image_agnostic_distribution"],
                self.iad_log_det_per_batch,
            ),
            scoring=ScoringConfig(options["num_samples"], options["smoothing_sigma"], options["eval_seed"]),
        )
        # Builds may happen inside Lightning's inference-mode loops; the head must stay trainable and loadable.
        with torch.inference_mode(False):
            clip = load_clip(options["clip_model"], options["clip_pretrained"], quick_gelu=options["clip_quick_gelu"])
            model = BayesPFLModel(config, clip, clip_name=options["clip_model"])
            if self.prompt_weights is not None:
                load_head_weights(model, self.prompt_weights)
                logger.info("Loaded trained Bayes-PFL head from %s; it is not trained again.", self.prompt_weights)
        model.few_shot = options["k_shot"] > 0
        self.model = model.to(self.device).train(self.training)  # built late: take the module's mode
        self.apply_export_thresholds()

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to a square with bicubic interpolation (aspect ratio not kept) and apply CLIP's normalisation."""
        return PreProcessor(
            transform=Compose(
                [
                    Resize(image_size or (518, 518), interpolation=InterpolationMode.BICUBIC, antialias=True),
                    Normalize(mean=list(OPENAI_DATASET_MEAN), std=list(OPENAI_DATASET_STD)),
                ]
            ),
        )

    def configure_post_processor(self) -> PostProcessor:
        """Label with probability thresholds (the paper's until options or a checkpoint set them)."""
        return ProbabilityPostProcessor()

    @classmethod
    def configure_visualizer(cls) -> UncertaintyVisualizer:
        """The image visualizer of anomalib, with each image's uncertainty map beside it and the review banners."""
        return UncertaintyVisualizer()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """The zero-shot literature's metrics: image AUROC, AP (AUPR) and F1Max; pixel AUROC and AUPRO (with masks)."""
        return ApplicableMetricsEvaluator(test_metrics=zero_shot_metrics())

    @property
    def is_trained(self) -> bool:
        """Whether the head is trained or loaded (known before it is built when ``prompt_weights`` are given)."""
        return self.model.is_trained if self.is_built else self.prompt_weights is not None

    @property
    def learning_type(self) -> LearningType:
        """``ZERO_SHOT`` (``FEW_SHOT`` with ``k_shot > 0``) once the head is trained or loaded, else ``ONE_CLASS``.

        The Engine only evaluates the first two. While fitting (a resumed run included) it stays ``ONE_CLASS``, so
        that the Engine trains it.
        """
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if not self.is_trained or fitting:
            return LearningType.ONE_CLASS
        return LearningType.FEW_SHOT if self.options["k_shot"] > 0 else LearningType.ZERO_SHOT

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """The epoch count is a model argument: the Engine lets these override ``--trainer.*``.

        Training runs no validation batches: nothing selects a model on validation data (the authors' early stopping
        looks at the target categories), and labels use probability thresholds, not validation statistics; a
        checkpoint is written at the end of every training epoch, so that interrupted training can resume. A
        zero-shot model is not trained: anomalib's Engine "fits" it by validating, and writes its checkpoint at the
        end of validation, so one batch is scored for that (as WinClip's whole validation set is).
        """
        if self.learning_type in {LearningType.ZERO_SHOT, LearningType.FEW_SHOT}:
            return {"limit_val_batches": 1, "num_sanity_val_steps": 0}
        epochs = self.stage_one_epochs + self.stage_two_epochs
        return {"max_epochs": epochs, "limit_val_batches": 0, "num_sanity_val_steps": 0}

    def configure_callbacks(self) -> list[Callback]:
        """Data checks and references first; synthetic anomalies after the pre-processor; tables after labelling."""
        checks = [DataCheck(), DropSamplerPadding(), FewShotPreparation()]
        tables = [PerCategoryMetrics(), PredictionTable()]
        return [*checks, *super().configure_callbacks(), self.synthetic_anomalies, *tables]

    def configure_optimizers(self) -> tuple[list[Adam], list[dict[str, Any]]]:
        """Stage 1: Adam over four learning-rate groups with a warm-up cosine schedule; stage 2: the classifier."""
        groups = self.model.parameter_groups()
        stage_one = Adam(
            [{"params": groups[name], "lr": lr} for name, lr in self.learning_rates.items() if groups[name]],
            betas=ADAM_BETAS,
        )
        stage_two = Adam(groups["classifier"], lr=self.learning_rates["other"], betas=ADAM_BETAS)
        # Like the authors' schedule, warm-up and cosine span every epoch, so the rate is still above zero when
        # stage 2 (constant rate) takes over (authors: train.py L183-187).
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup_steps = int(self.warmup_ratio * total_steps)

        def warmup_cosine(step: int) -> float:
            if step < warmup_steps:
                return step / max(1, warmup_steps)
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

        schedule = {"scheduler": LambdaLR(stage_one, warmup_cosine), "interval": "step"}
        return [stage_one, stage_two], [schedule]

    @property
    def current_stage(self) -> int:
        """Training stage of the current epoch."""
        return 1 if self.current_epoch < self.stage_one_epochs else 2

    def image_categories(self, image_paths: Sequence[str | None] | None, count: int) -> list[ImageCategory]:
        """Each image's dataset, category and class name, by the one rule of :func:`image_categories`."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        return image_categories(image_paths, count, class_name=self.class_name, datamodule=datamodule)

    def _class_names(self, batch: Batch) -> list[str]:
        return [name.class_name for name in self.image_categories(batch.image_path, batch.image.shape[0])]

    def setup(self, stage: str) -> None:
        """Refuse contradicting label options and a ``--ckpt_path`` that is not a checkpoint before anything runs.

        Not in ``__init__``: anomalib's command line would bury the message in a type-validation report. Lightning
        loads ``--ckpt_path`` after this hook, and its own error for a file that is not a checkpoint advises running
        code from it.
        """
        del stage
        _check_label_options(self.options, self._given_options)
        checkpoint = command_line_checkpoint(self.trainer)
        if checkpoint is not None:
            read_checkpoint(checkpoint, "--ckpt_path", BAYES_PFL_CHECKPOINT)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> "BayesPFL":
        """Load as anomalib does (``anomalib export --ckpt_path``), after checking that the file is a checkpoint."""
        read_checkpoint(checkpoint_path, "--ckpt_path", BAYES_PFL_CHECKPOINT)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def prepare_data(self) -> None:
        """Make anomalib's ``latest`` results folder a link to a new version folder where no run has made one yet.

        anomalib's test and predict write into ``<root>/latest``; where no run has made it, it becomes a plain folder,
        on which every later ``anomalib train`` there fails (``IsADirectoryError``), also after a run that stopped.
        Runs before anything is written there (Lightning's ``prepare_data`` precedes every ``setup``).
        """
        root = Path(self.trainer.default_root_dir)
        if root.name == "latest" and not root.exists() and not root.is_symlink():
            create_versioned_dir(root.parent)

    def val_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give (Lightning's own message names a method to implement)."""
        _refuse_without_data(
            "validation, which anomalib runs before testing a zero- or few-shot model without a checkpoint,"
        )

    def test_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        _refuse_without_data("anomalib test")

    def predict_dataloader(self) -> Any:
        """Only reached without ``--data``: say what to give."""
        _refuse_without_data("anomalib predict")

    def _check_exportable(self) -> None:
        """An exported model scores one class name, with that name's references and thresholds: say which, or refuse.

        Raises:
            ValueError: If the head stores several categories and no class name says which, or the class name has
                no references while the model is few-shot.
        """
        stored = sorted(self.model.references.categories)
        fix = (
            "Export one model per class name with --model.prompt_weights <checkpoint> --model.class_name <name> "
            "(anomalib export --ckpt_path ignores --model.* options)."
        )
        if self.options["class_name"] is None and len(stored) > 1:
            msg = f"the head stores few-shot references or calibrated thresholds for {stored}, and an exported model "
            msg += f"scores one class name. {fix}"
            raise ValueError(msg)
        name = self.export_class_name
        if self.model.few_shot and name not in stored:
            msg = f"the model is {self.options['k_shot']}-shot and has no references for class name '{name}' "
            msg += f"(it has them for {stored}). {fix}"
            raise ValueError(msg)
        if self.options["class_name"] is None and not stored:
            logger.warning(
                "No class name given or stored: the exported model scores every image as '%s'. Export one model per "
                "part with --model.class_name <part> (and the checkpoint as --model.prompt_weights).",
                name,
            )
        thresholds = getattr(self.post_processor, "thresholds", None)
        logger.info(
            "Exporting BayesPFL for class name '%s'%s: %d-shot, %d px, image / pixel thresholds %s.",
            name,
            " (the one category the head stores)" if self.options["class_name"] is None and stored else "",
            self.options["k_shot"],
            self.options["image_size"],
            " / ".join(f"{value:.4g}" for value in thresholds) if thresholds else "none",
        )

    def to_torch(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, refused at once for a class name without references."""
        self._check_exportable()
        return super().to_torch(*args, **kwargs)

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """Export as anomalib does, with a resize that every ONNX runtime computes alike, at opset 18.

        The resize is the pre-processor's antialiased bicubic written as two matrix products
        (:func:`~anomalib_bayes_pfl.openvino_export.resize_by_matrices`): OpenVINO computes an antialiased ``Resize``
        otherwise than torch and onnxruntime, so the same file scored differently by runtime. Opset 18, because the
        positional-embedding resize is antialiased, which the exporter cannot convert to anomalib's default opset 14
        (it would log a failed conversion and keep 18).
        """
        self._check_exportable()
        kwargs.setdefault("opset_version", ONNX_OPSET)
        with resize_by_matrices(self.pre_processor):
            return super().to_onnx(*args, **kwargs)

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        *args: Any,
        int8_calibration_images: int = INT8_CALIBRATION_IMAGES,
        **kwargs: Any,
    ) -> Path:
        """Export as anomalib does, with a resize that OpenVINO reproduces and INT8 calibrated on training images.

        Without ``input_size`` the IR takes images of any size, as the checkpoint does. ``int8_calibration_images``
        caps the training images that ``INT8_PTQ`` calibrates on (``anomalib export`` keeps NNCF's 300).
        """
        check_openvino_export(compression_type, datamodule)  # _check_exportable runs in to_onnx, which this calls
        if compression_type == CompressionType.INT8_PTQ:  # a wrong --data stops before the export, not after
            self._int8_calibration_paths = calibration_image_paths(datamodule, int8_calibration_images)
        path = super().to_openvino(  # through to_onnx: the same resize and opset
            export_root, model_file_name, input_size, compression_type, datamodule, *args, **kwargs
        )
        warn_if_cpu_lowers_precision()
        return path

    def _post_training_quantization_ov(self, model: "ov.Model", datamodule: AnomalibDataModule) -> "ov.Model":
        """Calibrate INT8 on the training (auxiliary) images that :meth:`to_openvino` chose: never on test images."""
        del datamodule  # its images were chosen before the export
        return quantize(model, self._int8_calibration_paths)

    def configure_model(self) -> None:
        """Before training: seed as the command line asks, then build the model (before DDP wraps it)."""
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and not self.is_built:
            seed_from_command_line(self.trainer)
            self._build()

    def on_train_epoch_start(self) -> None:
        """Switch the image head to the current stage; stage 2 frees stage 1's Adam moments.

        They are never used again, and without them the checkpoints written in stage 2 (the final one included)
        hold the head and the classifier's moments only: about 124 MB instead of 311 MB for ViT-L-14-336.
        """
        self.model.image_head_stage = self.current_stage
        if self.current_stage == 2:
            self.optimizers()[0].optimizer.state.clear()

    def training_step(self, batch: Batch, batch_idx: int = 0) -> STEP_OUTPUT:
        """One optimiser step of the current stage."""
        del batch_idx
        stage = self.current_stage
        _, terms = self.training_loss(batch, stage)
        optimizer = self.optimizers()[stage - 1]
        optimizer.zero_grad()
        self.manual_backward(terms.total + self.model.zero_from_every_trainable_parameter())
        optimizer.step()
        self.model.is_trained = True  # in the state of every checkpoint written from now on
        if stage == 1:
            self.lr_schedulers().step()
        batch_size = batch.image.shape[0]
        self.log("train_loss", terms.total, prog_bar=True, batch_size=batch_size)
        for name, value in terms._asdict().items():
            if name != "total":
                self.log(f"train_loss_{name}", value, batch_size=batch_size)
        return {"loss": terms.total.detach()}

    def training_loss(self, batch: Batch, stage: int) -> tuple[BayesPFLTrainOutput, LossTerms]:
        """The forward pass and loss terms of a batch at ``stage``, with one prompt set of the bank drawn for it."""
        output = self.model(batch.image, self._class_names(batch))
        prompt_index = int(torch.randint(self.model.config.prompt.num_prompts, (1,)))
        terms = self.loss(
            output.image_logits,
            output.pixel_logits,
            output.text_embeddings,
            output.kl,
            batch.gt_label,
            batch.gt_mask.float() if batch.gt_mask is not None else None,
            prompt_index=prompt_index,
            stage=stage,
            has_mask=known_masks(batch),
        )
        return output, terms

    def _evaluate(self, batch: Batch, *, few_shot: bool = True, uncertainty: bool = True) -> BayesPFLBatch:
        """Score and label the batch; return it with where each image belongs, its thresholds and the extras."""
        names = self.image_categories(batch.image_path, len(batch))
        class_names = [name.class_name for name in names]
        image_thresholds, pixel_thresholds = self.thresholds_of(class_names)
        fields = {
            "dataset": [name.dataset for name in names],
            "category": [name.category for name in names],
            "class_name": class_names,
            "image_threshold": image_thresholds,
            "pixel_threshold": pixel_thresholds,
        }
        if not len(batch):  # a process's share of a distributed test set can end in an empty batch
            image = batch.image
            empty_maps = image.new_zeros(0, *image.shape[-2:])
            batch.update(pred_score=image.new_zeros(0), anomaly_map=empty_maps)
            extras = {"uncertainty": image.new_zeros(0), "uncertainty_map": empty_maps} if uncertainty else {}
            return _with_extras(batch, **fields, **extras)
        measure = self.options["uncertainty"] if uncertainty else None
        scores = self.model.score(
            batch.image, class_names, few_shot=few_shot and self.model.few_shot, uncertainty=measure
        )
        batch.update(pred_score=scores.pred_score, anomaly_map=scores.anomaly_map)
        if isinstance(self.post_processor, ProbabilityPostProcessor):
            self.post_processor.label(batch, image_thresholds, pixel_thresholds)
        paper = paper_map_scores(scores.raw_anomaly_map, class_names) if self.image_score == "paper" else None
        return _with_extras(
            batch,
            **fields,
            uncertainty=scores.uncertainty,
            uncertainty_map=scores.uncertainty_map,
            paper_map_score=paper,
        )

    def validation_step(self, batch: Batch, batch_idx: int = 0, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score the validation batch zero-shot, without uncertainty: nothing reads it, and it may lack references.

        A zero- or few-shot model is validated only so that anomalib's Engine writes its checkpoint.
        """
        del batch_idx, dataloader_idx
        return self._evaluate(batch, few_shot=False, uncertainty=False)

    def test_step(self, batch: Batch, batch_idx: int = 0, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score the test batch with each image's class name; ``image_score="paper"`` adds the map score."""
        del batch_idx, dataloader_idx
        return self._evaluate(batch)

    def predict_step(self, batch: Batch, batch_idx: int = 0, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score the prediction batch with each image's class name."""
        del batch_idx, dataloader_idx
        return self._evaluate(batch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint head-only: the frozen CLIP is rebuilt from ``clip_model`` / ``clip_pretrained``.

        The head it holds replaces the ``prompt_weights`` it may have started from, so that loading it never
        needs (or reloads) that file.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint["hyper_parameters"]["prompt_weights"] = None
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith(CLIP_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Score as the run that wrote the checkpoint: its stored options fill every option left unset.

        anomalib restores the post-processor's thresholds; the pre-processor is resized in place from the stored
        image size (the datamodule resizes with the same transform). Then the frozen CLIP tensors are put back
        before Lightning's strict ``load_state_dict``.
        """
        if self._owns_pre_processor:
            checkpoint.pop("anomalib_pre_processor_config", None)
        if self._trainer is None:
            warn_that_export_ignores_model_options()
        super().on_load_checkpoint(checkpoint)
        source = f"checkpoint {getattr(self._trainer, 'ckpt_path', None) or ''}".strip()
        stored = checkpoint.get("hyper_parameters") or {}
        if self._trainer is None:  # load_from_checkpoint: the arguments are the checkpoint's own options
            self._given_options = {
                name: value
                for name, value in self._given_options.items()
                if name not in stored or plain_options_differ(stored[name], value)
            }
        options = resolve_options(self._given_options, stored, source)
        rebuild = options != self.options
        self._apply_options(options)
        _check_label_options(self.options, self._given_options)
        if rebuild or not self.is_built:
            self._build()
        state = checkpoint["state_dict"]
        for key, value in self.model.clip.state_dict().items():
            state.setdefault(CLIP_PREFIX + key, value)


def _with_extras(batch: Batch, **extras: torch.Tensor | list[str] | None) -> BayesPFLBatch:
    """``batch`` as a :class:`BayesPFLBatch` with the model's extra outputs."""
    fields = {field.name: getattr(batch, field.name) for field in dataclasses.fields(batch)}
    return BayesPFLBatch(**fields, **extras)


def _refuse_without_data(what: str) -> NoReturn:
    msg = (
        f"{what} needs images to score: add --data, e.g. --data MVTecAD --data.root datasets/MVTecAD --data.category "
        f"bottle, --data ZeroShotCrossDataset --data.target_root <folder> --data.target_format folder, or (anomalib "
        f"predict) --data <image or folder>."
    )
    raise ValueError(msg)


def _check_options(options: dict[str, Any]) -> None:
    """Reject sizes and counts that Python callers could pass unchecked (the thresholds: the post-processor's job)."""
    for name, minimum in (("image_size", 1), ("k_shot", 0), ("calibration_images", 1)):
        if options[name] < minimum:
            msg = f"{name} must be at least {minimum}, got {options[name]}."
            raise ValueError(msg)
    for name, zero_allowed in (("false_alarm_rate", False), ("review_fraction", True)):
        rate = options[name]
        if rate is None:
            continue
        if not isinstance(rate, int | float) or not (0 <= rate < 1 if zero_allowed else 0 < rate < 1):
            msg = f"{name} must be a number in {'[' if zero_allowed else '('}0, 1), got {rate!r}."
            raise ValueError(msg)
    if options["uncertainty"] not in UNCERTAINTY_UNITS:
        msg = f"uncertainty must be one of {sorted(UNCERTAINTY_UNITS)}, got {options['uncertainty']!r}."
        raise ValueError(msg)


def _check_label_options(options: dict[str, Any], given: dict[str, Any]) -> None:
    """Refuse fixed thresholds given with a false-alarm rate, and too few calibration images for the rate."""
    rate = options["false_alarm_rate"]
    fixed = [name for name in ("image_threshold", "pixel_threshold") if given.get(name) is not None]
    if rate is not None and fixed:
        msg = (
            f"--model.{fixed[0]} and --model.false_alarm_rate {rate} cannot both set the labels; leave out one of them."
        )
        raise ValueError(msg)
    if rate is not None and options["calibration_images"] < minimum_calibration_images(rate):
        msg = (
            f"a false-alarm rate of {rate} needs at least {minimum_calibration_images(rate)} calibration images per "
            f"category, got calibration_images={options['calibration_images']}; raise it or the false-alarm rate."
        )
        raise ValueError(msg)
