# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: Apache-2.0

"""Training items drawn with seeds from the main process, so that random augmentations do not depend on the workers.

anomalib's loader lets each data-loading worker seed itself, so the same run seed gives other augmentations (and
mosaics) with another ``num_workers``; :class:`SeededDraws` and :class:`SeededItems` give each item its own seed.
"""

from collections.abc import Iterator

import pandas as pd
import torch
from anomalib.data.dataclasses import ImageItem
from anomalib.data.datasets import AnomalibDataset
from torch.utils.data import Dataset, Sampler


class SeededDraws(Sampler[tuple[int, int]]):
    """A shuffled order of a dataset's items, each drawn with its own seed, all from the main process's generator.

    With :class:`SeededItems`, an item's random augmentations depend on the run's seed only, not on which data-loading
    worker (and how many) prepares it.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size).tolist()
        seeds = torch.randint(2**62, (self.size,)).tolist()
        return zip(order, seeds, strict=True)


class SeededItems(Dataset):
    """Prepare each item of ``dataset`` under the seed it was drawn with (see :class:`SeededDraws`).

    Args:
        dataset: The training dataset (its ``samples`` stay readable through this wrapper).
    """

    def __init__(self, dataset: AnomalibDataset) -> None:
        self.dataset = dataset

    @property
    def samples(self) -> pd.DataFrame:
        """The wrapped dataset's samples (callbacks read the training labels from them)."""
        return self.dataset.samples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, draw: tuple[int, int]) -> ImageItem:
        index, seed = draw
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
