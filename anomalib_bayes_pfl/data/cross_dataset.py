# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Train on an annotated auxiliary dataset, evaluate on the categories of another one.

The zero-shot protocol of Bayes-PFL (authors: train.py, test.py): the head is trained on the *test* split of an
auxiliary dataset (its anomalous images with masks, and its normal test images), all categories together, and
evaluated on target categories it has never seen. anomalib's CLI passes one ``--data`` to both training and
testing, so this datamodule holds both sides (``sources.py`` reads each: a root in the ``mvtec``, ``visa`` or
``folder`` layout, or anomalib datamodules). Only fitting needs the auxiliary dataset: testing and predicting never
read it, and validation data, which comes from it, is left empty without it.
"""

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from anomalib.data import AnomalibDataModule
from anomalib.data.datasets import AnomalibDataset
from anomalib.data.utils import TestSplitMode, ValSplitMode
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Transform

from .layouts import DatasetFormat
from .mosaic import MosaicDataset
from .seeded_sampling import SeededDraws, SeededItems
from .sources import DEFAULT_ROOTS, DataModuleSource, DataSource, combine, move_datamodules

logger = logging.getLogger(__name__)


class ZeroShotCrossDataset(AnomalibDataModule):
    """Auxiliary dataset for training, target dataset for testing (e.g. VisA -> MVTec AD).

    Args:
        auxiliary_root: Root of the auxiliary dataset (``None``: ``./datasets/visa``); read only when fitting (and, if
            there, for validation data). Given with ``auxiliary_datamodules``, the root of every one of them.
        auxiliary_format: Layout of the auxiliary dataset.
        auxiliary_categories: Auxiliary categories to train on; ``None`` takes every category found.
        auxiliary_normal_dir: ``folder`` format: the normal image folder of each category (``None``: ``good``).
        auxiliary_mask_dir: ``folder`` format: the mask folder of each category (``None``: the one named
            ``ground_truth``, ``masks`` or ``mask``, if any).
        target_root: Root of the target dataset (``None``: ``./datasets/MVTecAD``). Given with ``target_datamodules``,
            the root of every one of them: ``--data.target_root`` moves a shipped config's datamodules to another
            folder.
        target_format: Layout of the target dataset.
        target_categories: Target categories to evaluate; ``None`` takes every category found.
        target_normal_dir: As ``auxiliary_normal_dir``, for the target.
        target_mask_dir: As ``auxiliary_mask_dir``, for the target.
        train_batch_size: Training batch size.
        eval_batch_size: Evaluation batch size (any size: scores do not depend on it).
        num_workers: Data-loading workers; ``None`` takes up to 4, no more than the CPUs this process may use (more
            only makes torch warn).
        train_augmentations: Augmentations of the auxiliary training images (the paper configs set the authors',
            :class:`~anomalib_bayes_pfl.data.augmentation.AuthorsAugmentations`).
        mosaic_probability: Chance that a training item is replaced by a 2x2 mosaic of four anomalous images of its
            category, masks pasted alike (:class:`~anomalib_bayes_pfl.data.mosaic.MosaicDataset`); the
            authors use 0.4 when MVTec AD is the auxiliary set, and none otherwise.
        auxiliary_datamodules: anomalib datamodules to train on instead of ``auxiliary_root`` and ``auxiliary_format``
            (any anomalib image datamodule but ``Tabular``, one per category: ``class_path`` and ``init_args`` in a
            config), all categories together; their test subsets are used, read as they are (never split, and
            downloaded only with ``download``).
        target_datamodules: The same for the target side; several datasets give the per-category table a ``dataset``
            column and a mean per dataset.
        val_augmentations: Augmentations of the validation images.
        test_augmentations: Augmentations of the target images.
        augmentations: Augmentations of every subset, where the specific ones are not given.
        val_split_mode: Validation data, for the post-processors of models that set thresholds on it:
            ``auxiliary`` (never the target; empty when a run that does not fit finds no auxiliary dataset) or
            ``same_as_test`` (the target test images, as anomalib's MVTecAD and Visa do). BayesPFL's own labels use
            probability thresholds and no validation statistics.
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
        auxiliary_root: str | None = None,
        auxiliary_format: DatasetFormat = "visa",
        auxiliary_categories: Sequence[str] | None = None,
        target_root: str | None = None,
        target_format: DatasetFormat = "mvtec",
        target_categories: Sequence[str] | None = None,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int | None = None,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        val_split_mode: Literal["auxiliary", "same_as_test"] = "auxiliary",
        download: bool = False,
        seed: int | None = None,
        auxiliary_normal_dir: str | None = None,
        auxiliary_mask_dir: str | None = None,
        target_normal_dir: str | None = None,
        target_mask_dir: str | None = None,
        mosaic_probability: float = 0.0,
        auxiliary_datamodules: Sequence[AnomalibDataModule] | None = None,
        target_datamodules: Sequence[AnomalibDataModule] | None = None,
    ) -> None:
        if not 0.0 <= mosaic_probability <= 1.0:
            msg = f"mosaic_probability must be in [0, 1], got {mosaic_probability}."
            raise ValueError(msg)
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=min(4, len(os.sched_getaffinity(0))) if num_workers is None else num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            val_split_mode=ValSplitMode.FROM_DIR if val_split_mode == "auxiliary" else ValSplitMode.SAME_AS_TEST,
            test_split_mode=TestSplitMode.FROM_DIR,
            seed=seed,
        )
        self.auxiliary_root = Path(auxiliary_root or DEFAULT_ROOTS["auxiliary"])
        self.auxiliary_format = auxiliary_format
        self.auxiliary_categories = list(auxiliary_categories) if auxiliary_categories is not None else None
        self.auxiliary_normal_dir = auxiliary_normal_dir
        self.auxiliary_mask_dir = auxiliary_mask_dir
        self.target_root = Path(target_root or DEFAULT_ROOTS["target"])
        self.target_format = target_format
        self.target_categories = list(target_categories) if target_categories is not None else None
        self.target_normal_dir = target_normal_dir
        self.target_mask_dir = target_mask_dir
        self.download = download
        self.mosaic_probability = mosaic_probability
        self.auxiliary_datamodules = list(auxiliary_datamodules) if auxiliary_datamodules else None
        self.target_datamodules = list(target_datamodules) if target_datamodules else None
        for side, root in (("auxiliary", auxiliary_root), ("target", target_root)):
            datamodules = getattr(self, f"{side}_datamodules")
            if datamodules and root is not None:
                move_datamodules(datamodules, root, f"--data.{side}_root")
        self._image_categories: dict[str, str] = {}
        self._image_datasets: dict[str, str] = {}
        for side in ("auxiliary", "target"):
            self._source(side)  # reject inconsistent options at once, not at the first stage
        if self.target_categories is not None and len(self.target_categories) == 1:
            self.category = self.target_categories[0]

    @property
    def name(self) -> str:
        """The target dataset's name (its root folder's): output paths and image file names keep categories apart."""
        return self._source("target").dataset_name

    def class_name_of(self, image_path: str) -> str | None:
        """Category of an image of this datamodule (``None`` for an unknown path)."""
        return self._image_categories.get(str(image_path))

    def dataset_of(self, image_path: str) -> str | None:
        """Name of the dataset an image of this datamodule belongs to (``None`` for an unknown path)."""
        return self._image_datasets.get(str(image_path))

    def few_shot_candidates(self) -> list[str]:
        """Normal training images of the target categories, for few-shot references: never target test images.

        MVTec AD and VisA layouts give ``train/good``, datamodules their training subset; the folder layout has none.
        """
        source = self._source("target")
        candidates = []
        for category in source.resolve():
            paths = [str(path) for path in source.normal_training_images(category)]
            self._image_categories.update(dict.fromkeys(paths, category))
            candidates += paths
        return candidates

    def _source(self, side: Literal["auxiliary", "target"]) -> DataSource | DataModuleSource:
        datamodules = getattr(self, f"{side}_datamodules")
        if datamodules:
            return DataModuleSource(side=side, datamodules=datamodules)
        return DataSource(
            side=side,
            root=getattr(self, f"{side}_root"),
            dataset_format=getattr(self, f"{side}_format"),
            categories=getattr(self, f"{side}_categories"),
            normal_dir=getattr(self, f"{side}_normal_dir"),
            mask_dir=getattr(self, f"{side}_mask_dir"),
        )

    def _datasets(self, source: DataSource | DataModuleSource, categories: list[str]) -> AnomalibDataset:
        datasets = []
        for category, dataset_name, dataset in source.datasets(categories):
            paths = dataset.samples.image_path.astype(str)
            self._image_categories.update(dict.fromkeys(paths, category))
            self._image_datasets.update(dict.fromkeys(paths, dataset_name))
            datasets.append(dataset)
        return combine(datasets, source.option)

    @staticmethod
    def _needs_auxiliary(stage: str | None) -> bool:
        """Fitting trains on the auxiliary dataset; a setup without a stage (a direct call) builds everything."""
        return stage is None or stage == TrainerFn.FITTING

    def _wants_auxiliary(self, stage: str | None) -> bool:
        """Validating reads the auxiliary dataset too, for validation data, but does without it."""
        return self._needs_auxiliary(stage) or (
            stage == TrainerFn.VALIDATING and self.val_split_mode == ValSplitMode.FROM_DIR
        )

    def _create_test_split(self) -> None:
        """Keep the target's test split as it is.

        anomalib completes a test split without normal images with images of the training data, which here is
        another dataset; a category whose test images are all anomalous instead reports its image metrics as not
        computable.
        """

    def prepare_data(self) -> None:
        """Download through anomalib only when ``download`` is set; otherwise only check that the data is there.

        The auxiliary dataset is checked (or downloaded) only for a fit, or without a trainer to say what runs.
        """
        stage = self.trainer.state.fn if self.trainer is not None else None
        sources = [self._source("target")]
        if self._needs_auxiliary(stage):
            sources.insert(0, self._source("auxiliary"))
        for source in sources:
            if self.download:
                source.download()
            source.resolve()

    def setup(self, stage: str | None = None) -> None:
        """Set up again when a stage needs the auxiliary dataset that an earlier one skipped.

        anomalib sets up once per datamodule, so a fit after a test in the same process would have no training data.
        """
        if self._wants_auxiliary(stage) and not hasattr(self, "train_data"):
            self._is_setup = False
        super().setup(stage)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; with random augmentations or mosaics, each item is drawn with its own seed.

        The order and the seeds come from the main process, so that the same seed gives the same batches with any
        ``num_workers`` (anomalib's loader would seed each worker instead). Several processes (DDP) keep Lightning's
        distributed sampler, whose draws then depend on the workers.
        """
        random_items = self.train_augmentations is not None or self.mosaic_probability > 0
        if not random_items or (self.trainer is not None and self.trainer.world_size > 1):
            return super().train_dataloader()
        return DataLoader(
            dataset=SeededItems(self.train_data),
            sampler=SeededDraws(len(self.train_data)),
            batch_size=self.train_batch_size,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,
        )

    def _read_auxiliary(self, stage: str | None, target: list[str]) -> AnomalibDataset | None:
        """The auxiliary dataset if the stage wants it: required for a fit; for validation only if it can be read."""
        if not self._wants_auxiliary(stage):
            logger.info("Target (test) categories: %s; the auxiliary dataset is not read at this stage.", target)
            return None
        source = self._source("auxiliary")
        try:
            categories = source.resolve()
            dataset = self._datasets(source, categories)
        except (FileNotFoundError, ValueError) as error:
            if self._needs_auxiliary(stage):
                raise
            # Only news for a model that sets thresholds on validation data (BayesPFL runs none before testing);
            # nothing to download for a run that does not fit.
            logger.info(
                "No validation data: the auxiliary dataset (%s) is not there; a model that sets thresholds on "
                "validation data gets none.",
                source.option,
            )
            logger.debug("The auxiliary dataset cannot be read: %s", error)
            return None
        same_dataset = source.dataset_name == self._source("target").dataset_name
        overlap = sorted(set(categories) & set(target)) if same_dataset else []
        if overlap:
            logger.warning("Categories %s are in both the auxiliary and the target set: they are not unseen.", overlap)
        logger.info("Auxiliary (training) categories: %s; target (test) categories: %s", categories, target)
        return dataset

    def _setup(self, stage: str | None = None) -> None:
        target_source = self._source("target")
        target = target_source.resolve()
        self.test_data = self._datasets(target_source, target)
        auxiliary = self._read_auxiliary(stage, target)
        if auxiliary is not None:
            self.train_data = (
                MosaicDataset(auxiliary, self.mosaic_probability, self.class_name_of)
                if self.mosaic_probability
                else auxiliary
            )
        if self.val_split_mode == ValSplitMode.FROM_DIR:
            self.val_data = copy.deepcopy(auxiliary) if auxiliary is not None else self.test_data.subsample([])
