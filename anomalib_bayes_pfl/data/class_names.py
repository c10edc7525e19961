# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The one rule that names each image's dataset, category and class name.

anomalib batches carry no per-image category. Bayes-PFL writes a class name into its prompts, and every report
groups images by category, so one function, :func:`image_categories`, answers both for every image of every run:
prompts, the per-category table, ``predictions.csv``, the review groups, the visualisations and the logs read its
answer. In the MVTec AD layout (``<root>/<category>/{train,test}/<defect>/<image>``) and the processed VisA layout
(``<root>/visa_pytorch/<category>/{train,test}/<defect>/<image>``) the category is the folder above the split
folder, for a datamodule's images and for loose files alike, so that an image scores the same whichever way it is
given.
"""

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

SPLIT_FOLDERS = frozenset({"train", "test"})
# What the prompts say of an image whose category nothing names.
DEFAULT_CLASS_NAME = "object"
# The authors' names of categories that an anomalib datamodule names otherwise (authors: dataset/datasets/BTAD.py
# L28); they write them into the prompts, so a head they trained knows these words.
NO_CATEGORY = "nothing: no category in the data or its path, and no --model.class_name"
CLASS_NAME_OPTION = "--model.class_name"
STORED_CATEGORY = "the one category the checkpoint stores"
AUTHORS_CATEGORY_NAMES = {"BTech": {"01": "metal1", "02": "wood", "03": "metal2"}}


class ImageCategory(NamedTuple):
    """Where an image belongs, and what its prompts call it.

    Attributes:
        dataset: The dataset's name (``""`` for loose files): a row of the per-category table belongs to it.
        category: The table row, review group and ``category`` column of the image.
        class_name: The word in its prompts: ``--model.class_name`` when given, else the category.
        source: How the category was found, for the logs.
    """

    dataset: str
    category: str
    class_name: str
    source: str


def authors_category_name(dataset: str, category: str) -> str:
    """The authors' name of ``category`` of anomalib's ``dataset`` datamodule, or ``category`` where they have none.

    Example:
        >>> authors_category_name("BTech", "02"), authors_category_name("MPDD", "tubes")
        ('wood', 'tubes')
    """
    return AUTHORS_CATEGORY_NAMES.get(dataset, {}).get(category, category)


def class_name_from_path(image_path: str) -> str | None:
    """Return the category folder of an MVTec-style or VisA-style image path, or ``None`` for other layouts.

    Example:
        >>> class_name_from_path("datasets/MVTecAD/metal_nut/test/scratch/000.png")
        'metal_nut'
        >>> class_name_from_path("my_images/part_01.png") is None
        True
    """
    parts = Path(image_path).parts
    if len(parts) >= 4 and parts[-3] in SPLIT_FOLDERS:
        return parts[-4]
    return None


def fallback_category(
    class_name: str | None, stored_categories: Sequence[str] = (), class_name_source: str = CLASS_NAME_OPTION
) -> tuple[str, str]:
    """The category of an image that neither its datamodule nor its path names, and what it came from.

    ``class_name``; else the one category a checkpoint stores references or thresholds for (a few-shot or calibrated
    checkpoint of one part); else ``"object"``. Predict gives loose files this category, and an export, whose
    images carry no path, scores it: one rule for both (``calibration/thresholds.py``).

    Args:
        class_name: The model's ``class_name`` option.
        stored_categories: The categories the model's head stores references or thresholds for.
        class_name_source: Where ``class_name`` was set, for the logs (the command line, or a checkpoint).

    Example:
        >>> fallback_category(None, ["grain_plank"])
        ('grain_plank', 'the one category the checkpoint stores')
        >>> fallback_category(None, ["tile_c", "tile_d"])[0], fallback_category("gear", ["tile_c"])[0]
        ('object', 'gear')
    """
    if class_name:
        return class_name, class_name_source
    if len(stored_categories) == 1:
        return next(iter(stored_categories)), STORED_CATEGORY
    return DEFAULT_CLASS_NAME, NO_CATEGORY


def class_name_source(given: Collection[str], stored_in: str | None) -> str:
    """Where the ``class_name`` option was set, for the logs: the command line, or the checkpoint that stored it.

    Example:
        >>> class_name_source({"class_name"}, None), class_name_source(set(), "checkpoint x.ckpt")
        ('--model.class_name', 'the class_name stored in checkpoint x.ckpt')
    """
    return CLASS_NAME_OPTION if "class_name" in given or stored_in is None else f"the class_name stored in {stored_in}"


def _category_and_source(
    path: str | None,
    lookup: Callable[[str], str | None] | None,
    datamodule_category: str,
    fallback: tuple[str, str],
) -> tuple[str, str]:
    if path is not None:
        listed = lookup(str(path)) if lookup is not None else None
        if listed:
            return listed, "the datamodule"
        from_path = class_name_from_path(str(path))
        if from_path:
            return from_path, "the MVTec AD / VisA layout of its path"
    if datamodule_category:
        return datamodule_category, "the datamodule's category"
    return fallback


def image_categories(
    image_paths: Sequence[str | None] | None,
    count: int,
    *,
    class_name: str | None,
    datamodule: Any | None,
    stored_categories: Sequence[str] = (),
    class_name_source: str = CLASS_NAME_OPTION,
) -> list[ImageCategory]:
    """Return each of ``count`` images' dataset, category and class name.

    The category is, in this order: the one ``datamodule`` lists for the image (``ZeroShotCrossDataset``); the
    category folder of an MVTec AD / VisA path; the datamodule's category; then :func:`fallback_category`
    (``class_name``, for loose files the one stored category, ``"object"``), the rule an export follows too.
    Categories of anomalib's ``dataset`` datamodules take the authors' names where they have one (BTech's ``01`` is
    ``metal1``). The class name is ``class_name`` when given (one word for every image), else the category.

    Args:
        image_paths: The images' paths, or ``None`` (tensors without paths, e.g. an exported model's input).
        count: The number of images.
        class_name: The model's ``class_name`` option.
        datamodule: The run's datamodule, or ``None`` (loose files given to ``anomalib predict``).
        stored_categories: The categories the model's head stores references or thresholds for.
        class_name_source: Where ``class_name`` was set, for the logs.

    Example:
        >>> [name.category for name in image_categories(
        ...     ["MVTecAD/screw/test/good/0.png", "upload/1.png"], 2, class_name=None, datamodule=None)]
        ['screw', 'object']
        >>> image_categories(["MVTecAD/screw/test/good/0.png"], 1, class_name="bolt", datamodule=None)[0].class_name
        'bolt'
    """
    lookup = getattr(datamodule, "class_name_of", None)
    dataset_of = getattr(datamodule, "dataset_of", None)
    default_dataset = str(getattr(datamodule, "name", "") or "")
    datamodule_category = str(getattr(datamodule, "category", "") or "")
    paths = list(image_paths) if image_paths is not None else [None] * count
    # A datamodule's images without a category are data of their own (a Folder of another part may be calibrated on
    # its normal images); only loose files, like an export's inputs, take the checkpoint's one category.
    stored = stored_categories if datamodule is None else ()
    fallback = fallback_category(class_name, stored, class_name_source)
    names = []
    for path in paths:
        dataset = (dataset_of(str(path)) if dataset_of is not None and path is not None else None) or default_dataset
        category, source = _category_and_source(path, lookup, datamodule_category, fallback)
        category = authors_category_name(dataset, category)
        names.append(ImageCategory(dataset, category, class_name or category, source))
    return names


def log_categories(names: Sequence[ImageCategory]) -> None:
    """Say which category and class name the images of a run get, and from what; warn for those nothing names."""
    counts = Counter((name.category, name.class_name, name.source) for name in names)
    for (category, class_name, source), count in sorted(counts.items()):
        prompt = "" if class_name == category else f", prompted as '{class_name}'"
        logger.info("%d image(s) of category '%s'%s (category from %s).", count, category, prompt, source)
    unnamed = sum(count for (_, _, source), count in counts.items() if source == NO_CATEGORY)
    if unnamed:
        logger.warning(
            "%d image(s) have no category: their prompts say '%s'. Pass --model.class_name <part> to score them as "
            "that part (a trained head knows the words of its auxiliary categories best).",
            unnamed,
            DEFAULT_CLASS_NAME,
        )
