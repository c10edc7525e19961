# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Where few-shot references and calibration images come from, and that they are never images a run scores.

- from ``few_shot_source``: a folder of normal images (one category), or one sub-folder per category named as its
  class name; otherwise
- from the datamodule's training split: ``ZeroShotCrossDataset``'s target categories (MVTec AD / VisA
  ``train/good``; the datamodules' training subsets), or any anomalib datamodule's ``train_data`` (MVTec AD's
  ``train/good``, ``Folder``'s ``normal_dir`` images that anomalib kept for training).

A generator seeded with ``eval_seed`` permutes the category's candidates (sorted paths): the first ``k_shot`` are the
references (so 1 reference is among 2, and 2 among 4), the last ``calibration_images`` calibrate the thresholds.
Scored images are recognised by path and by content (a copy under another name is the same image).
"""

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from anomalib.data.utils import TestSplitMode

from anomalib_bayes_pfl.data.image_lists import image_files, normal_images
from anomalib_bayes_pfl.model.references import ReferenceMemory

logger = logging.getLogger(__name__)

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


def datamodule_images(
    datamodule: Any, category: str, class_names_of: Callable[[Sequence[str]], list[str]]
) -> list[str]:
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
    ordered = sorted(candidates)
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [ordered[index] for index in order]
    return shuffled[:k_shot], shuffled[len(shuffled) - calibration_images :]


def short_list(paths: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` file names of ``paths`` and how many more, for a log line that stays one line."""
    names = ", ".join(Path(path).name for path in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def resolved_path(path: str) -> str:
    """The absolute path of ``path``, with ``~`` and links resolved: how images are compared by name."""
    return str(Path(path).expanduser().resolve())


def _digest(path: str) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


class ScoredImages:
    """The images a run scores, recognised by their path or by their content: a copy under another name is the same.

    Only files of the same size as a scored image are read and hashed, so the check costs almost nothing when no
    image is shared.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = {resolved_path(path) for path in paths}
        self._by_size: dict[int, list[str]] = {}
        for path in self.paths:
            with contextlib.suppress(OSError):
                self._by_size.setdefault(os.stat(path).st_size, []).append(path)
        self._digests: dict[int, set[str]] = {}

    def __contains__(self, path: object) -> bool:
        resolved = resolved_path(str(path))
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


def write_image_list(path: Path, references: ReferenceMemory, categories: list[str]) -> None:
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


def warn_about_random_splits(datamodule: Any, category: str) -> None:
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
