"""Samplers, DDP-aware, that a run resumed mid-epoch can skip into.

:class:`DurationBucketSampler` batches utterances of similar duration, at most
``max_duration`` seconds of *padded* audio (longest x count) a batch, so little compute goes
to padding (lhotse's DynamicBucketingSampler follows the same idea). :class:`EpochSampler`
shuffles fixed-size items (separation mixtures, codec segments) anew each epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Dataset, DistributedSampler, Sampler


class _Resumable:
    """``resume(done)``: the next iteration yields the current epoch after its first ``done``
    entries (a run resumed from a checkpoint written mid-epoch); later iterations are whole
    epochs. ``len()`` stays the whole epoch's, as the trainer's batch count expects."""

    _skip = 0

    def resume(self, done: int) -> None:
        if not 0 <= done <= len(self):  # type: ignore[arg-type]
            raise ValueError(f"cannot resume after {done} of an epoch of {len(self)}")  # type: ignore[arg-type]
        self._skip = done

    def _rest(self, epoch: list) -> Iterator:
        skip, self._skip = self._skip, 0
        return iter(epoch[skip:])


class DurationBucketSampler(_Resumable, Sampler[list[int]]):
    """Yields lists of indices.

    Args:
        durations: seconds per utterance.
        max_duration: padded seconds per batch.
        max_batch_size: cap on utterances per batch.
        num_buckets: utterances are sorted by duration and cut into this many buckets;
            batches are formed inside a bucket, then shuffled across buckets.
        shuffle, seed: per-epoch shuffling (call :meth:`set_epoch`).
        sorted_epochs: the first this many epochs go from the shortest batches to the
            longest ("SortaGrad", Amodei et al. 2016: a transducer or CTC model finds its
            alignments sooner on short utterances); batches are still shuffled inside a bucket.
            A fraction sorts a start: with 0.2 (or 1.2), the first epoch (or the second) opens
            with a random fifth of its batches, shortest first, then the rest shuffled, for
            corpora of which one epoch is about the whole training run.
        num_replicas, rank: under DDP every rank gets the same number of batches,
            different ones (batches dealt round-robin; the remainder is dropped).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_duration: float,
        max_batch_size: int = 512,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        sorted_epochs: float = 0,
    ) -> None:
        if max_duration <= 0:
            raise ValueError(f"max_duration must be > 0, got {max_duration}")
        too_long = [i for i, d in enumerate(durations) if d > max_duration]
        if too_long:
            raise ValueError(
                f"{len(too_long)} utterance(s) are longer than max_duration={max_duration}s "
                f"(e.g. index {too_long[0]}: {durations[too_long[0]]:.2f}s); raise max_duration or filter them"
            )
        self.durations = list(durations)
        self.max_duration, self.max_batch_size = max_duration, max_batch_size
        self.num_buckets, self.shuffle, self.seed = max(1, num_buckets), shuffle, seed
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.sorted_epochs = sorted_epochs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = sorted(range(len(self.durations)), key=lambda i: self.durations[i])
        size = math.ceil(len(order) / self.num_buckets)
        batches: list[list[int]] = []
        for start in range(0, len(order), size):
            bucket = order[start : start + size]
            if self.shuffle:
                rng.shuffle(bucket)  # durations inside a bucket are close, so order is free
            batch: list[int] = []
            longest = 0.0
            for i in bucket:
                d = self.durations[i]
                if batch and (max(longest, d) * (len(batch) + 1) > self.max_duration or len(batch) >= self.max_batch_size):
                    batches.append(batch)
                    batch, longest = [], 0.0
                batch.append(i)
                longest = max(longest, d)
            if batch:
                batches.append(batch)
        whole, part = divmod(self.sorted_epochs, 1)
        if self.shuffle and self.epoch >= whole:
            rng.shuffle(batches)
            if self.epoch == whole and part > 0:  # a sorted start
                k = round(part * len(batches))
                batches[:k] = sorted(batches[:k], key=lambda b: max(self.durations[i] for i in b))
        if self.num_replicas > 1:
            n = len(batches) // self.num_replicas
            batches = batches[self.rank : n * self.num_replicas : self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return self._rest(self._batches())  # resume(batches)

    def __len__(self) -> int:
        return len(self._batches())

    def padding_fraction(self) -> float:
        """Share of padded frames over all batches of the current epoch."""
        total = padded = 0.0
        for b in self._batches():
            d = [self.durations[i] for i in b]
            total += max(d) * len(d)
            padded += max(d) * len(d) - sum(d)
        return padded / total if total else 0.0


class EpochSampler(_Resumable, DistributedSampler):
    """``DistributedSampler``'s shuffle, drawn from ``seed`` and the epoch (not from the global
    random stream), also for a single process; ``resume(items)`` skips into it.

    Args:
        dataset: anything with ``len()``.
        num_replicas, rank: the DDP world size and this process' rank (1 and 0 without DDP).
        shuffle, seed: a new order each epoch (``set_epoch``, which Lightning calls).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)

    def __iter__(self) -> Iterator[int]:
        return self._rest(list(super().__iter__()))  # resume(items): batches done x batch size
