# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""What the Lightning module builds from its options: the pre-processor, the torch model and the run's callbacks.

The torch model is built at first use, once the options are known: ``anomalib test|predict --ckpt_path X`` then
builds the CLIP and head that X was trained with, never the defaults of an unset command line.
"""

import logging
from collections.abc import Callable, Sequence

import torch
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import Callback
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize, Transform

from anomalib_bayes_pfl import calibration, reporting
from anomalib_bayes_pfl.data import DataCheck, DropSamplerPadding, ImageCategory
from anomalib_bayes_pfl.model.backbone import load_clip
from anomalib_bayes_pfl.model.reference_checkpoint import load_head_weights
from anomalib_bayes_pfl.model.torch_model import BayesPFLModel
from anomalib_bayes_pfl.settings import BayesPFLSettings

logger = logging.getLogger(__name__)


def clip_pre_processor(image_size: tuple[int, int] | None = None) -> PreProcessor:
    """Resize to a square with antialiased bicubic interpolation (aspect ratio not kept), then CLIP's normalisation."""
    return PreProcessor(
        transform=Compose(
            [
                Resize(image_size or (518, 518), interpolation=InterpolationMode.BICUBIC, antialias=True),
                Normalize(mean=list(OPENAI_DATASET_MEAN), std=list(OPENAI_DATASET_STD)),
            ]
        ),
    )


def set_image_size(pre_processor: PreProcessor, image_size: int) -> None:
    """Resize to ``image_size`` from now on, in place: the datamodule resizes in its workers with this transform.

    Exported models keep the antialiasing (anomalib's export transform would drop it).
    """
    for resize in (step for step in pre_processor.transform.transforms if isinstance(step, Resize)):
        resize.size = [image_size] * 2
    pre_processor.export_transform = pre_processor.transform


def build_model(
    settings: BayesPFLSettings, *, iad_log_det_per_batch: bool, prompt_weights: str | None
) -> BayesPFLModel:
    """The frozen CLIP and the head of ``settings``, with ``prompt_weights`` loaded if given."""
    # Builds may happen inside Lightning's inference-mode loops; the head must stay trainable and loadable.
    with torch.inference_mode(False):
        clip = load_clip(settings.clip_model, settings.clip_pretrained, quick_gelu=settings.clip_quick_gelu)
        model = BayesPFLModel(
            settings.head_config(iad_log_det_per_batch=iad_log_det_per_batch), clip, clip_name=settings.clip_model
        )
        if prompt_weights is not None:
            load_head_weights(model, prompt_weights)
            logger.info("Loaded trained Bayes-PFL head from %s; it is not trained again.", prompt_weights)
    model.few_shot = settings.k_shot > 0
    return model


def build_callbacks(
    model: Callable[[], BayesPFLModel],
    settings: Callable[[], BayesPFLSettings],
    image_categories: Callable[[Sequence[str]], list[ImageCategory]],
    class_names_of: Callable[[Sequence[str]], list[str]],
    transform: Transform | None,
    prepared: Callable[[], None],
) -> tuple[list[Callback], list[Callback]]:
    """The callbacks before anomalib's (data checks, then references and thresholds) and after them (the reports).

    Args:
        model: The torch model, built when first asked for.
        settings: The options now (a loaded checkpoint may change them).
        image_categories: Each image's dataset, category and class name.
        class_names_of: Each image's class name, the word in its prompts.
        transform: The pre-processor's, which reference images go through.
        prepared: Called once references and thresholds are prepared (exported models label with them).
    """
    references = calibration.FewShotPreparation(model, settings, class_names_of, transform, prepared)
    metrics = reporting.PerCategoryMetrics(image_categories, settings)
    page = reporting.RunReport(settings, lambda: metrics.table, lambda: model().references.categories)
    return [DataCheck(), DropSamplerPadding(), references], [metrics, reporting.PredictionTable(settings), page]
