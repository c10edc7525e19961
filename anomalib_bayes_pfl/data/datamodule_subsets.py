# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""The test and training subsets of anomalib's image datamodules, read as they are on disk.

Each datamodule's subsets are built with its dataset class's public constructor, from the datamodule's public
attributes, as the datamodule itself builds them before it splits anything. Its public ``setup`` would split them
(it moves the normal test images behind the anomalous ones, or drops them), and ``prepare_data`` would download:
here the tree is read as it is, and the datamodule is left untouched.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from anomalib.data import (
    BMAD,
    MPDD,
    VAD,
    AnomalibDataModule,
    AutoVI,
    BTech,
    Datumaro,
    Folder,
    Kaputt,
    Kolektor,
    MVTecAD,
    MVTecAD2,
    MVTecLOCO,
    RealIAD,
    Visa,
)
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.datasets.image import (
    AutoVIDataset,
    BMADDataset,
    BTechDataset,
    DatumaroDataset,
    FolderDataset,
    KaputtDataset,
    KolektorDataset,
    MPDDDataset,
    MVTecAD2Dataset,
    MVTecADDataset,
    MVTecLOCODataset,
    RealIADDataset,
    VADDataset,
    VisaDataset,
)
from anomalib.data.utils import Split

ROOT_AND_CATEGORY = {"root": "root", "category": "category"}


@dataclass(frozen=True)
class DatamoduleSubsets:
    """How one kind of datamodule builds its subsets: its dataset class and the attributes it hands on.

    Args:
        dataset: The datamodule's dataset class.
        arguments: Constructor argument -> the datamodule attribute that gives it.
        training_arguments: Further arguments of the training subset only.
    """

    dataset: type[AnomalibDataset]
    arguments: Mapping[str, str]
    training_arguments: Mapping[str, str] = field(default_factory=dict)

    def read(self, datamodule: AnomalibDataModule, split: Split) -> AnomalibDataset:
        """The ``split`` subset of ``datamodule``, as its tree holds it."""
        arguments = {**self.arguments, **(self.training_arguments if split == Split.TRAIN else {})}
        return self.dataset(split=split, **{name: getattr(datamodule, source) for name, source in arguments.items()})


# Each as the datamodule's own subsets: VisA's in its processed folder, MVTec AD 2's public test set (its
# ``test_data``), Kaputt's test queries without their references.
SUBSETS: dict[type[AnomalibDataModule], DatamoduleSubsets] = {
    AutoVI: DatamoduleSubsets(AutoVIDataset, ROOT_AND_CATEGORY),
    BMAD: DatamoduleSubsets(BMADDataset, ROOT_AND_CATEGORY),
    BTech: DatamoduleSubsets(BTechDataset, ROOT_AND_CATEGORY),
    Datumaro: DatamoduleSubsets(DatumaroDataset, {"root": "root"}),
    Folder: DatamoduleSubsets(
        FolderDataset,
        {
            name: name
            for name in ("name", "root", "normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir", "extensions")
        },
    ),
    Kaputt: DatamoduleSubsets(
        KaputtDataset, {**ROOT_AND_CATEGORY, "image_type": "image_type"}, {"image_mode": "image_mode"}
    ),
    Kolektor: DatamoduleSubsets(KolektorDataset, {"root": "root"}),
    MPDD: DatamoduleSubsets(MPDDDataset, ROOT_AND_CATEGORY),
    MVTecAD: DatamoduleSubsets(MVTecADDataset, ROOT_AND_CATEGORY),
    MVTecAD2: DatamoduleSubsets(MVTecAD2Dataset, ROOT_AND_CATEGORY),
    MVTecLOCO: DatamoduleSubsets(MVTecLOCODataset, ROOT_AND_CATEGORY),
    RealIAD: DatamoduleSubsets(
        RealIADDataset, {**ROOT_AND_CATEGORY, "resolution": "resolution", "json_path": "json_path"}
    ),
    VAD: DatamoduleSubsets(VADDataset, ROOT_AND_CATEGORY),
    Visa: DatamoduleSubsets(VisaDataset, {"root": "split_root", "category": "category"}),
}


def subsets_of(datamodule: AnomalibDataModule) -> DatamoduleSubsets | None:
    """How ``datamodule`` builds its subsets: by its class, or the one it derives from without building its own.

    ``None`` for an unknown class, and for a subclass that builds its subsets its own way (it defines ``_setup``,
    which only anomalib calls): reading it as its parent would read other images.
    """
    kind = next((kind for kind in type(datamodule).__mro__ if kind in SUBSETS), None)
    if kind is None or getattr(type(datamodule), "_setup", None) is not getattr(kind, "_setup", None):
        return None
    return SUBSETS[kind]
