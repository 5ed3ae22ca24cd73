"""Datasets and the LightningDataModule over the preprocessed cache."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L  # noqa: N812
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..datasets.base import Sample
from .cache import ImageCache


class CachedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Samples served from the cache: ``(uint8 (S, S) tensor, float32 age)``.

    Parameters
    ----------
    cache : ImageCache
    samples : sequence of Sample
        Samples not cached as ``ok`` (failed or rejected) are left out; see
        :attr:`samples` for the ones kept.
    """

    def __init__(self, cache: ImageCache, samples: Sequence[Sample]) -> None:
        self.cache = cache
        self.samples, self.where = cache.locate(samples)
        self.ages = np.asarray([s.age_years for s in self.samples], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard, row = self.where[i]
        image = torch.from_numpy(np.array(self.cache.image(int(shard), int(row))))
        return image, torch.tensor(self.ages[i])


class AgeDataModule(L.LightningDataModule):
    """Train and validation loaders over :class:`CachedImages`."""

    def __init__(self, train: CachedImages, val: CachedImages, batch_size: int = 32,
                 num_workers: int = 2) -> None:
        super().__init__()
        if len(train) == 0 or len(val) == 0:
            raise ValueError(f"empty split: {len(train)} training and {len(val)} validation "
                             "images after caching; add data or change --val-fraction")
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers

    def _loader(self, data: CachedImages, shuffle: bool) -> DataLoader:
        return DataLoader(
            data, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            drop_last=shuffle and len(data) > self.batch_size,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
