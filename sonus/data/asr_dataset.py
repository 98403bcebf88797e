"""ASR dataset: loads audio, tokenises, collates. Batching lives in the sampler."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import Dataset

from sonus.audio.augment import NoiseMixer, speed_perturb
from sonus.audio.io import AudioError, load_audio, load_features
from sonus.data.manifest import Utterance
from sonus.text.normalize import normalize_text
from sonus.text.tokenizer import Tokenizer, TokenizerError

log = logging.getLogger(__name__)


@dataclass
class ASRBatch:
    """A padded batch. wave (B, S) audio or (B, T, D) features, wave_lengths (B,) samples or frames,
    targets (B, U) padded with 0, target_lengths (B,).

    ``skipped``: ids of this batch's unreadable files, dropped with ``skip_bad`` (they are
    counted in the main process even when a DataLoader worker loaded them). B may be 0.
    """

    ids: list[str]
    texts: list[str]
    wave: torch.Tensor
    wave_lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    skipped: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "ASRBatch":
        return replace(self, wave=self.wave.to(device), wave_lengths=self.wave_lengths.to(device),
                       targets=self.targets.to(device), target_lengths=self.target_lengths.to(device))  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)


def normalize_transcripts(utts: list[Utterance], manifest: str, normalize: dict) -> list[str]:
    """Normalised transcripts; one that normalises to nothing is an error naming the utterance."""
    texts = [normalize_text(u.text, **normalize) for u in utts]
    for i, (u, text) in enumerate(zip(utts, texts)):
        if not text:
            raise ValueError(f"{manifest}: utterance '{u.id}' (record {i + 1}): text is empty after normalisation ({u.text!r})")
    return texts


def encode_transcripts(utts: list[Utterance], texts: list[str], tokenizer: Tokenizer, manifest: str) -> list[list[int]]:
    """Tokenise every (normalised) transcript up front, so bad text fails at start-up, not at hour 9."""
    out = []
    for i, (u, text) in enumerate(zip(utts, texts)):
        try:
            out.append(tokenizer.encode(text))
        except TokenizerError as e:
            raise TokenizerError(f"{manifest}: utterance '{u.id}' (record {i + 1}): {e}") from None
    return out


class ASRDataset(Dataset):
    """Items are (id, text, wave, tokens): wave is audio (S,), or features (T, D) for a
    ``feature_filepath`` record. With ``skip_bad``, an unreadable file is logged and its item is
    a :class:`Skipped` marker that :func:`collate` records in the batch.

    ``speed_factors``: training-time speed perturbation of audio, one factor drawn per item.
    ``noise``: training-time background noise (after speed perturbation).
    ``feat_dim``: the feature dimension records with features must have.
    """

    def __init__(
        self, utts: list[Utterance], tokens: list[list[int]], texts: list[str], sample_rate: int = 16000,
        skip_bad: bool = False, speed_factors: tuple[float, ...] | None = None, feat_dim: int | None = None,
        noise: NoiseMixer | None = None,
    ) -> None:  # fmt: skip
        self.noise = noise
        self.utts, self.tokens, self.texts = utts, tokens, texts
        self.sample_rate, self.skip_bad, self.feat_dim = sample_rate, skip_bad, feat_dim
        self.speed_factors = tuple(speed_factors) if speed_factors else None

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int):
        u = self.utts[i]
        try:
            if u.feature_filepath:
                return u.id, self.texts[i], load_features(u.feature_filepath, self.feat_dim), self.tokens[i]
            wave = load_audio(u.audio_filepath, self.sample_rate, u.offset, u.duration if u.offset else None)
        except AudioError as e:
            if not self.skip_bad:
                raise AudioError(e.path, f"{e.reason} (utterance '{u.id}'; pass data.skip_bad=true to skip such files)") from None
            log.warning("skipping utterance %s: %s", u.id, e)
            return Skipped(u.id)
        if self.speed_factors:
            factor = self.speed_factors[int(torch.randint(len(self.speed_factors), ()))]
            wave = speed_perturb(wave, factor, self.sample_rate)
        if self.noise is not None:
            wave = self.noise(wave)
        return u.id, self.texts[i], wave, self.tokens[i]


@dataclass(frozen=True)
class Skipped:
    """An item whose audio could not be read (``skip_bad``)."""

    id: str


def collate(items: list) -> ASRBatch:
    skipped = [x.id for x in items if isinstance(x, Skipped)]
    items = [x for x in items if not isinstance(x, Skipped)]
    if not items:
        return ASRBatch([], [], torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long), skipped)
    ids, texts, waves, tokens = zip(*items)
    wl = torch.tensor([w.shape[0] for w in waves])
    tl = torch.tensor([len(t) for t in tokens])
    if len({w.shape[1:] for w in waves}) > 1:
        raise ValueError(f"a batch mixes audio and feature records, or feature sizes: {sorted({tuple(w.shape[1:]) for w in waves})}")
    wave = torch.zeros(len(items), int(wl.max()), *waves[0].shape[1:])  # (B, S) audio or (B, T, D) features
    targets = torch.zeros(len(items), max(1, int(tl.max())), dtype=torch.long)
    for i, (w, t) in enumerate(zip(waves, tokens)):
        wave[i, : w.shape[0]] = w
        targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return ASRBatch(list(ids), list(texts), wave, wl, targets, tl, skipped)
