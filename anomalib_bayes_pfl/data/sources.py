# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Where each side of ``ZeroShotCrossDataset`` reads its images: a root in a layout, or anomalib datamodules.

Each side is either a root and a format (:class:`DataSource`), or a list of anomalib datamodules
(:class:`DataModuleSource`: BTech, MPDD, Kolektor, MVTecAD2, BMAD, ..., one per category), whose test subsets it reads.

Formats (``--data.auxiliary_format`` / ``--data.target_format``):

- ``mvtec``: the MVTec AD layout, ``<root>/<category>/{train/good,test/good,test/<defect>,ground_truth/<defect>}``;
- ``visa``: anomalib's processed VisA layout, ``<root>/visa_pytorch/<category>/...`` (the same shape);
- ``folder``: one's own data, one folder per category, ``<root>/<category>/good/*`` for normal images and
  ``<root>/<category>/<defect>/*`` for anomalous ones (several defect folders allowed). Masks are optional and sit in
  a mask folder of the category, either with a subfolder per defect (``ground_truth/<defect>/``, as in MVTec AD) or
  flat (``masks/``, as anomalib's ``Folder`` datamodule expects: ``good/``, ``bad/`` and ``masks/`` side by side).
  The mask folder is found by name (``ground_truth``, ``masks`` or ``mask``) or named with ``--data.*_mask_dir``;
  ``--data.*_normal_dir`` renames ``good``. A mask matches the anomalous image with its file stem (``<stem>`` or
  ``<stem>_mask``), and a category with a mask folder needs a mask for every anomalous image. Without masks the pixel
  losses are skipped and the head learns from image labels alone.
"""

import logging
from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path
from typing import Literal, get_args

import pandas as pd
from anomalib import TaskType
from anomalib.data import AnomalibDataModule, MVTecAD, Visa
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.datasets.image.mvtecad import MVTecADDataset
from anomalib.data.datasets.image.visa import VisaDataset
from anomalib.data.utils import LabelName, Split
from torchvision.datasets.folder import IMG_EXTENSIONS

from .class_names import authors_category_name

logger = logging.getLogger(__name__)

DatasetFormat = Literal["mvtec", "visa", "folder"]
DEFAULT_ROOTS = {"auxiliary": "./datasets/visa", "target": "./datasets/MVTecAD"}
NORMAL_FOLDER = "good"
MASK_FOLDER = "ground_truth"
MASK_FOLDER_NAMES = (MASK_FOLDER, "masks", "mask")
EXPECTED_LAYOUTS: dict[str, str] = {
    "mvtec": "<root>/<category>/test/{good,<defect>}/ with masks in <root>/<category>/ground_truth/<defect>/",
    "visa": "<root>/visa_pytorch/<category>/test/{good,<defect>}/ with masks in .../<category>/ground_truth/<defect>/",
    "folder": "<root>/<category>/{good,<defect>}/ with optional masks in <root>/<category>/{ground_truth,masks,mask}/",
}


def _category_root(root: Path, dataset_format: DatasetFormat) -> Path:
    return root / "visa_pytorch" if dataset_format == "visa" else root


def discover_categories(root: str | Path, dataset_format: DatasetFormat, normal_dir: str = NORMAL_FOLDER) -> list[str]:
    """Return the sorted category folders of a dataset tree (those with a ``test`` or, for folders, a ``good``)."""
    base = _category_root(Path(root), dataset_format)
    if not base.is_dir():
        return []
    marker = normal_dir if dataset_format == "folder" else "test"
    return sorted(folder.name for folder in base.iterdir() if (folder / marker).is_dir())


def image_files(folder: Path, pattern: str = "**/*") -> list[Path]:
    """The image files of a folder, by default anywhere under it as anomalib lists them (none for a missing folder)."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob(pattern) if path.suffix.lower() in IMG_EXTENSIONS and path.is_file())


def normal_images(dataset: AnomalibDataset | None) -> list[str]:
    """The image paths of the normal samples of an anomalib dataset (none without one)."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return []
    return [str(path) for path in samples.image_path[samples.label_index == LabelName.NORMAL]]


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
        return _category_root(self.root, self.dataset_format)

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
                f"{self._layout_hint()}"
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

    def _layout_hint(self) -> str:
        """Point to the root or format that would read this tree, when it has another supported layout."""
        for fmt in ("visa", "mvtec", "folder"):  # the most specific first: a VisA category is MVTec-shaped too
            parent = self.root.parent.parent if fmt == "visa" else self.root.parent
            if _category_root(parent, fmt) == self.root.parent and self.root.name in discover_categories(
                parent, fmt, self.normal_folder
            ):
                change = "" if fmt == self.dataset_format else f" {self.option}_format {fmt}"
                return (
                    f"{self.root} looks like a single {fmt} category: pass {self.option}_root {parent} "
                    f"{self.option}_categories [{self.root.name}]{change}."
                )
        for fmt in get_args(DatasetFormat):
            if fmt != self.dataset_format and discover_categories(self.root, fmt, self.normal_folder):
                article = "an" if fmt == "mvtec" else "a"
                return f"{self.root} looks like {article} {fmt} layout: pass {self.option}_format {fmt}."
        if self.dataset_format == "folder":
            return f"Check {self.option}_root: each category folder needs a '{self.normal_folder}' folder."
        return f"Check {self.option}_root, or pass --data.download true to let anomalib download MVTec AD or VisA."

    def download(self) -> None:
        """Let anomalib download MVTec AD or VisA (nothing to download for ``folder``)."""
        if self.dataset_format == "folder":
            return
        datamodule = Visa if self.dataset_format == "visa" else MVTecAD
        for category in self.categories or [None]:
            arguments = {"root": self.root} if category is None else {"root": self.root, "category": category}
            datamodule(**arguments).prepare_data()

    def mask_folder(self, category: str) -> Path | None:
        """The mask folder of a ``folder`` category: the named one, else the one with a mask folder name, else none.

        Raises:
            FileNotFoundError: If the named mask folder is missing.
            ValueError: If the category has several folders with mask folder names.
        """
        folder = self.base / category
        if self.mask_dir is not None:
            if not (folder / self.mask_dir).is_dir():
                msg = f"mask folder {folder / self.mask_dir} ({self.option}_mask_dir) not found."
                raise FileNotFoundError(msg)
            return folder / self.mask_dir
        present = [folder / name for name in MASK_FOLDER_NAMES if (folder / name).is_dir()]
        if len(present) > 1:
            msg = f"category '{category}' has several mask folders {present}; name one with {self.option}_mask_dir."
            raise ValueError(msg)
        return present[0] if present else None

    def defect_folders(self, category: str) -> list[tuple[Path, Path | None]]:
        """(anomalous image folder, folder of its masks or ``None``) pairs of one category.

        Folders with a mask folder name are never image folders, so masks are never scored as anomalous images.
        """
        folder = (self.base / category).resolve()
        if self.dataset_format != "folder":
            images = folder / "test"
            defects = sorted(path for path in images.iterdir() if path.is_dir()) if images.is_dir() else []
            return [(defect, folder / MASK_FOLDER / defect.name) for defect in defects if defect.name != NORMAL_FOLDER]
        masks = self.mask_folder(category)
        masks = masks.resolve() if masks is not None else None
        skipped = {Path(self.normal_folder).parts[0], *MASK_FOLDER_NAMES}
        if masks is not None and masks.is_relative_to(folder):
            skipped.add(masks.relative_to(folder).parts[0])
        defects = sorted(
            path
            for path in folder.iterdir()
            if path.is_dir() and path.name not in skipped and not path.name.startswith(".")
        )
        if masks is None:
            return [(defect, None) for defect in defects]
        return [(defect, masks / defect.name if (masks / defect.name).is_dir() else masks) for defect in defects]

    def match_masks(self, category: str) -> dict[str, str]:
        """Map each anomalous image to the mask with its file stem (``<stem>`` or ``<stem>_mask``).

        anomalib pairs masks with images by sorted position, which mis-pairs or fails obscurely when a mask is
        missing or extra; matching by stem names the images without one instead. A ``folder`` category without a mask
        folder has no masks (an empty map).

        Raises:
            FileNotFoundError: If some anomalous images have no mask.
        """
        matched, missing = {}, []
        for images, masks in self.defect_folders(category):
            if masks is None:
                return {}
            # Directly in the folder: a flat mask folder's subfolders hold other defects' masks.
            by_stem = {path.stem.removesuffix("_mask"): path for path in image_files(masks, "*")}
            for image in image_files(images):
                if image.stem in by_stem:
                    matched[str(image)] = str(by_stem[image.stem])
                else:
                    missing.append(str(image))
        if missing:
            msg = (
                f"{len(missing)} anomalous image(s) of category '{category}' have no mask: {missing[:5]}; add the "
                f"masks (same file stem, optionally with '_mask'), or, for a folder dataset, remove its mask folder to "
                f"train on image labels alone."
            )
            raise FileNotFoundError(msg)
        return matched

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
        """The category's images (the test split of MVTec AD and VisA), masks checked first.

        Raises:
            ValueError: If anomalib cannot read the category.
        """
        masks = self.match_masks(category)
        try:
            if self.dataset_format == "visa":
                return VisaDataset(root=self.base, category=category, split=Split.TEST)
            if self.dataset_format == "mvtec":
                return MVTecADDataset(root=self.root, category=category, split=Split.TEST)
            dataset = FolderDataset(
                name=category,
                root=self.base / category,
                normal_dir=self.normal_folder,
                abnormal_dir=[defect.name for defect, _ in self.defect_folders(category)] or None,
            )
        except (RuntimeError, ValueError) as error:
            msg = f"category '{category}' under {self.base} cannot be read: {error}"
            raise ValueError(msg) from error
        if masks:
            samples = dataset.samples
            anomalous = samples.label_index == LabelName.ABNORMAL
            samples.loc[anomalous, "mask_path"] = samples.loc[anomalous, "image_path"].map(masks)
            samples.attrs["task"] = TaskType.SEGMENTATION.value
            dataset.samples = samples
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
    test subsets, as anomalib reads them from the tree, without download or splitting.
    """

    side: str
    datamodules: list[AnomalibDataModule]

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

    def datasets(self, categories: list[str]) -> list[tuple[str, str, AnomalibDataset]]:
        """``(category, dataset name, test subset)`` of each datamodule (``categories`` as :meth:`resolve` gives)."""
        parts = []
        for index, (category, datamodule) in enumerate(zip(categories, self.datamodules, strict=True)):
            try:
                datamodule._setup()  # the tree as it is: setup() would also split it, prepare_data() download it
            except (FileNotFoundError, RuntimeError, ValueError) as error:
                what = f"category {datamodule.category!r}" if getattr(datamodule, "category", None) else "its data"
                msg = (
                    f"{self.option}[{index}] ({type(datamodule).__name__}): {what} cannot be read under "
                    f"{getattr(datamodule, 'root', '?')}: {error}. Check its init_args (root, category)."
                )
                raise FileNotFoundError(msg) from error
            samples = datamodule.test_data.samples
            if "mask_path" in samples:  # pandas 3 stores missing paths as NaN, which anomalib's reader refuses
                samples["mask_path"] = samples.mask_path.fillna("")
            parts.append((category, datamodule.name, datamodule.test_data))
        return parts

    def normal_training_images(self, category: str) -> list[Path]:
        """The normal images of the training subset of the datamodule of ``category`` (as :meth:`resolve` names it)."""
        for name, datamodule in zip(self.resolve(), self.datamodules, strict=True):
            if name == category:
                return [Path(path) for path in normal_images(getattr(datamodule, "train_data", None))]
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
        datamodule.root = Path(root)
    logger.info("%s: the %d datamodules read %s (the config said %s).", option, len(datamodules), root, roots)
