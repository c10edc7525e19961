# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Train on an annotated auxiliary dataset, evaluate on the categories of another one.

The zero-shot protocol of Bayes-PFL (bayes_pfl_method.md §7): the head is trained on the *test* split of an
auxiliary dataset (its anomalous images with masks, and its normal test images), all categories together, and
evaluated on target categories it has never seen. anomalib's CLI passes one ``--data`` to both training and
testing, so this datamodule holds both sides; it reuses anomalib's ``MVTecADDataset`` and ``VisaDataset``.

Formats:

- ``mvtec``: the MVTec AD layout, ``<root>/<category>/{train/good,test/good,test/<defect>,ground_truth/<defect>}``;
- ``visa``: anomalib's processed VisA layout, ``<root>/visa_pytorch/<category>/...`` (the same shape);
- ``folder``: one's own data, ``<root>/<category>/good/*`` for normal images, ``<root>/<category>/<defect>/*`` for
  anomalous ones and, optionally, masks with the same file stems in ``<root>/<category>/ground_truth/<defect>/``.
  Without masks the pixel losses are skipped and the head learns from image labels alone.
"""

import copy
import logging
from collections.abc import Sequence
from functools import reduce
from operator import add
from pathlib import Path
from typing import Literal

from anomalib.data import AnomalibDataModule, MVTecAD, Visa
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.datasets.image.mvtecad import MVTecADDataset
from anomalib.data.datasets.image.visa import VisaDataset
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

logger = logging.getLogger(__name__)

DatasetFormat = Literal["mvtec", "visa", "folder"]
NORMAL_FOLDER = "good"
MASK_FOLDER = "ground_truth"


def _category_root(root: Path, dataset_format: DatasetFormat) -> Path:
    return root / "visa_pytorch" if dataset_format == "visa" else root


def discover_categories(root: str | Path, dataset_format: DatasetFormat) -> list[str]:
    """Return the sorted category folders of a dataset tree (those with a ``test`` or, for folders, a ``good``)."""
    base = _category_root(Path(root), dataset_format)
    if not base.is_dir():
        return []
    marker = NORMAL_FOLDER if dataset_format == "folder" else "test"
    return sorted(folder.name for folder in base.iterdir() if (folder / marker).is_dir())


def _defect_folders(root: Path, dataset_format: DatasetFormat, category: str) -> list[tuple[Path, Path]]:
    """(anomalous image folder, mask folder) pairs of one category."""
    folder = _category_root(root, dataset_format) / category
    images = folder if dataset_format == "folder" else folder / "test"
    if not images.is_dir():
        return []
    return [
        (defect, folder / MASK_FOLDER / defect.name)
        for defect in sorted(images.iterdir())
        if defect.is_dir() and defect.name not in {NORMAL_FOLDER, MASK_FOLDER}
    ]


def _folder_dataset(root: Path, category: str) -> FolderDataset:
    pairs = _defect_folders(root, "folder", category)
    masks = [mask for _, mask in pairs if mask.is_dir()]
    return FolderDataset(
        name=category,
        root=root / category,
        normal_dir=NORMAL_FOLDER,
        abnormal_dir=[defect.name for defect, _ in pairs] or None,
        mask_dir=masks or None,
    )


def check_masks(root: Path, dataset_format: DatasetFormat, category: str) -> None:
    """Name the anomalous images without a mask (anomalib pairs masks by sorted order and fails obscurely).

    Raises:
        FileNotFoundError: If some anomalous images have no mask with their file stem (``<stem>`` or
            ``<stem>_mask``) in the matching ``ground_truth`` folder.
    """
    missing = []
    for images, masks in _defect_folders(root, dataset_format, category):
        if dataset_format == "folder" and not masks.parent.is_dir():
            return  # a folder dataset without any masks: image labels only
        mask_stems = {path.stem.removesuffix("_mask") for path in masks.glob("*")} if masks.is_dir() else set()
        missing += [str(path) for path in sorted(images.glob("*")) if path.is_file() and path.stem not in mask_stems]
    if missing:
        msg = (
            f"{len(missing)} anomalous image(s) of category '{category}' have no mask: {missing[:5]}; add the masks "
            f"(same file stem, optionally with '_mask'), or, for a folder dataset, remove its ground_truth folder to "
            f"train on image labels alone."
        )
        raise FileNotFoundError(msg)


def _make_dataset(root: Path, dataset_format: DatasetFormat, category: str) -> AnomalibDataset:
    if dataset_format == "visa":
        return VisaDataset(root=root / "visa_pytorch", category=category, split=Split.TEST)
    if dataset_format == "folder":
        return _folder_dataset(root, category)
    return MVTecADDataset(root=root, category=category, split=Split.TEST)


class ZeroShotCrossDataset(AnomalibDataModule):
    """Auxiliary dataset for training, target dataset for testing (e.g. VisA -> MVTec AD).

    Args:
        auxiliary_root: Root of the auxiliary dataset.
        auxiliary_format: Layout of the auxiliary dataset.
        auxiliary_categories: Auxiliary categories to train on; ``None`` takes every category found.
        target_root: Root of the target dataset.
        target_format: Layout of the target dataset.
        target_categories: Target categories to evaluate; ``None`` takes every category found.
        train_batch_size: Training batch size.
        eval_batch_size: Evaluation batch size (any size: scores do not depend on it).
        num_workers: Data-loading workers.
        train_augmentations: Augmentations of the auxiliary training images.
        val_augmentations: Augmentations of the validation images.
        test_augmentations: Augmentations of the target images.
        augmentations: Augmentations of every subset, where the specific ones are not given.
        val_split_mode: Validation data, for the post-processors of models that set thresholds on it:
            ``auxiliary`` (never the target) or ``same_as_test`` (the target test images, as anomalib's MVTecAD and
            Visa do). BayesPFL's own labels use probability thresholds and no validation statistics.
        download: Let anomalib download a missing MVTec AD or VisA (never implied; not for ``folder``).
        seed: Seed of anomalib's splitting utilities.

    Example:
        >>> import tempfile
        >>> from anomalib_bayes_pfl.data.synthetic import write_tree
        >>> root = write_tree(tempfile.mkdtemp(), ["aux_a", "aux_b", "target"])
        >>> data = ZeroShotCrossDataset(
        ...     auxiliary_root=root, auxiliary_format="mvtec", auxiliary_categories=["aux_a", "aux_b"],
        ...     target_root=root, target_format="mvtec", target_categories=["target"], num_workers=0,
        ... )
        >>> data.setup()
        >>> len(data.train_data), len(data.test_data)
        (12, 6)
    """

    def __init__(
        self,
        auxiliary_root: str = "./datasets/visa",
        auxiliary_format: DatasetFormat = "visa",
        auxiliary_categories: Sequence[str] | None = None,
        target_root: str = "./datasets/MVTecAD",
        target_format: DatasetFormat = "mvtec",
        target_categories: Sequence[str] | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 4,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        val_split_mode: Literal["auxiliary", "same_as_test"] = "auxiliary",
        download: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            val_split_mode=ValSplitMode.FROM_DIR if val_split_mode == "auxiliary" else ValSplitMode.SAME_AS_TEST,
            test_split_mode=TestSplitMode.FROM_DIR,
            seed=seed,
        )
        self.auxiliary_root = Path(auxiliary_root)
        self.auxiliary_format = auxiliary_format
        self.auxiliary_categories = list(auxiliary_categories) if auxiliary_categories is not None else None
        self.target_root = Path(target_root)
        self.target_format = target_format
        self.target_categories = list(target_categories) if target_categories is not None else None
        self.download = download
        self._image_categories: dict[str, str] = {}
        if self.target_categories is not None and len(self.target_categories) == 1:
            self.category = self.target_categories[0]

    @property
    def name(self) -> str:
        """The target root's folder name: output paths and image file names keep the categories apart."""
        return self.target_root.resolve().name

    def class_name_of(self, image_path: str) -> str | None:
        """Category of an image of this datamodule (``None`` for an unknown path)."""
        return self._image_categories.get(str(image_path))

    def _datasets(self, root: Path, dataset_format: DatasetFormat, categories: list[str]) -> AnomalibDataset:
        datasets = []
        for category in categories:
            check_masks(root, dataset_format, category)
            try:
                dataset = _make_dataset(root, dataset_format, category)
            except (RuntimeError, ValueError) as error:
                msg = f"category '{category}' under {_category_root(root, dataset_format)} cannot be read: {error}"
                raise ValueError(msg) from error
            self._image_categories.update(dict.fromkeys(dataset.samples.image_path.astype(str), category))
            datasets.append(dataset)
        return reduce(add, datasets)

    def _resolve(self, root: Path, dataset_format: DatasetFormat, categories: list[str] | None, side: str) -> list[str]:
        found = discover_categories(root, dataset_format)
        if categories is None:
            if not found:
                msg = (
                    f"no {dataset_format} categories found under {_category_root(root, dataset_format)} for the "
                    f"{side} dataset; check --data.{side}_root, or pass --data.download true to let anomalib "
                    f"download MVTec AD or VisA."
                )
                raise FileNotFoundError(msg)
            return found
        missing = [category for category in categories if category not in found]
        if missing:
            msg = (
                f"{side} categories {missing} not found under {_category_root(root, dataset_format)} "
                f"(found: {found}); check --data.{side}_root and --data.{side}_categories, or pass "
                f"--data.download true to let anomalib download MVTec AD or VisA."
            )
            raise FileNotFoundError(msg)
        return categories

    def prepare_data(self) -> None:
        """Download through anomalib only when ``download`` is set; otherwise only check that the data is there."""
        if self.download:
            for root, dataset_format, categories in (
                (self.auxiliary_root, self.auxiliary_format, self.auxiliary_categories),
                (self.target_root, self.target_format, self.target_categories),
            ):
                if dataset_format == "folder":
                    continue
                datamodule = Visa if dataset_format == "visa" else MVTecAD
                for category in categories or [None]:
                    arguments = {"root": root} if category is None else {"root": root, "category": category}
                    datamodule(**arguments).prepare_data()
        self._resolve(self.auxiliary_root, self.auxiliary_format, self.auxiliary_categories, "auxiliary")
        self._resolve(self.target_root, self.target_format, self.target_categories, "target")

    def _setup(self, _stage: str | None = None) -> None:
        auxiliary = self._resolve(self.auxiliary_root, self.auxiliary_format, self.auxiliary_categories, "auxiliary")
        target = self._resolve(self.target_root, self.target_format, self.target_categories, "target")
        overlap = (
            sorted(set(auxiliary) & set(target)) if self.auxiliary_root.resolve() == self.target_root.resolve() else []
        )
        if overlap:
            logger.warning("Categories %s are in both the auxiliary and the target set: they are not unseen.", overlap)
        logger.info("Auxiliary (training) categories: %s; target (test) categories: %s", auxiliary, target)
        self.train_data = self._datasets(self.auxiliary_root, self.auxiliary_format, auxiliary)
        self.test_data = self._datasets(self.target_root, self.target_format, target)
        if self.val_split_mode == ValSplitMode.FROM_DIR:
            self.val_data = copy.deepcopy(self.train_data)
