# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Few-shot references and calibrated thresholds, prepared before a run scores its first image.

With ``k_shot > 0``, a ``false_alarm_rate`` or a ``review_rate``, :func:`prepare_references` finds every category a
run will score. For each one without references made under the same options (a loaded checkpoint's are reused), it
draws normal images of that category, never test images (``images.py``). The references' patch tokens (the same
frozen CLIP pass) become the category's memory; the calibration images are scored with it, and the conformal rules
(``conformal.py``) turn their scores and uncertainties into the category's thresholds. A category with fewer normal
images than ``calibration_images`` asks for, but enough for the rates, calibrates on all of them, with a warning.
Both are saved with the head in the checkpoints written afterwards. Stored references or calibration images that a
later run scores are drawn again: no image is compared with itself. The log names a few of each category's images;
``few_shot_images.csv`` in the run's folder lists them all.

It works on the torch model, the run's options and the pre-processing transform: no Lightning module.
"""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.data.utils import read_image
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl.data.validation import check_image_files, file_pairs, loader_files
from anomalib_bayes_pfl.model.references import CategoryReferences, memory_tokens
from anomalib_bayes_pfl.model.torch_model import BayesPFLModel
from anomalib_bayes_pfl.settings import BayesPFLSettings

from .conformal import conformal_pixel_threshold, conformal_threshold, fewest_calibration_images, promise
from .images import (
    FEW_SHOT_IMAGES_CSV,
    ScoredImages,
    datamodule_images,
    draw,
    resolved_path,
    short_list,
    source_images,
    warn_about_random_splits,
    write_image_list,
)
from .thresholds import reference_settings

logger = logging.getLogger(__name__)

ENCODE_BATCH_SIZE = 8
Transform = Callable[[torch.Tensor], torch.Tensor]


def prepare_references(
    model: BayesPFLModel,
    settings: BayesPFLSettings,
    scored_images: list[str],
    *,
    class_names_of: Callable[[Sequence[str]], list[str]],
    transform: Transform | None,
    datamodule: Any | None,
    folder: Path | None,
) -> None:
    """Draw, memorise and calibrate each category of ``scored_images`` that needs it.

    Args:
        model: The torch model, whose references are set.
        settings: The run's options.
        scored_images: Every image the run scores.
        class_names_of: The class name of each of some image paths, by the run's one rule.
        transform: The pre-processing of test images.
        datamodule: The run's datamodule (its training split holds candidates), or ``None`` for loose files.
        folder: Where ``few_shot_images.csv`` lists the images (``None``: not written, e.g. on other processes).
    """
    if not settings.k_shot and not settings.calibrates:
        return
    categories = sorted(set(class_names_of(scored_images)))
    scored = ScoredImages(scored_images)
    wanted = reference_settings(settings)
    references = model.references
    source = settings.few_shot_source
    where = (
        f"--model.few_shot_source {source}"
        if source
        else ("the datamodule's training split" if datamodule is not None else "no datamodule (loose files)")
    )
    for category in categories:
        stale = _stale_note(references.differences(category, wanted), category)
        if stale:
            logger.warning("%s Drawing and calibrating them again.", stale)
        if references.matches(category, wanted):
            stored = references.get(category)
            scored_again = [p for p in [*stored.reference_images, *stored.calibration_images] if p in scored]
            if not scored_again:
                logger.info("Category '%s': using the references and thresholds stored with the head.", category)
                continue
            logger.warning(
                "Category '%s': %d of the references and calibration images stored with the head are scored in "
                "this run, under their own or another name (%s); drawing them again from images that are not.",
                category,
                len(scored_again),
                short_list(scored_again),
            )
        if source is not None:
            candidates = source_images(source, category, categories)
        else:
            warn_about_random_splits(datamodule, category)
            candidates = datamodule_images(datamodule, category, class_names_of)
        overlap = [path for path in candidates if path in scored]
        if overlap and source is not None:
            msg = (
                f"--model.few_shot_source {source} holds images that are also scored, under their own or another "
                f"name ({short_list(overlap)}); few-shot references and calibration images must not be test "
                f"images. Remove them from the folder."
            )
            raise ValueError(msg)
        if overlap:
            logger.warning(
                "Category '%s': %d normal training images of the datamodule are also scored, under their own or "
                "another name (%s); they are not drawn as references or calibration images.",
                category,
                len(overlap),
                short_list(overlap),
            )
        candidates = [resolved_path(path) for path in candidates if path not in overlap]
        _prepare_category(model, settings, category, candidates, wanted, where, transform, stale)
    if folder is not None:
        write_image_list(folder / FEW_SHOT_IMAGES_CSV, references, categories)


def _prepare_category(
    model: BayesPFLModel,
    settings: BayesPFLSettings,
    category: str,
    candidates: list[str],
    wanted: dict[str, Any],
    where: str,
    transform: Transform | None,
    stale: str,
) -> None:
    k_shot = settings.k_shot
    calibration_count = _calibration_count(settings, category, len(candidates))
    try:
        references, calibration = draw(candidates, k_shot, calibration_count, settings.eval_seed)
    except ValueError as error:
        known = sorted(name for name in model.references.categories if name != category)
        hint = f" The model holds references for {known}: name one with --model.class_name." if known else ""
        hint += f" {stale}" if stale else ""
        msg = (
            f"category '{category}' needs {error} normal images ({k_shot} references + {calibration_count} "
            f"calibration images), and {where} holds {len(candidates)}. Give a folder of its normal images with "
            f"--model.few_shot_source (one sub-folder per category for several), or lower --model.k_shot / "
            f"--model.calibration_images{_fewest(settings)}.{hint}"
        )
        raise ValueError(msg) from None
    check_image_files((path, None) for path in [*references, *calibration])
    tokens = []
    if references:
        patch_tokens = [model.encode_images(images).patch_tokens for images in _batches(model, references, transform)]
        tokens = memory_tokens([torch.cat(layer) for layer in zip(*patch_tokens, strict=True)])
    stored = CategoryReferences(tokens, dict(wanted), references, calibration)
    model.references.set(category, stored)
    if references:
        logger.info(
            "Category '%s': %d reference image(s) (%s) drawn with eval_seed %d from %s.",
            category,
            len(references),
            short_list(references),
            settings.eval_seed,
            where,
        )
    if calibration:
        _calibrate(model, settings, category, stored, _batches(model, calibration, transform))


def _stale_note(differences: dict[str, tuple[Any, Any]], category: str) -> str:
    """Say that the references and thresholds stored for ``category`` were made under other options, and the fix."""
    if not differences:
        return ""
    listed = ", ".join(f"{name} {stored!r} (now {now!r})" for name, (stored, now) in differences.items())
    options = " / ".join(f"--model.{name}" for name in differences)
    return (
        f"The references and thresholds stored with the head for '{category}' were made with {listed}, so they are "
        f"not used: leave out {options} (or give the stored value) to use them, or give normal images of "
        f"'{category}' to calibrate again."
    )


def _calibration_count(settings: BayesPFLSettings, category: str, candidates: int) -> int:
    """How many calibration images to draw: ``calibration_images``, or all there are when they suffice for the rates."""
    if not settings.calibrates:
        return 0
    available = candidates - settings.k_shot
    needed = fewest_calibration_images(settings)
    if needed <= available < settings.calibration_images:
        logger.warning(
            "Category '%s' has %d normal images besides its %d references, fewer than calibration_images=%d: "
            "calibrating on all %d (the rates need at least %d). More images give thresholds closer to the rates.",
            category,
            available,
            settings.k_shot,
            settings.calibration_images,
            available,
            needed,
        )
        return available
    return settings.calibration_images


def _fewest(settings: BayesPFLSettings) -> str:
    """The fewest calibration images, as a clause of a message (none without calibration)."""
    return f" (to no fewer than {fewest_calibration_images(settings)})" if settings.calibrates else ""


def _calibrate(
    model: BayesPFLModel,
    settings: BayesPFLSettings,
    category: str,
    stored: CategoryReferences,
    batches: list[torch.Tensor],
) -> None:
    """Score the calibration images of ``category`` and set its thresholds from their scores and uncertainties."""
    measure = settings.uncertainty if settings.review_rate is not None else None
    scores = [model.score(images, [category] * len(images), uncertainty=measure) for images in batches]
    confidence = settings.false_alarm_confidence
    calibrated = []
    if settings.false_alarm_rate is not None:
        rate = settings.false_alarm_rate
        stored.image_threshold = conformal_threshold(torch.cat([s.pred_score for s in scores]).cpu(), rate, confidence)
        stored.pixel_threshold = conformal_pixel_threshold(torch.cat([s.anomaly_map for s in scores]).cpu(), rate)
        calibrated.append(
            f"image threshold {stored.image_threshold:.6f} for {promise('false-alarm rate', rate, confidence)}, "
            f"pixel threshold {stored.pixel_threshold:.6f} for an expected share of flagged pixels of {rate}"
        )
    if settings.review_rate is not None:
        rate, name = settings.review_rate, "review rate"
        uncertainties = torch.cat([s.uncertainty for s in scores]).cpu()
        stored.review_threshold = conformal_threshold(uncertainties, rate, confidence, name)
        measured = f"{stored.review_threshold:.6g} ({settings.uncertainty})"
        calibrated.append(f"review threshold {measured} for {promise(name, rate, confidence)}")
    logger.info(
        "Category '%s': %s, calibrated on %d normal image(s) (%s).",
        category,
        "; ".join(calibrated),
        len(stored.calibration_images),
        short_list(stored.calibration_images),
    )


def _batches(model: BayesPFLModel, paths: list[str], transform: Transform | None) -> list[torch.Tensor]:
    """The images at ``paths``, pre-processed like test images, in batches on the model's device."""
    device = model.pixel_logit_scale.device
    batches = []
    for start in range(0, len(paths), ENCODE_BATCH_SIZE):
        images = []
        for path in paths[start : start + ENCODE_BATCH_SIZE]:
            image = read_image(path, as_tensor=True).unsqueeze(0)
            images.append(transform(image) if transform is not None else image)
        batches.append(torch.cat(images).to(device))
    return batches


class FewShotPreparation(Callback):
    """Prepare every category a run scores before its first image: validation, test and predict.

    Validation, which a zero- or few-shot model runs only so that anomalib's Engine writes its checkpoint, prepares
    the categories of the datamodule's test split, so that the checkpoint carries them.

    Args:
        model: The torch model when the run starts (it may be built late).
        settings: The run's options when it starts (a checkpoint may change them).
        class_names_of: The class name of each of some image paths, by the run's one rule.
        transform: The pre-processing of test images.
        prepared: Called once the categories are prepared (exported models' thresholds follow them).
    """

    def __init__(
        self,
        model: Callable[[], BayesPFLModel],
        settings: Callable[[], BayesPFLSettings],
        class_names_of: Callable[[Sequence[str]], list[str]],
        transform: Transform | None,
        prepared: Callable[[], None],
    ) -> None:
        self.model, self.settings, self.class_names_of = model, settings, class_names_of
        self.transform, self.prepared = transform, prepared

    def prepare(self, trainer: Trainer, images: list[str]) -> None:
        """Give every category of ``images`` its references and thresholds.

        Under the trainer's precision (``--trainer.precision bf16-mixed``), as the steps score: thresholds are
        calibrated on the scores they are compared with.
        """
        datamodule = getattr(trainer, "datamodule", None)
        folder = Path(trainer.default_root_dir) if trainer.is_global_zero else None
        with trainer.precision_plugin.forward_context():
            prepare_references(self.model(), self.settings(), images, class_names_of=self.class_names_of,
                               transform=self.transform, datamodule=datamodule, folder=folder)  # fmt: skip
        self.prepared()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the test split's categories, so that the checkpoint written after validation holds them."""
        del pl_module
        test_data = getattr(getattr(trainer, "datamodule", None), "test_data", None)
        if test_data is not None and not trainer.sanity_checking:
            self.prepare(trainer, [image for image, _ in file_pairs(test_data)])

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the categories of the test images."""
        del pl_module
        self.prepare(trainer, loader_files(trainer.test_dataloaders))

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the categories of the images to predict (loose files: by the one rule)."""
        del pl_module
        self.prepare(trainer, loader_files(trainer.predict_dataloaders))
