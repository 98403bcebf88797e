"""What every separation dataset returns, and how its examples become batches.

Shared by the corpus datasets (PolSESS, LibriMix, ...): a dataset yields
:class:`SeparationExample`, :func:`collate_separation` pads them into a
:class:`SeparationBatch`, and :func:`crop` cuts training segments.

Shapes: B batch, C sources (targets), T samples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

# A curriculum over MM-IPC variants: (first epoch, allowed variants) stages, sorted by epoch.
Curriculum = tuple[tuple[int, tuple[str, ...]], ...]


@dataclass(frozen=True)
class SeparationExample:
    """One mixture and its targets.

    Attributes:
        id: the example's name in its corpus.
        mix: (T,) the signal a model hears.
        sources: (C, T) the signals it should give back, aligned sample for sample with ``mix``.
        variant: the acoustic condition the mixture was built with (e.g. a PolSESS MM-IPC
            variant such as ``"SER"``); empty where a corpus has only one.
    """

    id: str
    mix: torch.Tensor
    sources: torch.Tensor
    variant: str = ""

    def __post_init__(self) -> None:
        if self.mix.dim() != 1:
            raise ValueError(f"example {self.id!r}: mix must be (T,), got shape {tuple(self.mix.shape)}")
        if self.sources.dim() != 2 or self.sources.shape[1] != self.mix.shape[0]:
            raise ValueError(
                f"example {self.id!r}: sources must be (C, T) with T = {self.mix.shape[0]} like the mix, "
                f"got shape {tuple(self.sources.shape)}"
            )

    @property
    def num_samples(self) -> int:
        return int(self.mix.shape[0])


@dataclass
class SeparationBatch:
    """Examples zero-padded to the longest.

    Attributes:
        mix: (B, T)
        sources: (B, C, T)
        lengths: (B,) long, each example's samples before padding.
        ids, variants: one per example, in batch order.
    """

    mix: torch.Tensor
    sources: torch.Tensor
    lengths: torch.Tensor
    ids: list[str]
    variants: list[str]

    def to(self, device: torch.device | str) -> SeparationBatch:
        return replace(self, mix=self.mix.to(device), sources=self.sources.to(device), lengths=self.lengths.to(device))

    def __len__(self) -> int:
        return len(self.ids)


def collate_separation(items: list[SeparationExample]) -> SeparationBatch:
    """Stack examples into a batch, zero-padding mix and sources to the longest example.

    Raises:
        ValueError: no examples, or examples with different numbers of sources (naming them).
    """
    if not items:
        raise ValueError("collate_separation: no examples to batch")
    counts = {x.id: int(x.sources.shape[0]) for x in items}
    if len(set(counts.values())) > 1:
        raise ValueError(f"collate_separation: examples have different numbers of sources: {counts}")
    lengths = torch.tensor([x.num_samples for x in items], dtype=torch.long)
    longest = int(lengths.max())
    mix = torch.stack([F.pad(x.mix, (0, longest - x.num_samples)) for x in items])  # (B, T)
    sources = torch.stack([F.pad(x.sources, (0, longest - x.num_samples)) for x in items])  # (B, C, T)
    return SeparationBatch(mix, sources, lengths, [x.id for x in items], [x.variant for x in items])


def crop_samples(seconds: float | None, sample_rate: int) -> int | None:
    """A crop of ``seconds`` in samples, at least 1; ``None``: no crop (whole examples)."""
    return None if seconds is None else max(1, round(float(seconds) * sample_rate))


def crop(example: SeparationExample, num_samples: int, rng: np.random.Generator | None = None, pad: bool = True) -> SeparationExample:
    """Cut ``num_samples`` from mix and sources at the same place.

    Args:
        example: the example to cut.
        num_samples: the segment's length.
        rng: draws the start uniformly over every position that fits; ``None`` starts at 0.
        pad: an example shorter than ``num_samples`` is zero-padded at the end to exactly
            ``num_samples``; with ``pad=False`` it is returned as it is, so that a batch's
            ``lengths`` keep its true length and padding stays out of the loss.

    Returns:
        A new example with mix (num_samples,) and sources (C, num_samples) (or shorter,
        with ``pad=False``); ``id`` and ``variant`` unchanged.
    """
    if num_samples <= 0:
        raise ValueError(f"crop: num_samples must be > 0, got {num_samples}")
    n = example.num_samples
    if n > num_samples:
        start = 0 if rng is None else int(rng.integers(0, n - num_samples + 1))
        return replace(example, mix=example.mix[start : start + num_samples], sources=example.sources[:, start : start + num_samples])
    if n < num_samples and pad:
        return replace(example, mix=F.pad(example.mix, (0, num_samples - n)), sources=F.pad(example.sources, (0, num_samples - n)))
    return example


class SegmentedDataset(Dataset):
    """Examples of ``dataset`` cut to ``num_samples`` with :func:`crop` (shorter ones stay short).

    ``random=True`` (training) draws the window from ``(seed, epoch, index)``; otherwise it
    starts at 0. :meth:`set_epoch` is passed on to ``dataset`` when it has one.
    """

    def __init__(self, dataset: Dataset, num_samples: float, random: bool, seed: int = 0) -> None:
        self.dataset, self.num_samples, self.random, self.seed = dataset, max(1, round(num_samples)), random, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> SeparationExample:
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.random else None
        return crop(self.dataset[index], self.num_samples, rng, pad=False)


class LimitedDataset(Dataset):
    """The first ``n`` examples of ``dataset`` (quick runs, fixed evaluation subsets)."""

    def __init__(self, dataset: Dataset, n: int) -> None:
        self.dataset, self.n = dataset, min(int(n), len(dataset))  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> SeparationExample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.dataset[index]


def active_variants(curriculum: Curriculum, epoch: int) -> tuple[str, ...] | None:
    """The variants the curriculum allows at ``epoch`` (None: no stage yet, all allowed)."""
    allowed = None
    for start, variants in curriculum:
        if epoch >= start:
            allowed = variants
    return allowed


class CurriculumDataset(Dataset):
    """A training set that draws its variants from the curriculum's stage for the epoch.

    ``dataset``, or the set it wraps (:class:`SegmentedDataset`, :class:`LimitedDataset`), must
    take ``set_curriculum`` (PolSESS). The stage follows ``set_epoch``, which the trainer calls
    before each epoch's loader iterator (and its workers' copies of the set) is made, also for
    the epoch a resumed run starts in, partway through or not
    (:class:`~sonus.train.callbacks.SamplerEpoch`, :class:`~sonus.train.trainer.RunData`).
    """

    def __init__(self, dataset: Dataset, curriculum: Curriculum) -> None:
        target = dataset
        while not hasattr(target, "set_curriculum"):
            target = getattr(target, "dataset", None)
            if target is None:
                raise ValueError("data.curriculum needs a dataset of MM-IPC variants (data=polsess)")
        self.dataset, self.target, self.curriculum = dataset, target, curriculum

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        stage = active_variants(self.curriculum, epoch)
        if stage is not None and stage != self.target.stage:
            log.info("epoch %d: curriculum variants %s", epoch, ",".join(stage))
        self.target.set_curriculum(stage)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> SeparationExample:
        return self.dataset[index]
