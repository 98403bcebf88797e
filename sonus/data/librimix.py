"""LibriMix-style speech mixtures: mixed on the fly, or read from a LibriMix folder.

Cosentino et al., "LibriMix: An Open-Source Dataset for Generalizable Speech Separation"
(2020), github.com/JorisCos/LibriMix. As there, every source is brought to a loudness drawn
uniformly from -33..-25 LUFS (ITU-R BS.1770), the noise to -38..-30 LUFS; a source that
would clip is instead scaled to a 0.9 peak; when the mixture peaks above 0.9, mixture,
sources and noise are all scaled down by the same factor. ``min`` mode cuts every source
to the shortest, ``max`` mode zero-pads them to the longest. Optional simulated
reverberation (:mod:`sonus.audio.room`) is sonus's own addition.

Unlike LibriMix, loudness is measured at the output rate on the part of each signal that
ends up in the mixture (after the ``min`` cut), so the levels drawn are the levels heard.

The LibriMix folder layout and its reader are in :mod:`sonus.data.librimix_folder`; mixtures
drawn on the fly (dynamic mixing) in :mod:`sonus.data.dynamic_mix`.
Shapes: C sources, T samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from sonus.audio import augment
from sonus.audio.loudness import integrated_loudness
from sonus.audio.room import RoomConfig, RoomInfo, reverberate, simulate_rirs
from sonus.data.manifest import Utterance
from sonus.data.recipes._split import pick_held_out
from sonus.data.recipes.librispeech import find_subsets, scan_subset
from sonus.data.separation import SeparationExample, crop_samples

Mode = Literal["min", "max"]
MixType = Literal["mix_clean", "mix_both", "mix_single"]
SAMPLE_RATES = (8000, 16000)


# --- mixing -----------------------------------------------------------------------------


def _range(value: Iterable[float], name: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in value)
    if lo > hi:
        raise ValueError(f"MixConfig.{name} must be a range [low, high], got {[lo, hi]}")
    return lo, hi


@dataclass(frozen=True)
class MixConfig:
    """How sources are mixed.

    Attributes:
        n_src: speakers per mixture (C).
        sample_rate: 8000 or 16000; sources and noise must already be at this rate.
        mode: ``min`` (cut to the shortest source) or ``max`` (zero-pad to the longest).
        speech_lufs: loudness range each source is drawn from (LibriMix: -33..-25).
        noise: a folder of noise files (.wav/.flac) the datasets draw from; ``None``: no noise.
        noise_lufs: loudness range of the noise (LibriMix with WHAM: -38..-30).
        reverb: simulated rooms (a :class:`RoomConfig`, a mapping of its fields, or ``True``
            for the defaults); ``None``: dry mixtures.
        reverberant_targets: with reverb, the targets are the reverberant sources instead of
            their direct sound (dereverberation is then not asked for).
        segment: cut every utterance to at most this many seconds (at a random place) before
            mixing; ``None`` mixes whole utterances.
        max_amp: the clipping rule's peak (LibriMix: 0.9).
    """

    n_src: int = 2
    sample_rate: int = 8000
    mode: Mode = "min"
    speech_lufs: tuple[float, float] = (-33.0, -25.0)
    noise: str | None = None
    noise_lufs: tuple[float, float] = (-38.0, -30.0)
    reverb: RoomConfig | None = None
    reverberant_targets: bool = False
    segment: float | None = None
    max_amp: float = 0.9

    @property
    def segment_samples(self) -> int | None:
        """``segment`` in samples (at least 1); None: whole utterances."""
        return crop_samples(self.segment, self.sample_rate)

    def __post_init__(self) -> None:
        if self.n_src < 1:
            raise ValueError(f"MixConfig.n_src must be >= 1, got {self.n_src}")
        if self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"MixConfig.sample_rate must be one of {SAMPLE_RATES}, got {self.sample_rate}")
        if self.mode not in get_args(Mode):
            raise ValueError(f"MixConfig.mode must be one of {list(get_args(Mode))}, got {self.mode!r}")
        object.__setattr__(self, "speech_lufs", _range(self.speech_lufs, "speech_lufs"))
        object.__setattr__(self, "noise_lufs", _range(self.noise_lufs, "noise_lufs"))
        if self.noise is not None:
            object.__setattr__(self, "noise", str(self.noise))
        if self.reverb is True:
            object.__setattr__(self, "reverb", RoomConfig())
        elif self.reverb is False:
            object.__setattr__(self, "reverb", None)
        elif isinstance(self.reverb, Mapping):
            object.__setattr__(self, "reverb", RoomConfig(**self.reverb))
        if self.segment is not None and not self.segment > 0:
            raise ValueError(f"MixConfig.segment must be > 0 seconds or None, got {self.segment}")
        if not 0 < self.max_amp <= 1:
            raise ValueError(f"MixConfig.max_amp must be in (0, 1], got {self.max_amp}")


@dataclass(frozen=True)
class Mixture:
    """The parts of one mixture, all float32, already scaled; they add up exactly.

    Attributes:
        sources: (C, T) the targets: the dry sources, or with reverb their direct sound
            (or their reverberant images with ``reverberant_targets``).
        images: (C, T) what each source adds to the mixture (``sources`` without reverb).
        noise: (T,) the scaled noise, or ``None``.
        lengths: (C,) samples of each source before ``max`` mode's padding.
        gains: (C,) factors applied to each source (clipping rule included).
        lufs: (C,) loudness of each image in the mixture (the drawn one unless scaled down).
        noise_gain, noise_lufs, noise_start: the same for the noise; ``noise_start`` is the
            sample of the noise signal the mixture starts at (a short noise loops).
        scale: the clipping rule's factor (1.0 when the mixture did not peak above ``max_amp``).
        room: the simulated room, with reverb.
    """

    sources: np.ndarray
    images: np.ndarray
    noise: np.ndarray | None
    lengths: tuple[int, ...]
    gains: tuple[float, ...]
    lufs: tuple[float, ...]
    noise_gain: float | None
    noise_lufs: float | None
    noise_start: int | None
    scale: float
    room: RoomInfo | None

    def parts(self, kind: MixType) -> list[np.ndarray]:
        """The signals summed into mixture ``kind`` (LibriMix's mix_clean / mix_both / mix_single)."""
        if kind not in get_args(MixType):
            raise ValueError(f"unknown mixture type {kind!r}; expected one of {list(get_args(MixType))}")
        if kind != "mix_clean" and self.noise is None:
            raise ValueError(f"mixture type {kind!r} needs noise, and this mixture has none")
        speech = list(self.images) if kind != "mix_single" else [self.images[0]]
        return speech + ([self.noise] if kind != "mix_clean" else [])

    def mix(self, kind: MixType = "mix_clean") -> np.ndarray:
        """(T,) mixture ``kind``: the sum of :meth:`parts`."""
        return np.sum(self.parts(kind), axis=0, dtype=np.float32)

    def targets(self, kind: MixType = "mix_clean") -> np.ndarray:
        """(C, T) targets of ``kind`` (only source 1 for mix_single)."""
        return self.sources[:1] if kind == "mix_single" else self.sources

    def example(self, id: str, kind: MixType | None = None) -> SeparationExample:
        """As a :class:`SeparationExample`; ``kind`` defaults to mix_both with noise, else mix_clean."""
        kind = kind or ("mix_clean" if self.noise is None else "mix_both")
        return SeparationExample(id, torch.from_numpy(self.mix(kind)), torch.from_numpy(np.ascontiguousarray(self.targets(kind))))


def _level(x: np.ndarray, lufs_range: tuple[float, float], cfg: MixConfig, rng: np.random.Generator) -> tuple[float, float]:
    """Gain bringing ``x`` to a loudness drawn from ``lufs_range`` (or to a ``max_amp`` peak
    where that would clip), and the loudness ``x`` had."""
    target = float(rng.uniform(*lufs_range))
    lufs = integrated_loudness(x, cfg.sample_rate)
    if not np.isfinite(lufs):
        return 1.0, lufs  # silence: nothing to level
    gain = 10 ** ((target - lufs) / 20)
    peak = float(np.max(np.abs(x)))
    if gain * peak >= 1.0:
        gain = cfg.max_amp / peak
    return gain, lufs


def _fit(x: np.ndarray, length: int) -> np.ndarray:
    return x[:length] if x.shape[0] >= length else np.pad(x, (0, length - x.shape[0]))


def cut(source: np.ndarray, segment: int | None, rng: np.random.Generator) -> np.ndarray:
    """A ``segment``-sample stretch of ``source`` at a place drawn from ``rng`` (one draw); all of
    it, with no draw, if it is no longer or ``segment`` is None."""
    if segment is None or source.shape[0] <= segment:
        return source
    start = int(rng.integers(source.shape[0] - segment + 1))
    return source[start : start + segment]


def mix_sources(sources: Sequence[np.ndarray], noise: np.ndarray | None, cfg: MixConfig, rng: np.random.Generator) -> Mixture:
    """Mix ``cfg.n_src`` utterances (and noise) as LibriMix does; a pure function of its inputs.

    Args:
        sources: C signals (T_i,) at ``cfg.sample_rate``, one per speaker.
        noise: (T_n,) at ``cfg.sample_rate``, any length (a stretch is drawn; a short one
            loops), or ``None``.
        rng: every random choice (cuts, room, noise stretch, loudness) comes from it, in
            that order, so the same state gives the same mixture.

    Returns:
        A :class:`Mixture` of length T = min or max of the (cut) sources' lengths.
    """
    if len(sources) != cfg.n_src:
        raise ValueError(f"mix_sources: MixConfig.n_src = {cfg.n_src}, got {len(sources)} sources")
    clips = []
    for i, s in enumerate(sources):
        s = np.asarray(s, dtype=np.float32)
        if s.ndim != 1 or s.shape[0] == 0:
            raise ValueError(f"mix_sources: source {i} must be a non-empty (T,) array, got shape {s.shape}")
        clips.append(cut(s, cfg.segment_samples, rng))
    room = None
    images, targets = clips, clips
    if cfg.reverb is not None:
        rirs, room = simulate_rirs(cfg.n_src, cfg.sample_rate, rng, cfg.reverb)  # (C, L)
        wet = [reverberate(c, rirs[i], room.direct[i]) for i, c in enumerate(clips)]
        images = [w.reverberant for w in wet]
        targets = images if cfg.reverberant_targets else [w.direct for w in wet]
    lengths = [c.shape[0] for c in clips]
    total = min(lengths) if cfg.mode == "min" else max(lengths)
    kept = tuple(min(n, total) for n in lengths)

    noise_part, noise_start = None, None
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float32)
        if noise.ndim != 1 or noise.shape[0] == 0:
            raise ValueError(f"mix_sources: noise must be a non-empty (T,) array, got shape {noise.shape}")
        noise_start = int(rng.integers(noise.shape[0]))
        noise_part = augment.noise_crop(noise, noise_start, total)

    parts = [_fit(x, total) for x in images]  # C images (T,), then the noise
    levels = [_level(x[:n], cfg.speech_lufs, cfg, rng) for x, n in zip(parts, kept)]
    if noise_part is not None:
        parts.append(noise_part)
        levels.append(_level(noise_part, cfg.noise_lufs, cfg, rng))
    gains = np.array([g for g, _ in levels])
    peak = float(np.max(np.abs(np.sum([g * x.astype(np.float64) for g, x in zip(gains, parts)], axis=0))))
    scale = cfg.max_amp / peak if peak > cfg.max_amp else 1.0  # LibriMix's clipping rule
    gains = gains * scale
    with np.errstate(divide="ignore"):
        lufs = [lu + 20 * np.log10(g) for (_, lu), g in zip(levels, gains)]
    scaled = [(g * x).astype(np.float32) for g, x in zip(gains, parts)]
    c, noisy = cfg.n_src, noise_part is not None
    return Mixture(
        sources=np.stack([(g * _fit(t, total)).astype(np.float32) for g, t in zip(gains, targets)]),
        images=np.stack(scaled[:c]),
        noise=scaled[c] if noisy else None,
        lengths=kept,
        gains=tuple(float(g) for g in gains[:c]),
        lufs=tuple(float(x) for x in lufs[:c]),
        noise_gain=float(gains[c]) if noisy else None,
        noise_lufs=float(lufs[c]) if noisy else None,
        noise_start=noise_start,
        scale=float(scale),
        room=room,
    )


# --- speakers and utterances ------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerSplit:
    """Speaker ids of each split (sorted); no speaker is in two."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]

    def __getitem__(self, split: str) -> tuple[str, ...]:
        if split not in ("train", "dev", "test"):
            raise KeyError(f"unknown split {split!r}; expected train, dev or test")
        return getattr(self, split)

    def with_train(self, keep: int | Iterable[str | int] | None, seed: int = 42) -> SpeakerSplit:
        """The same split with fewer training speakers (learning curves over speakers); dev and
        test are untouched. ``keep``: how many (chosen as held-out speakers are, by ``seed``),
        or their ids (any iterable; numbers, as YAML gives them, are read as ids); ``None`` keeps all.

        Raises:
            ValueError: ``keep`` is not in 1..len(train), or names a speaker not in ``train``.
        """
        if keep is None:
            return self
        if isinstance(keep, int):
            if not 1 <= keep <= len(self.train):
                raise ValueError(f"train_speakers={keep}: need 1..{len(self.train)} (the training speakers)")
            picked = pick_held_out(self.train, keep, seed, what="training speakers") if keep < len(self.train) else set(self.train)
        else:
            picked = {str(s) for s in keep}
            if bad := sorted(picked - set(self.train)):
                raise ValueError(f"train_speakers: {bad} are not training speakers; they are {list(self.train)}")
            if not picked:
                raise ValueError("train_speakers: the list is empty")
        return SpeakerSplit(tuple(sorted(picked)), self.dev, self.test)


def librispeech_utterances(source: str | os.PathLike, progress: bool = False) -> list[Utterance]:
    """Every utterance of every LibriSpeech subset at ``source`` (see ``find_subsets``)."""
    return [u for subset in find_subsets(source) for u in scan_subset(subset, progress=progress)]


def speaker_split(
    source: str | os.PathLike | Iterable[Utterance],
    dev_speakers: int | Sequence[str] = 2,
    test_speakers: int | Sequence[str] = 2,
    seed: int = 42,
) -> SpeakerSplit:
    """Hold whole speakers out: test speakers, dev speakers, and the rest for training.

    Args:
        source: a LibriSpeech folder (its ``SPK`` folders are the speakers) or utterances.
        dev_speakers, test_speakers: how many to hold out, chosen by ranking speaker ids by
            a hash of ``(seed, id)`` (test first, then dev) -- independent of listing order,
            and adding a speaker to the corpus moves no other; or the speaker ids themselves.

    Raises:
        ValueError: a named speaker is unknown or named twice, or no training speaker is left.
    """
    if isinstance(source, (str, os.PathLike)):
        speakers = {d.name for subset in find_subsets(source) for d in subset.iterdir() if d.is_dir()}
    else:
        speakers = {u.speaker for u in source if u.speaker is not None}
    chosen: dict[str, tuple[str, ...]] = {}
    taken: set[str] = set()
    for name, want in (("test", test_speakers), ("dev", dev_speakers)):
        if isinstance(want, int):
            picked = sorted(pick_held_out(speakers - taken, want, seed, what=f"speakers left for {name} ({len(speakers)} in all; at least one must stay for training)"))
        else:
            picked = [str(s) for s in want]
            bad = sorted(set(picked) - speakers) + sorted(set(picked) & taken)
            if bad:
                raise ValueError(f"speaker_split: {name} speakers {bad} are unknown or already held out; "
                                 f"speakers are {sorted(speakers)}")  # fmt: skip
        chosen[name] = tuple(sorted(picked))
        taken.update(picked)
    train = tuple(sorted(speakers - taken))
    if not train:
        raise ValueError(f"speaker_split: no training speaker left of {sorted(speakers)}")
    return SpeakerSplit(train, chosen["dev"], chosen["test"])


def keep_speakers(utterances: list[Utterance], speakers: Iterable[str] | None) -> list[Utterance]:
    """The utterances of ``speakers`` (all of them for ``None``)."""
    if speakers is None:
        return utterances
    wanted = set(speakers)
    return [u for u in utterances if u.speaker in wanted]
