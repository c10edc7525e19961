# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Class name of each image, which Bayes-PFL writes into its prompts.

anomalib batches carry no per-image category, so the name is read from the image path. In the MVTec AD layout
(``<root>/<category>/{train,test}/<defect>/<image>``) and the processed VisA layout
(``<root>/visa_pytorch/<category>/{train,test}/<defect>/<image>``) it is the folder above the split folder.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

SPLIT_FOLDERS = frozenset({"train", "test"})
# The authors' names of categories that an anomalib datamodule names otherwise (authors: dataset/datasets/BTAD.py
# L28); they write them into the prompts, so a head they trained knows these words.
AUTHORS_CATEGORY_NAMES = {"BTech": {"01": "metal1", "02": "wood", "03": "metal2"}}


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


def category_of(image_path: str | None, lookup: Callable[[str], str | None] | None = None) -> str | None:
    """Category of one image: the datamodule's ``lookup`` first, then the MVTec AD / VisA path layout."""
    if image_path is None:
        return None
    return (lookup(str(image_path)) if lookup is not None else None) or class_name_from_path(str(image_path))


def resolve_class_names(
    image_paths: Sequence[str] | None,
    num_images: int,
    *,
    override: str | None,
    fallback: str,
    lookup: Callable[[str], str | None] | None = None,
    dataset: str | None = None,
) -> list[str]:
    """Return one class name per image.

    Precedence: ``override`` (the model's ``class_name``) for every image; else the image's category from the
    datamodule (``lookup``, e.g. :meth:`ZeroShotCrossDataset.class_name_of`) or from its MVTec AD / VisA path;
    else ``fallback`` (the datamodule's category when it has one, otherwise ``"object"``). Categories of anomalib's
    ``dataset`` datamodule take the authors' names where they have one (BTech's ``01`` is ``metal1``).
    """
    if override is not None:
        return [override] * num_images
    paths = image_paths if image_paths is not None else [None] * num_images
    names = [category_of(path, lookup) or fallback for path in paths]
    return [authors_category_name(dataset, name) if dataset else name for name in names]
