# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Few-shot references and calibrated thresholds, prepared before anything is scored.

With ``k_shot > 0`` or a ``false_alarm_rate``, :class:`FewShotPreparation` finds, before a test or a prediction
scores its first image, every category it will score. For each one without references made under the same options
(a loaded checkpoint's are reused), it draws normal images of that category, never test images:

- from ``few_shot_source``: a folder of normal images (one category), or one sub-folder per category named as its
  class name; otherwise
- from the datamodule's training split: ``ZeroShotCrossDataset``'s target categories (MVTec AD / VisA
  ``train/good``; the datamodules' training subsets), or any anomalib datamodule's ``train_data`` (MVTec AD's
  ``train/good``, ``Folder``'s ``normal_dir`` images that anomalib kept for training).

A generator seeded with ``eval_seed`` permutes the category's candidates (sorted paths): the first ``k_shot`` are the
references (so 1 reference is among 2, and 2 among 4), the last ``calibration_images`` calibrate the thresholds, and
there must be enough candidates for both. The references' patch tokens (the same frozen CLIP pass) become the
category's memory; the calibration images are scored with it, and the post-processor's conformal rules turn their
scores into the category's thresholds. Both are saved with the head in the checkpoints written afterwards. Stored
references or calibration images that a later run scores are drawn again: no image is compared with itself, also
not a copy under another name (images are compared by content too). The log names a few of each category's images;
``few_shot_images.csv`` in the run's folder lists them all.
"""

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from anomalib.data.utils import TestSplitMode, read_image
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bayes_pfl.data.cross_dataset import image_files, normal_images
from anomalib_bayes_pfl.data.validation import check_image_files, file_pairs, loader_files
from anomalib_bayes_pfl.model.post_processor import conformal_image_threshold, conformal_pixel_threshold
from anomalib_bayes_pfl.model.references import CategoryReferences, memory_tokens

if TYPE_CHECKING:
    from anomalib_bayes_pfl.model.lightning_model import BayesPFL

logger = logging.getLogger(__name__)

ENCODE_BATCH_SIZE = 8
FEW_SHOT_IMAGES_CSV = "few_shot_images.csv"


def source_images(source: str, category: str, categories: Sequence[str]) -> list[str]:
    """The normal images that ``few_shot_source`` holds for ``category`` (``categories``: all that are scored).

    Raises:
        FileNotFoundError: If the folder does not exist, or holds no images for ``category``.
    """
    folder = Path(source).expanduser()
    if not folder.is_dir():
        msg = f"--model.few_shot_source {source} is not a folder; give a folder of normal images of the category."
        raise FileNotFoundError(msg)
    if (folder / category).is_dir():
        return [str(path) for path in image_files(folder / category, "*")]
    flat = [str(path) for path in image_files(folder, "*")]
    if flat and len(set(categories)) == 1:
        return flat
    msg = (
        f"--model.few_shot_source {source} holds no normal images of '{category}': give a folder of normal images when "
        f"one category is scored, or one sub-folder per category named as its class name ({sorted(set(categories))})."
    )
    raise FileNotFoundError(msg)


def datamodule_images(datamodule: Any, category: str, class_names_of: Any) -> list[str]:
    """The normal training images of ``category`` that the datamodule holds (none without a training split).

    ``ZeroShotCrossDataset`` lists its target categories' (its own training split is the auxiliary dataset); other
    datamodules' ``train_data`` is read. ``class_names_of`` gives each image's class name, as the model would.
    """
    listed = getattr(datamodule, "few_shot_candidates", None)
    normal = listed() if listed is not None else normal_images(getattr(datamodule, "train_data", None))
    return sorted(path for path, name in zip(normal, class_names_of(normal), strict=True) if name == category)


def draw(candidates: Sequence[str], k_shot: int, calibration_images: int, seed: int) -> tuple[list[str], list[str]]:
    """The references (first ``k_shot``) and calibration images (last ``calibration_images``) of a seeded permutation.

    Raises:
        ValueError: If there are fewer candidates than both need.
    """
    needed = k_shot + calibration_images
    if len(candidates) < needed:
        raise ValueError(str(needed))
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [sorted(candidates)[index] for index in order]
    return shuffled[:k_shot], shuffled[len(shuffled) - calibration_images :]


class FewShotPreparation(Callback):
    """Give every category a run scores its references and calibrated thresholds before its first image is scored.

    Validation, which a zero- or few-shot model runs only so that anomalib's Engine writes its checkpoint, prepares
    the categories of the datamodule's test split, so that the checkpoint carries them.
    """

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the test categories, so that the checkpoint written at the end of validation holds them."""
        test_data = getattr(getattr(trainer, "datamodule", None), "test_data", None)
        if test_data is not None and not trainer.sanity_checking:
            self.prepare(trainer, pl_module, [image for image, _ in file_pairs(test_data)])

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the categories of the test images."""
        self.prepare(trainer, pl_module, loader_files(trainer.test_dataloaders))

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prepare the categories of the images to predict (loose files: the class name's)."""
        self.prepare(trainer, pl_module, loader_files(trainer.predict_dataloaders))

    @staticmethod
    def prepare(trainer: Trainer, pl_module: "BayesPFL", scored_images: list[str]) -> None:
        """Draw, memorise and calibrate each category of ``scored_images`` that needs it."""
        options = pl_module.options
        if not options["k_shot"] and options["false_alarm_rate"] is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        names = [name.class_name for name in pl_module.image_categories(scored_images, len(scored_images))]
        categories = sorted(set(names))
        scored = ScoredImages(scored_images)
        settings = pl_module.reference_settings()
        references = pl_module.model.references
        source = options["few_shot_source"]
        where = (
            f"--model.few_shot_source {source}"
            if source
            else ("the datamodule's training split" if datamodule is not None else "no datamodule (loose files)")
        )
        for category in categories:
            if references.matches(category, settings):
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
                _warn_about_random_splits(datamodule, category)
                candidates = datamodule_images(
                    datamodule,
                    category,
                    lambda paths: [name.class_name for name in pl_module.image_categories(paths, len(paths))],
                )
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
            candidates = [_resolved(path) for path in candidates if path not in overlap]
            _prepare_category(pl_module, category, candidates, settings, where)
        pl_module.apply_export_thresholds()
        if trainer.is_global_zero:
            _write_image_list(Path(trainer.default_root_dir) / FEW_SHOT_IMAGES_CSV, references, categories)


def short_list(paths: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` file names of ``paths`` and how many more, for a log line that stays one line."""
    names = ", ".join(Path(path).name for path in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _digest(path: str) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


class ScoredImages:
    """The images a run scores, recognised by their path or by their content: a copy under another name is the same.

    Only files of the same size as a scored image are read and hashed, so the check costs almost nothing when no
    image is shared.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = {_resolved(path) for path in paths}
        self._by_size: dict[int, list[str]] = {}
        for path in self.paths:
            with contextlib.suppress(OSError):
                self._by_size.setdefault(os.stat(path).st_size, []).append(path)
        self._digests: dict[int, set[str]] = {}

    def __contains__(self, path: object) -> bool:
        resolved = _resolved(str(path))
        if resolved in self.paths:
            return True
        try:
            size = os.stat(resolved).st_size
        except OSError:  # a stored path from another machine: only its name can be compared
            return False
        same_size = self._by_size.get(size)
        if not same_size:
            return False
        if size not in self._digests:
            self._digests[size] = {_digest(candidate) for candidate in same_size}
        return _digest(resolved) in self._digests[size]


def _write_image_list(path: Path, references: Any, categories: list[str]) -> None:
    """List the references and calibration images of the scored categories, one row per image."""
    rows = [
        {"category": category, "role": role, "image_path": image}
        for category in categories
        if references.get(category) is not None
        for role, images in (
            ("reference", references.get(category).reference_images),
            ("calibration", references.get(category).calibration_images),
        )
        for image in images
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["category", "role", "image_path"]).to_csv(path, index=False)
    logger.info("Few-shot references and calibration images of %d categories: %s", len(categories), path)


def _warn_about_random_splits(datamodule: Any, category: str) -> None:
    """Warn when anomalib splits the datamodule's normal images at random: the references then change every run."""
    if getattr(datamodule, "seed", 0) is not None:
        return
    mode = getattr(datamodule, "test_split_mode", None)
    splits_normals = mode == TestSplitMode.SYNTHETIC or (
        mode == TestSplitMode.FROM_DIR and getattr(datamodule, "normal_test_dir", "") is None
    )
    if splits_normals:
        logger.warning(
            "%s moves a random share of its normal images into the test set, differently in every run without "
            "--data.seed: the test set and the few-shot references and thresholds of '%s' change with it. Pass "
            "--data.seed 0 (any fixed value) to repeat a run.",
            type(datamodule).__name__,
            category,
        )


def _prepare_category(
    pl_module: "BayesPFL", category: str, candidates: list[str], settings: dict[str, Any], where: str
) -> None:
    options = pl_module.options
    k_shot, false_alarm_rate = options["k_shot"], options["false_alarm_rate"]
    calibration_count = options["calibration_images"] if false_alarm_rate is not None else 0
    model = pl_module.model
    try:
        references, calibration = draw(candidates, k_shot, calibration_count, options["eval_seed"])
    except ValueError as error:
        known = sorted(name for name in model.references.categories if name != category)
        hint = f" The model holds references for {known}: name one with --model.class_name." if known else ""
        msg = (
            f"category '{category}' needs {error} normal images ({k_shot} references + {calibration_count} "
            f"calibration images), and {where} holds {len(candidates)}. Give a folder of its normal images with "
            f"--model.few_shot_source (one sub-folder per category for several), or lower --model.k_shot / "
            f"--model.calibration_images.{hint}"
        )
        raise ValueError(msg) from None
    check_image_files((path, None) for path in [*references, *calibration])
    tokens = []
    if references:
        patch_tokens = [model.encode_images(images).patch_tokens for images in _batches(pl_module, references)]
        tokens = memory_tokens([torch.cat(layer) for layer in zip(*patch_tokens, strict=True)])
    stored = CategoryReferences(tokens, dict(settings), references, calibration)
    model.references.set(category, stored)
    if calibration:
        scores = [model.score(images, [category] * len(images)) for images in _batches(pl_module, calibration)]
        image_scores = torch.cat([score.pred_score for score in scores]).cpu()
        maps = torch.cat([score.anomaly_map for score in scores]).cpu()
        stored.image_threshold = conformal_image_threshold(image_scores, false_alarm_rate)
        stored.pixel_threshold = conformal_pixel_threshold(maps, false_alarm_rate)
    logger.info(
        "Category '%s': %d reference image(s) (%s) drawn with eval_seed %d from %s.",
        category,
        len(references),
        short_list(references),
        options["eval_seed"],
        where,
    )
    if calibration:
        logger.info(
            "Category '%s': image threshold %.6f, pixel threshold %.6f for a false-alarm rate of %s, calibrated on "
            "%d normal image(s) (%s).",
            category,
            stored.image_threshold,
            stored.pixel_threshold,
            false_alarm_rate,
            len(calibration),
            short_list(calibration),
        )


def _batches(pl_module: "BayesPFL", paths: list[str]) -> list[torch.Tensor]:
    """The images at ``paths``, pre-processed like test images, in batches on the model's device."""
    transform = pl_module.pre_processor.transform if pl_module.pre_processor else None
    batches = []
    for start in range(0, len(paths), ENCODE_BATCH_SIZE):
        images = []
        for path in paths[start : start + ENCODE_BATCH_SIZE]:
            image = read_image(path, as_tensor=True).unsqueeze(0)
            images.append(transform(image) if transform is not None else image)
        batches.append(torch.cat(images).to(pl_module.device))
    return batches
