"""Balanced mini-batches: every batch holds positive and negative patches 1:1 (paper §2.2.2)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class BalancedBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding ``batch_size // 2`` positive and ``batch_size // 2`` negative indices.

    Positives and negatives are each drawn from a fresh random permutation, restarted when used up (so
    the smaller group repeats within an epoch). The draw depends only on ``(seed, epoch)``: with several
    processes (``torch.distributed``) every rank generates the same global sequence of
    ``num_batches * world_size`` batches and keeps batches ``rank, rank + world_size, ...``, the way
    ``DistributedSampler`` shards an epoch, so the ranks see disjoint batches. Call :meth:`set_epoch`
    before each epoch.

    Args:
        positive: bool per dataset index (True = the patch holds a calcification label).
        batch_size: even number of patches per batch (per process).
        num_batches: batches per epoch per process; default covers every positive once per epoch
            over all processes.
    """

    def __init__(
        self,
        positive: Sequence[bool],
        batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2, got {batch_size}")
        positive = np.asarray(positive, dtype=bool)
        self.pos = np.flatnonzero(positive)
        self.neg = np.flatnonzero(~positive)
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ValueError(
                f"need positive and negative patches, got {len(self.pos)} and {len(self.neg)}"
            )
        self.half = batch_size // 2
        if num_batches is None or num_batches <= 0:
            num_batches = max(1, math.ceil(len(self.pos) / (self.half * world_size)))
        self.num_batches = int(num_batches)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    @staticmethod
    def _stream(rng: np.random.Generator, items: np.ndarray, n: int) -> np.ndarray:
        reps = math.ceil(n / len(items))
        return np.concatenate([rng.permutation(items) for _ in range(reps)])[:n]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.num_batches * self.world_size
        pos = self._stream(rng, self.pos, total * self.half).reshape(total, self.half)
        neg = self._stream(rng, self.neg, total * self.half).reshape(total, self.half)
        for b in range(self.rank, total, self.world_size):
            batch = np.concatenate([pos[b], neg[b]])
            yield [int(i) for i in batch]
