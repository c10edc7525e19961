# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Check image and mask files before any work starts, and pixel values as batches arrive, naming what is bad.

anomalib reads images with ``PIL.Image.convert("RGB")``: grayscale, palette and RGBA files come out right, but
16-bit and float images are clipped to 8 bits (almost every pixel becomes white) without a word, and a truncated file
fails deep inside a data-loader worker. Each file is checked by :func:`~.image_reader.check_image_file`, the rule
every reader of the package follows; files are checked on several threads, since PIL decodes without the GIL.
"""

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import torch
from anomalib import TaskType
from anomalib.data import Batch
from anomalib.data.utils import LabelName
from lightning.pytorch import Callback, LightningModule, Trainer

from .image_reader import check_image_file

MAX_LISTED = 10
# Threads that check files: decoding JPEGs at setup takes about 3.5 ms per VisA image on one.
CHECK_THREADS = min(8, os.cpu_count() or 1)
# The datamodule subsets each stage reads (anomalib predicts on the test subset).
SUBSETS_READ = {
    "fit": ("train_data", "val_data", "test_data"),
    "validate": ("val_data",),
    "test": ("test_data",),
    "predict": ("test_data",),
}


def _pair_problems(pair: tuple[str, str | None]) -> list[str]:
    """The problems of one ``(image_path, mask_path or None)`` pair."""
    image_path, mask_path = pair
    size, problem = check_image_file(str(image_path))
    problems = [problem] if problem else []
    if isinstance(mask_path, str) and mask_path:  # normal images have None, NaN or ""
        mask_size, mask_problem = check_image_file(mask_path, "mask")
        if mask_problem:
            problems.append(mask_problem)
        elif size is not None and mask_size != size:
            mask_shape, image_shape = "x".join(map(str, mask_size)), "x".join(map(str, size))
            problems.append(f"mask {mask_path} is {mask_shape} but its image {image_path} is {image_shape}")
    return problems


def check_image_files(samples: Iterable[tuple[str, str | None]]) -> None:
    """Check every ``(image_path, mask_path or None)`` pair.

    Raises:
        ValueError: Listing every missing, unreadable, truncated or high-bit-depth file, and every mask whose size
            differs from its image's.
    """
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        problems = [problem for found in pool.map(_pair_problems, samples) for problem in found]
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        msg = f"{len(problems)} problem(s) with the dataset files:\n  {listed}{more}"
        raise ValueError(msg)


def check_finite_images(batch: Batch) -> None:
    """Refuse images with NaN or Inf values, naming them: they would poison every score and gradient silently."""
    bad = (~torch.isfinite(batch.image)).flatten(1).any(dim=1)
    if bad.any():
        paths = [path for path, is_bad in zip(batch.image_path or [], bad.tolist(), strict=False) if is_bad]
        msg = f"images contain NaN or Inf values: {paths or 'batch without paths'}; check the data and transforms."
        raise ValueError(msg)


def file_pairs(dataset: object) -> list[tuple[str, str | None]]:
    """``(image, mask or None)`` of every item, as anomalib reads them, or the files of a ``PredictDataset``.

    anomalib reads a mask only for an anomalous image of a segmentation dataset (a normal image gets an empty one),
    so other mask paths are not judged: BTech, for one, lists mask files for normal images that do not exist.
    """
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [(str(image), None) for image in getattr(dataset, "image_filenames", [])]
    reads_masks = getattr(dataset, "task", None) == TaskType.SEGMENTATION and "mask_path" in samples
    masks = samples["mask_path"] if reads_masks else [None] * len(samples)
    return [
        (str(image), mask if label == LabelName.ABNORMAL and isinstance(mask, str) and mask else None)
        for image, mask, label in zip(samples["image_path"], masks, samples["label_index"], strict=True)
    ]


def loader_files(loaders: object) -> list[str]:
    """The image files of a stage's data loaders, in order (``trainer.test_dataloaders`` and the like)."""
    loaders = loaders if isinstance(loaders, list) else [loaders]
    return [image for loader in loaders for image, _ in file_pairs(loader.dataset)]


class DataCheck(Callback):
    """Check a run's data before and while it is used: files before the first batch, pixel values in every batch.

    The datamodule's subsets that a stage reads are checked at setup (a fit checks them all, target included, so that
    a bad test file stops it before training), and loose files given to ``anomalib predict`` when prediction starts;
    every file is checked before anything is reported, so that one run names every bad file, before anything is
    trained or scored.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the image and mask files of the datamodule's subsets that ``stage`` reads."""
        del pl_module
        datamodule = getattr(trainer, "datamodule", None)
        subsets = (getattr(datamodule, name, None) for name in SUBSETS_READ.get(stage, SUBSETS_READ["fit"]))
        # Each file once, in order (validation may copy training).
        check_image_files(dict.fromkeys(pair for subset in subsets for pair in file_pairs(subset)))

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the files of prediction dataloaders that no datamodule supplied (checked at setup otherwise)."""
        del pl_module
        if getattr(trainer, "datamodule", None) is not None:
            return
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, list) else [loaders]
        check_image_files(dict.fromkeys(pair for loader in loaders for pair in file_pairs(loader.dataset)))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Batch, *indices: int) -> None:
        """Check the pixel values of a batch (of any stage: the same hook serves all four)."""
        del trainer, pl_module, indices
        check_finite_images(batch)

    on_validation_batch_start = on_test_batch_start = on_predict_batch_start = on_train_batch_start
