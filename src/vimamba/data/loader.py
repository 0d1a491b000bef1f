"""Loaders whose every batch is a function of (seed, epoch, position), so a run resumed mid-epoch replays it.

``EpochSampler`` puts the indices of one epoch in an order drawn from (seed, epoch) only, deals them to
the processes as ``DistributedSampler`` does (optionally with repeated augmentation), and can start at any
batch. Each item it yields carries a seed for its augmentation, derived from (seed, epoch, global position);
``SeededTransformDataset`` runs the transform under that seed without touching the global random state.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .datasets import ImageSource

__all__ = ["EpochSampler", "SeededTransformDataset", "aug_seed", "epoch_loader"]

_MASK = (1 << 63) - 1
_M64 = (1 << 64) - 1


def aug_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one item's augmentation; the same whatever process or resume point loads it."""
    # splitmix64-style mixing: cheap, and well spread for consecutive positions
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + (position + 1) * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    return x & _MASK


class EpochSampler(Sampler):
    """This process's share of one epoch, as ``(index, augmentation seed)`` items.

    Args:
        size: items in the data set.
        num_replicas, rank: processes and this one's number (1 and 0 without distribution).
        shuffle: draw the order from (seed, epoch); else 0..size-1.
        repeats: repeated augmentation (timm's RepeatAugSampler, DeiT's RASampler): each index appears
            ``repeats`` times, dealt to different processes, and the epoch keeps ``size`` items in all.
        pad: pad the order to a multiple of ``num_replicas`` (training); False deals it unevenly (evaluation).
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 repeats: int = 0, pad: bool = True):
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.shuffle, self.seed, self.repeats, self.pad = shuffle, seed, repeats, pad
        self.epoch = 0
        self.start = 0  # items of this process's share to skip (resuming mid-epoch)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _positions(self) -> tuple[list[int], range]:
        """The epoch's order over all processes, and the positions in it that are this process's share."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.repeats > 1:
            order = [i for i in order for _ in range(self.repeats)]
        if self.pad or self.repeats > 1:
            total = self._per_rank() * self.num_replicas
            while len(order) < total:
                order = order + order[: total - len(order)]
            # repeated augmentation keeps an epoch at `size` items (the repeats go to different processes)
            return order, range(self.rank, total, self.num_replicas)
        return order, range(self.rank, len(order), self.num_replicas)

    def _per_rank(self) -> int:
        return -(-self.size // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, positions = self._positions()
        for p in positions[self.start:]:
            yield order[p], aug_seed(self.seed, self.epoch, p)

    def __len__(self) -> int:
        share = self._per_rank() if self.pad or self.repeats > 1 else len(range(self.rank, self.size, self.num_replicas))
        return max(share - self.start, 0)


class SeededTransformDataset(Dataset):
    """Items of an ``ImageSource`` through ``transform``, with python/numpy/torch seeded per item.

    ``joint=True`` hands the transform the target too, ``transform(image, target) -> (image, target)``, for
    targets that must move with the image (segmentation masks).
    """

    def __init__(self, source: ImageSource, transform: Callable, joint: bool = False):
        self.source = source
        self.transform = transform
        self.joint = joint

    def _apply(self, image, target):
        return self.transform(image, target) if self.joint else (self.transform(image), target)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.source.load(index)
        if seed is None:
            return self._apply(image, target)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed & 0xFFFFFFFF)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self._apply(image, target)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def epoch_loader(dataset, sampler: Sampler, batch_size: int, *, drop_last: bool, seed: int, epoch: int, workers: int,
                 pin_memory: bool, collate_fn: Callable | None = None) -> DataLoader:
    """A ``DataLoader`` over ``sampler`` for one epoch, with its own generator seeded from (seed, epoch): the
    workers' seeds never draw on the global random state, so resuming does not shift it."""
    generator = torch.Generator()
    generator.manual_seed(seed * 7919 + epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False, generator=generator, collate_fn=collate_fn)
