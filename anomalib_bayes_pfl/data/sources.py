# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The dataset of each side of ``ZeroShotCrossDataset``, built from a root in a layout or from anomalib datamodules.

Each side is either a root and a format (:class:`DataSource`; ``layouts.py`` describes the formats, ``masks.py`` how
masks are found), or a list of anomalib datamodules (:class:`DataModuleSource`: BTech, MPDD, Kolektor, MVTecAD2, BMAD,
..., one per category), whose test subsets it reads. A side's datasets are read together as one
(:func:`combine`).
"""

import logging
from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path
from typing import get_args

import pandas as pd
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, MVTecAD, Visa
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.datasets.image.mvtecad import MVTecADDataset
from anomalib.data.datasets.image.visa import VisaDataset
from anomalib.data.utils import LabelName, Split

from .class_names import authors_category_name
from .datamodule_subsets import SUBSETS, subsets_of
from .image_lists import image_files, normal_images
from .layouts import EXPECTED_LAYOUTS, NORMAL_FOLDER, DatasetFormat, category_root, discover_categories, layout_hint
from .masks import defect_folders, match_masks

logger = logging.getLogger(__name__)

DEFAULT_ROOTS = {"auxiliary": "./datasets/visa", "target": "./datasets/MVTecAD"}


@dataclass(frozen=True)
class DataSource:
    """One side of the protocol and its layout; ``side`` (``auxiliary`` or ``target``) names its ``--data`` options.

    Raises:
        ValueError: On an unknown format, or folder names given for a format that has fixed ones.
    """

    side: str
    root: Path
    dataset_format: DatasetFormat
    categories: list[str] | None = None
    normal_dir: str | None = None
    mask_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dataset_format not in get_args(DatasetFormat):
            msg = f"{self.option}_format must be one of {list(get_args(DatasetFormat))}, got '{self.dataset_format}'."
            raise ValueError(msg)
        named = [name for name in ("normal_dir", "mask_dir") if getattr(self, name) is not None]
        if named and self.dataset_format != "folder":
            msg = (
                f"{self.option}_{named[0]} applies to the folder format only; the {self.dataset_format} layout has "
                f"fixed folder names ({EXPECTED_LAYOUTS[self.dataset_format]})."
            )
            raise ValueError(msg)

    @property
    def option(self) -> str:
        """Prefix of this side's CLI options, for messages."""
        return f"--data.{self.side}"

    @property
    def base(self) -> Path:
        """Folder holding the category folders."""
        return category_root(self.root, self.dataset_format)

    @property
    def normal_folder(self) -> str:
        """Name of the normal image folder of a ``folder`` category."""
        return self.normal_dir or NORMAL_FOLDER

    def resolve(self) -> list[str]:
        """The categories to use: the requested ones, or all found.

        Raises:
            FileNotFoundError: If there are no categories in the expected layout, or requested ones are missing.
        """
        found = discover_categories(self.root, self.dataset_format, self.normal_folder)
        if not found:
            msg = (
                f"no {self.dataset_format} categories found under {self.base} for the {self.side} dataset: "
                f"{self.option}_format {self.dataset_format} expects {EXPECTED_LAYOUTS[self.dataset_format]}. "
                f"{layout_hint(self.root, self.dataset_format, self.normal_folder, self.option)}"
            )
            raise FileNotFoundError(msg)
        if self.categories is None:
            return found
        missing = [category for category in self.categories if category not in found]
        if missing:
            msg = (
                f"{self.side} categories {missing} not found under {self.base} (found: {found}); check "
                f"{self.option}_root and {self.option}_categories"
                + (
                    "."
                    if self.dataset_format == "folder"
                    else ", or pass --data.download true to let anomalib download MVTec AD or VisA."
                )
            )
            raise FileNotFoundError(msg)
        return self.categories

    def download(self) -> None:
        """Let anomalib download MVTec AD or VisA (nothing to download for ``folder``)."""
        if self.dataset_format == "folder":
            return
        datamodule = Visa if self.dataset_format == "visa" else MVTecAD
        for category in self.categories or [None]:
            arguments = {"root": self.root} if category is None else {"root": self.root, "category": category}
            datamodule(**arguments).prepare_data()

    @property
    def dataset_name(self) -> str:
        """The name of the dataset in tables: its root folder's."""
        return self.root.resolve().name

    def datasets(self, categories: list[str]) -> list[tuple[str, str, AnomalibDataset]]:
        """``(category, dataset name, its images)`` for each category."""
        return [(category, self.dataset_name, self.dataset(category)) for category in categories]

    def normal_training_images(self, category: str) -> list[Path]:
        """The category's normal training images (``train/good``); the folder layout has none."""
        if self.dataset_format == "folder":
            return []
        return image_files(self.base / category / "train" / NORMAL_FOLDER, "*")

    def dataset(self, category: str) -> AnomalibDataset:
        """The category's images (the test split of MVTec AD and VisA), masks checked first and matched by stem.

        In the MVTec AD and VisA layouts anomalib pairs the same masks by position, and refuses any other pairing.

        Raises:
            ValueError: If anomalib cannot read the category.
        """
        defects = defect_folders(
            self.base / category, self.dataset_format, self.normal_folder, self.mask_dir, self.option
        )
        masks = match_masks(category, defects)
        try:
            if self.dataset_format == "visa":
                dataset = VisaDataset(root=self.base, category=category, split=Split.TEST)
            elif self.dataset_format == "mvtec":
                dataset = MVTecADDataset(root=self.root, category=category, split=Split.TEST)
            else:
                dataset = FolderDataset(
                    name=category,
                    root=self.base / category,
                    normal_dir=self.normal_folder,
                    abnormal_dir=[defect.name for defect, _ in defects] or None,
                )
        except (RuntimeError, ValueError) as error:
            msg = f"category '{category}' under {self.base} cannot be read: {error}"
            raise ValueError(msg) from error
        if masks:
            samples = dataset.samples
            anomalous = samples.label_index == LabelName.ABNORMAL
            masked = samples.assign(mask_path=samples.mask_path.mask(anomalous, samples.image_path.map(masks)))
            masked.attrs["task"] = TaskType.SEGMENTATION.value
            dataset.samples = masked
        return dataset


class CombinedDataset(AnomalibDataset):
    """Images of datasets of several types (e.g. MVTec AD and MPDD on one side), read as anomalib reads any dataset.

    anomalib concatenates datasets of one type only; every image dataset but MVTec LOCO reads its items with the base
    class's ``__getitem__`` from its samples, so their samples can be read together.
    """

    def __init__(self, datasets: list[AnomalibDataset]) -> None:
        super().__init__()
        samples = pd.concat([dataset.samples for dataset in datasets], ignore_index=True)
        samples.attrs["task"] = datasets[0].task.value
        self.samples = samples


def combine(datasets: list[AnomalibDataset], option: str) -> AnomalibDataset:
    """One dataset of the images of ``datasets`` (the side given by ``option``).

    Raises:
        ValueError: If some have masks and others do not, or one reads its items its own way (MVTec LOCO).
    """
    if len({type(dataset) for dataset in datasets}) == 1:
        return reduce(add, datasets)
    tasks = {dataset.name: dataset.task.value for dataset in datasets}
    if len(set(tasks.values())) > 1:
        msg = f"{option} mixes datasets with and without masks ({tasks}); give them to separate runs."
        raise ValueError(msg)
    own_readers = [dataset.name for dataset in datasets if type(dataset).__getitem__ is not AnomalibDataset.__getitem__]
    if own_readers:
        msg = f"{option}: {own_readers} read their images their own way and cannot be combined with other datasets."
        raise ValueError(msg)
    return CombinedDataset(datasets)


@dataclass(frozen=True)
class DataModuleSource:
    """One side read through anomalib datamodules (BTech, MPDD, Kolektor, MVTecAD2, BMAD, ... or MVTecAD itself).

    Each datamodule stands for one category (its ``category``) of one dataset (its ``name``); the side uses their
    test subsets, as anomalib reads them from the tree, without download or splitting (``datamodule_subsets.py``).

    Raises:
        ValueError: For a datamodule whose subsets are not known to be readable without splitting them.
    """

    side: str
    datamodules: list[AnomalibDataModule]

    def __post_init__(self) -> None:
        for index, datamodule in enumerate(self.datamodules):
            if subsets_of(datamodule) is None:
                msg = (
                    f"{self.option}[{index}] ({type(datamodule).__name__}) cannot be read as it is on disk; give "
                    f"one of anomalib's image datamodules ({sorted(kind.__name__ for kind in SUBSETS)}), or the "
                    f"folder format (--data.{self.side}_format folder)."
                )
                raise ValueError(msg)

    @property
    def option(self) -> str:
        """This side's CLI option, for messages."""
        return f"--data.{self.side}_datamodules"

    @property
    def dataset_name(self) -> str:
        """The names of the datasets, for output folders."""
        return "+".join(dict.fromkeys(datamodule.name for datamodule in self.datamodules))

    def resolve(self) -> list[str]:
        """The category of each datamodule, by the authors' name where they have one (BTech's ``01`` is ``metal1``).

        Raises:
            FileNotFoundError: If a datamodule's root does not exist.
        """
        for index, datamodule in enumerate(self.datamodules):
            root = getattr(datamodule, "root", None)
            if root is not None and not Path(root).exists():
                msg = (
                    f"{self.option}[{index}] ({type(datamodule).__name__}): {root} does not exist; set its "
                    f"init_args.root to the dataset, or pass --data.download true to let anomalib download it."
                )
                raise FileNotFoundError(msg)
        return [
            authors_category_name(datamodule.name, str(getattr(datamodule, "category", "") or datamodule.name))
            for datamodule in self.datamodules
        ]

    def subset(self, index: int, split: Split) -> AnomalibDataset:
        """The ``split`` subset of the datamodule at ``index``, read from its tree as it is.

        Raises:
            FileNotFoundError: If anomalib cannot read it.
        """
        datamodule = self.datamodules[index]
        try:
            return subsets_of(datamodule).read(datamodule, split)
        except (AttributeError, FileNotFoundError, RuntimeError, ValueError) as error:
            what = f"category {datamodule.category!r}" if getattr(datamodule, "category", None) else "its data"
            msg = (
                f"{self.option}[{index}] ({type(datamodule).__name__}): {what} cannot be read under "
                f"{getattr(datamodule, 'root', '?')}: {error}. Check its init_args (root, category)."
            )
            raise FileNotFoundError(msg) from error

    def datasets(self, categories: list[str]) -> list[tuple[str, str, AnomalibDataset]]:
        """``(category, dataset name, test subset)`` of each datamodule (``categories`` as :meth:`resolve` gives)."""
        parts = []
        for index, (category, datamodule) in enumerate(zip(categories, self.datamodules, strict=True)):
            dataset = self.subset(index, Split.TEST)
            samples = dataset.samples
            if "mask_path" in samples:  # pandas 3 stores missing paths as NaN, which anomalib's reader refuses
                dataset.samples = samples.assign(mask_path=samples.mask_path.fillna(""))
            parts.append((category, datamodule.name, dataset))
        return parts

    def normal_training_images(self, category: str) -> list[Path]:
        """The normal images of the training subset of the datamodule of ``category`` (as :meth:`resolve` names it)."""
        for index, name in enumerate(self.resolve()):
            if name == category:
                return [Path(path) for path in normal_images(self.subset(index, Split.TRAIN))]
        return []

    def download(self) -> None:
        """Let anomalib download each dataset that it can."""
        for datamodule in self.datamodules:
            datamodule.prepare_data()


def move_datamodules(datamodules: list[AnomalibDataModule], root: str, option: str) -> None:
    """Give every datamodule of a side the root ``root`` (they must share one, as a config's one dataset does).

    Raises:
        ValueError: If the datamodules read several roots: then each needs its own, in the config.
    """
    roots = sorted({str(datamodule.root) for datamodule in datamodules if hasattr(datamodule, "root")})
    if len(roots) > 1:
        msg = (
            f"{option} {root} replaces the root of every datamodule of its side, and they read several ({roots}); set "
            f"each one's init_args.root in the config instead."
        )
        raise ValueError(msg)
    for datamodule in datamodules:
        previous, datamodule.root = Path(datamodule.root), Path(root)
        split_root = getattr(datamodule, "split_root", None)  # VisA reads its processed tree, below the root
        if split_root is not None and Path(split_root).is_relative_to(previous):
            datamodule.split_root = Path(root) / Path(split_root).relative_to(previous)
    logger.info("%s: the %d datamodules read %s (the config said %s).", option, len(datamodules), root, roots)
