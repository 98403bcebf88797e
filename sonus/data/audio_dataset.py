"""Audio without labels (the speech tokenizer's training data): random fixed-length segments.

Utterances come from a manifest or a LibriSpeech folder; :func:`split_utterances` holds out a
deterministic fraction (by a hash of the id, so adding files moves none of the others), as
the brief's 95/5 train/validation split.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sonus.audio.io import AudioError, load_audio
from sonus.data.manifest import Utterance

log = logging.getLogger(__name__)


def split_utterances(utts: list[Utterance], val_fraction: float = 0.05, seed: int = 0) -> tuple[list[Utterance], list[Utterance]]:
    """(train, val): an utterance goes to val when the hash of (seed, id) falls below ``val_fraction``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def u01(uid: str) -> float:
        return int.from_bytes(hashlib.sha1(f"{seed}:{uid}".encode()).digest()[:8], "big") / 2**64

    train = [u for u in utts if u01(u.id) >= val_fraction]
    val = [u for u in utts if u01(u.id) < val_fraction]
    if not train or (val_fraction > 0 and not val):
        raise ValueError(f"{len(utts)} utterances cannot be split {1 - val_fraction:.0%}/{val_fraction:.0%}: one side is empty")
    return train, val


class AudioSegmentDataset(Dataset):
    """(S,) float32 segments of ``segment_samples`` at ``sample_rate``: random windows in training
    (drawn from ``(seed, epoch, index)``), the start otherwise; shorter files are zero-padded.

    Raises:
        AudioError: naming the file and utterance, unless ``skip_bad`` (then a silent segment,
            logged once per file, and the id is kept in :attr:`skipped`).
    """

    def __init__(self, utts: list[Utterance], sample_rate: int, segment_samples: int, train: bool, seed: int = 0, skip_bad: bool = False) -> None:
        if segment_samples < 1:
            raise ValueError(f"segment_samples must be >= 1, got {segment_samples}")
        self.utts, self.sample_rate, self.segment, self.train, self.seed = utts, sample_rate, segment_samples, train, seed
        self.skip_bad, self.skipped, self.epoch = skip_bad, set(), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> torch.Tensor:
        u = self.utts[i]
        try:
            wave = load_audio(u.path, self.sample_rate, u.offset, u.duration if u.offset else None)
        except AudioError as e:
            if not self.skip_bad:
                raise AudioError(e.path, f"{e.reason} (utterance '{u.id}'; pass data.skip_bad=true to skip such files)") from None
            if u.id not in self.skipped:
                log.warning("skipping unreadable %s: %s", e.path, e.reason)
                self.skipped.add(u.id)
            return torch.zeros(self.segment)
        n = wave.shape[0]
        if n <= self.segment:
            return F.pad(wave, (0, self.segment - n))
        start = int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, n - self.segment + 1)) if self.train else 0
        return wave[start : start + self.segment]
