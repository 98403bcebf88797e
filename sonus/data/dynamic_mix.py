"""Dynamic mixing: LibriMix-style mixtures (:func:`sonus.data.librimix.mix_sources`) drawn on
the fly from a pool of utterances and noise files, new ones every epoch.

Shapes: C sources, T samples.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from sonus.audio import augment
from sonus.audio.io import load_audio
from sonus.data.librimix import (
    MixConfig,
    Mixture,
    MixType,
    cut,
    keep_speakers,
    librispeech_utterances,
    mix_sources,
)
from sonus.data.manifest import Utterance, read_manifest
from sonus.data.separation import SeparationExample


class AudioCache:
    """Audio read once at ``sample_rate`` and kept, least recently used dropped first,
    up to ``max_mb`` megabytes."""

    def __init__(self, sample_rate: int, max_mb: float = 1024.0) -> None:
        self.sample_rate = sample_rate
        self.max_bytes = int(max_mb * 2**20)
        self._items: OrderedDict[tuple[str, float, float | None], np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, path: str | os.PathLike, offset: float = 0.0, duration: float | None = None) -> np.ndarray:
        key = (str(path), offset, duration)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        wave = load_audio(path, self.sample_rate, offset, duration).numpy()
        if wave.nbytes <= self.max_bytes:
            self._items[key] = wave
            self._bytes += wave.nbytes
            while self._bytes > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1].nbytes
        return wave


@dataclass(frozen=True)
class Draw:
    """What one dynamic mixture is made of: utterances of different speakers, and a noise file."""

    utterances: tuple[Utterance, ...]
    noise: Path | None

    @property
    def id(self) -> str:
        """LibriMix's mixture name: the utterance ids joined by ``_``."""
        return "_".join(u.id for u in self.utterances)


class DynamicMixDataset(Dataset):
    """Mixtures drawn on the fly (dynamic mixing): each item picks ``cfg.n_src`` utterances of
    different speakers and a noise file and mixes them with :func:`mix_sources`.

    Speakers are drawn in proportion to their number of utterances (so every utterance is
    equally likely), or to ``speaker_weights``, then an utterance of each. Item ``index``
    depends only on ``(seed, epoch, index)``: :meth:`set_epoch` gives new mixtures, the same
    triple the same one.
    Loaded audio (resampled once to ``cfg.sample_rate``) is cached, per DataLoader worker.

    Args:
        utterances: the pool, each with a ``speaker`` and an audio file.
        cfg: how to mix; its ``noise`` folder supplies noise unless ``noise_files`` is given.
        num_items: items per epoch.
        seed: seeds the draws.
        mixture: what ``__getitem__`` returns as ``mix``; default mix_both with noise, else mix_clean.
        cache_mb: the audio cache's size.
        noise_files: the noise files to draw from, instead of ``cfg.noise``'s.
        speed_factors: speed perturbation of the sources (Ko et al. 2015), one factor drawn per
            source from these, e.g. (0.95, 1.0, 1.05) as SpeechBrain's WSJ0-2mix recipes: tempo
            and pitch move together, so the pool seems to hold more speakers. ``None``: off.
        speaker_weights: how likely each speaker is to be drawn (any positive scale), instead
            of its number of utterances; :meth:`from_pools` sets it.
        fill: a source shorter than the crop (``cfg.segment``) is followed by more utterances of
            its speaker, 0.05-0.3 s apart, until it is as long, so a pool of short utterances
            (digits, commands) still gives full-length mixtures. ``False``: short sources stay.
        eq_db: each source (and so its target) goes through :func:`~sonus.audio.augment.random_eq`
            with gains up to +-``eq_db`` dB; ``None``: off.

    Raises:
        ValueError: an utterance lacks a speaker or audio, fewer than ``n_src`` speakers, or
            ``speaker_weights`` misses a speaker or has a weight that is not positive.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        cfg: MixConfig,
        num_items: int,
        *,
        seed: int = 0,
        mixture: MixType | None = None,
        cache_mb: float = 1024.0,
        noise_files: Sequence[str | os.PathLike] | None = None,
        speed_factors: Sequence[float] | None = None,
        speaker_weights: Mapping[str, float] | None = None,
        fill: bool = False,
        eq_db: float | None = None,
    ) -> None:
        if num_items < 1:
            raise ValueError(f"DynamicMixDataset: num_items must be >= 1, got {num_items}")
        if speed_factors is not None and (not speed_factors or min(speed_factors) <= 0):
            raise ValueError(f"DynamicMixDataset: speed_factors must be positive numbers, got {speed_factors}")
        if eq_db is not None and not eq_db >= 0:
            raise ValueError(f"DynamicMixDataset: eq_db must be >= 0 dB, got {eq_db}")
        if fill and cfg.segment is None:
            raise ValueError("DynamicMixDataset: fill lengthens sources to the crop, but MixConfig.segment is None")
        self.speed_factors = None if speed_factors is None else tuple(float(f) for f in speed_factors)
        self.fill, self.eq_db = bool(fill), None if eq_db is None else float(eq_db)
        by_speaker: dict[str, list[Utterance]] = {}
        for u in utterances:
            if u.speaker is None or u.audio_filepath is None:
                raise ValueError(f"DynamicMixDataset: utterance {u.id!r} ({u.path}) needs a speaker and an audio file")
            by_speaker.setdefault(u.speaker, []).append(u)
        if len(by_speaker) < cfg.n_src:
            raise ValueError(f"DynamicMixDataset: {cfg.n_src} speakers per mixture, but the utterances have "
                             f"{len(by_speaker)}: {sorted(by_speaker)}")  # fmt: skip
        self.speakers = sorted(by_speaker)
        self.by_speaker = {s: sorted(by_speaker[s], key=lambda u: u.id) for s in self.speakers}
        if speaker_weights is None:
            counts = np.array([len(self.by_speaker[s]) for s in self.speakers], dtype=np.float64)
        else:
            if missing := [s for s in self.speakers if s not in speaker_weights]:
                raise ValueError(f"DynamicMixDataset: speaker_weights has no weight for speakers {missing[:5]}")
            counts = np.array([float(speaker_weights[s]) for s in self.speakers], dtype=np.float64)
            if not np.all(counts > 0):
                raise ValueError(f"DynamicMixDataset: speaker_weights must be > 0, got {dict(zip(self.speakers, counts))}")
        self.weights = counts / counts.sum()
        if noise_files is not None:
            self.noise_files = [Path(p) for p in noise_files]
        else:
            self.noise_files = [] if cfg.noise is None else augment.noise_files(cfg.noise)
        if mixture is not None and mixture != "mix_clean" and not self.noise_files:
            raise ValueError(f"DynamicMixDataset: mixture {mixture!r} needs noise; set MixConfig.noise")
        self.cfg, self.num_items, self.seed = cfg, num_items, seed
        self.kind: MixType = mixture or ("mix_both" if self.noise_files else "mix_clean")
        self.epoch = 0
        self.cache = AudioCache(cfg.sample_rate, cache_mb)

    @classmethod
    def from_librispeech(cls, source: str | os.PathLike, cfg: MixConfig, num_items: int,
                         speakers: Iterable[str] | None = None, **kwargs) -> DynamicMixDataset:  # fmt: skip
        """From a LibriSpeech folder, keeping only ``speakers`` if given (e.g. ``speaker_split(...).train``)."""
        return cls(keep_speakers(librispeech_utterances(source), speakers), cfg, num_items, **kwargs)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, cfg: MixConfig, num_items: int,
                      speakers: Iterable[str] | None = None, **kwargs) -> DynamicMixDataset:  # fmt: skip
        """From a sonus manifest whose lines give ``speaker``."""
        return cls(keep_speakers(read_manifest(path), speakers), cfg, num_items, **kwargs)

    @classmethod
    def from_pools(cls, pools: Sequence[tuple[Sequence[Utterance], float]], cfg: MixConfig, num_items: int,
                   **kwargs) -> DynamicMixDataset:  # fmt: skip
        """One dataset over several corpora, ``pools`` of ``(utterances, share)``: a drawn speaker
        comes from a pool with probability ``share`` (normalised over the pools), and within it
        in proportion to its utterances, so a small real corpus is not drowned by a large
        synthetic one. A speaker name may appear in one pool only.
        """
        weights: dict[str, float] = {}
        utterances: list[Utterance] = []
        for i, (utts, share) in enumerate(pools):
            if not share > 0 or not utts:
                raise ValueError(f"DynamicMixDataset.from_pools: pool {i} needs utterances and a share > 0, got "
                                 f"{len(utts)} utterances and share {share}")  # fmt: skip
            mine = {u.speaker for u in utts}
            if clash := mine & weights.keys():
                raise ValueError(f"DynamicMixDataset.from_pools: speakers {sorted(clash)[:5]} are in pool {i} and an earlier one")
            for u in utts:  # a missing speaker is reported by __init__
                if u.speaker is not None:
                    weights[u.speaker] = weights.get(u.speaker, 0.0) + float(share) / len(utts)
            utterances.extend(utts)
        return cls(utterances, cfg, num_items, speaker_weights=weights, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Draw the mixtures of ``epoch``."""
        if epoch < 0:
            raise ValueError(f"DynamicMixDataset: epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    def _rng(self, index: int) -> np.random.Generator:
        if index < 0:
            raise IndexError(f"DynamicMixDataset: index {index} < 0")
        return np.random.default_rng([self.seed, self.epoch, index])

    def _draw(self, rng: np.random.Generator) -> Draw:
        picked = rng.choice(len(self.speakers), size=self.cfg.n_src, replace=False, p=self.weights)
        utts = []
        for s in picked:
            pool = self.by_speaker[self.speakers[int(s)]]
            utts.append(pool[int(rng.integers(len(pool)))])
        noise = self.noise_files[int(rng.integers(len(self.noise_files)))] if self.noise_files else None
        return Draw(tuple(utts), noise)

    def draw(self, index: int) -> Draw:
        """What item ``index`` of this epoch is made of (no audio is read)."""
        return self._draw(self._rng(index))

    def mixture(self, index: int) -> tuple[Draw, Mixture]:
        """Item ``index`` of this epoch with all its parts (any ``index >= 0``, also past ``len``)."""
        rng = self._rng(index)
        draw = self._draw(rng)
        sources = [self._load(u) for u in draw.utterances]
        if self.fill:
            sources = [self._filled(s, u.speaker or "", rng) for s, u in zip(sources, draw.utterances)]
        if self.speed_factors is not None:  # a factor per source, drawn between the draw and the mixing's choices
            factors = [self.speed_factors[int(rng.integers(len(self.speed_factors)))] for _ in sources]
            sources = [augment.speed_perturb(torch.from_numpy(s), f, self.cfg.sample_rate).numpy() for s, f in zip(sources, factors)]
        if self.eq_db is not None:  # on the crop (mix_sources then keeps it whole): filtering whole utterances costs 4x more
            sources = [augment.random_eq(cut(s, self.cfg.segment_samples, rng), rng, self.cfg.sample_rate, self.eq_db) for s in sources]
        noise = None if draw.noise is None else self.cache.get(draw.noise)
        return draw, mix_sources(sources, noise, self.cfg, rng)

    def _load(self, u: Utterance) -> np.ndarray:
        return self.cache.get(u.audio_filepath or "", u.offset, u.duration if u.offset else None)

    def _filled(self, source: np.ndarray, speaker: str, rng: np.random.Generator) -> np.ndarray:
        """``source`` followed by more utterances of ``speaker`` (drawn from ``rng``), each after
        a 0.05-0.3 s pause, until it is at least the crop long."""
        sr = self.cfg.sample_rate
        fastest = max(self.speed_factors or (1.0,))  # speed perturbation comes after and shortens a source up to this factor
        want, parts, n = round((self.cfg.segment_samples or 0) * fastest), [source], source.shape[0]
        pool = self.by_speaker[speaker]
        while n < want:
            pause = np.zeros(int(rng.uniform(0.05, 0.3) * sr), dtype=np.float32)
            more = self._load(pool[int(rng.integers(len(pool)))])
            parts += [pause, more]
            n += pause.shape[0] + more.shape[0]
        return source if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, index: int) -> SeparationExample:
        if index >= self.num_items:
            raise IndexError(f"DynamicMixDataset: index {index} out of range ({self.num_items} items)")
        draw, mixture = self.mixture(index)
        return mixture.example(draw.id, self.kind)
