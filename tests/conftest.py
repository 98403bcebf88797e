"""Shared fixtures: a tiny spoken corpus made on the spot, and paths to ../shared/data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sonus.audio.io import save_audio
from sonus.data.manifest import Utterance, write_manifest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A toy "language": each letter is a tone; words are tone sequences. Learnable in seconds.
_FREQS = {c: 300.0 + 120.0 * i for i, c in enumerate("abcdef")}
_WORDS = ["abc", "fed", "bad", "cab", "dec", "face"]


def _speak(text: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    parts = []
    for ch in text:
        n = int(sr * (0.06 if ch == " " else 0.08) * rng.uniform(0.9, 1.1))
        if ch == " ":
            parts.append(np.zeros(n, dtype=np.float32))
            continue
        t = np.arange(n) / sr
        f = _FREQS[ch] * rng.uniform(0.97, 1.03)
        env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
        parts.append((0.5 * np.sin(2 * math.pi * f * t) * env).astype(np.float32))
    wave = np.concatenate([np.zeros(800, np.float32), *parts, np.zeros(800, np.float32)])
    return wave + 0.003 * rng.standard_normal(wave.shape[0]).astype(np.float32)


def make_tone_corpus(root: Path, n_train: int = 160, n_dev: int = 24, seed: int = 0, sr: int = 16000) -> dict[str, Path]:
    """Write wavs and train/dev manifests of tone 'speech' under ``root``."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        utts = []
        for i in range(n):
            text = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 4))))
            wave = _speak(text, sr, rng)
            path = root / "wavs" / f"{split}-{i:04d}.wav"
            save_audio(path, wave, sr)
            utts.append(Utterance(f"{split}-{i:04d}", str(path), len(wave) / sr, text))
        out[split] = root / f"{split}.jsonl"
        write_manifest(out[split], utts)
    return out


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory) -> dict[str, Path]:
    return make_tone_corpus(tmp_path_factory.mktemp("tones"))
