"""Batches in a reproducible order: the same seed gives the same batches, in one process or many.

``EpochSampler`` draws each epoch's order from (seed, epoch) alone, splits it over torchrun
processes, and can start part-way through an epoch. Together with per-sample augmentation seeds
(``ImageFolderDataset.set_epoch``) this is what makes ``--resume`` bit-identical to a run that
was never stopped, whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSampler(Sampler[int]):
    """Indices for one process: shuffled (or weighted) per epoch, sharded, resumable.

    Every process draws the same global order from ``(seed, epoch)`` and takes every
    ``world_size``-th index starting at its rank. With ``weights`` the order is drawn with
    replacement in proportion to the weights (a class-balancing sampler).
    """

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int, rank: int = 0,
                 world_size: int = 1, weights: Sequence[float] | None = None,
                 drop_last: bool = False, batch_size: int = 1):
        if num_samples < 1:
            raise ValueError("EpochSampler needs at least one sample")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0  # index into this process's share where iteration begins

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start = start_batch * self.batch_size

    def _global_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=g)
        return torch.arange(self.num_samples)

    def _share(self) -> list[int]:
        order = self._global_order().tolist()
        if self.world_size > 1:
            if self.drop_last:
                usable = len(order) - len(order) % self.world_size
                order = order[:usable]
            order = order[self.rank::self.world_size]  # no padding: evaluation stays exact
        if self.drop_last:
            order = order[: len(order) - len(order) % self.batch_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._share()[self.start:])

    def __len__(self) -> int:
        return max(len(self._share()) - self.start, 0)


def build_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool,
                 workers: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: Sequence[float] | None = None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over an ``EpochSampler``; call ``set_epoch(loader, epoch)`` before each epoch."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank,  # type: ignore[arg-type]
                           world_size=world_size, weights=weights, drop_last=drop_last,
                           batch_size=batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin_memory,
        # a fixed generator: worker seeds do not draw from the global RNG, which resume restores
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Point the sampler and the dataset's augmentation seeds at ``epoch``.

    Works for the DataLoader of ``build_loader`` and for ``vit.data.memory.MemoryLoader`` (an
    ``EpochSampler`` and no dataset object).
    """
    if hasattr(loader, "set_epoch"):  # vit.data.shards.ShardLoader
        loader.set_epoch(epoch, start_batch)
        return
    sampler = loader.sampler
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(epoch, start_batch)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
