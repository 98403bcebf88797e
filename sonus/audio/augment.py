"""Waveform augmentation applied while loading training audio: speed perturbation, a random
equaliser, and background noise at a random SNR."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sonus.audio.io import load_audio, resample

NOISE_EXTENSIONS = (".wav", ".flac")


def speed_perturb(wave: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """Play ``wave`` ``factor`` times faster (pitch and formants move with it), as Kaldi's
    speed perturbation (Ko et al. 2015): resample to ``sample_rate / factor`` and keep the rate.

    wave (S,) -> (round(S / factor),)
    """
    if factor == 1.0:
        return wave
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    out = resample(wave.numpy().astype(np.float32), sample_rate, int(round(sample_rate / factor)))
    return torch.from_numpy(np.ascontiguousarray(out))


def random_eq(wave: np.ndarray, rng: np.random.Generator, sample_rate: int, max_db: float = 6.0, bands: int = 6) -> np.ndarray:
    """``wave`` through a random zero-phase equaliser: gains drawn uniformly in +-``max_db`` at
    ``bands`` frequencies spaced evenly on a log scale from 100 Hz to Nyquist, linear in dB
    between them (flat below the first), applied in the frequency domain. It stands in for the
    microphones and rooms a corpus does not have: in a corpus of few speakers, each recorded with
    its own set-up, a model could tell speakers apart by their channel, a cue that new voices
    do not share (RNNoise's training filters its speech and noise with random second-order filters
    for the same reason, Valin 2018).

    wave (T,) -> (T,) float32; draws ``bands`` numbers from ``rng``.
    """
    if max_db < 0 or bands < 2:
        raise ValueError(f"random_eq: max_db must be >= 0 and bands >= 2, got {max_db} and {bands}")
    gains_db = rng.uniform(-max_db, max_db, size=bands)
    n = wave.shape[-1]
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    knots = np.geomspace(100.0, sample_rate / 2, bands)
    curve = 10 ** (np.interp(np.log(np.maximum(freqs, 1.0)), np.log(knots), gains_db) / 20)
    return np.fft.irfft(np.fft.rfft(wave) * curve, n).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * noise`` for (T,) signals, ``g`` such that 10 log10(P_speech / P_noise) = ``snr_db``."""
    assert speech.shape == noise.shape, (speech.shape, noise.shape)
    p_speech, p_noise = float(np.mean(speech**2)), float(np.mean(noise**2))
    if p_noise < 1e-12:
        return speech
    return speech + math.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10))) * noise


def noise_files(noise_dir: str | os.PathLike) -> list[Path]:
    """The .wav/.flac files under ``noise_dir`` (recursively), sorted; an error if there are none."""
    folder = Path(noise_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"noise folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in NOISE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"noise folder {folder} holds no {'/'.join(NOISE_EXTENSIONS)} files")
    return files


def noise_crop(noise: np.ndarray, start: int, length: int) -> np.ndarray:
    """``length`` samples of ``noise`` from ``start``, looping a file shorter than that."""
    return np.take(noise, np.arange(start, start + length), mode="wrap")


@dataclass(frozen=True)
class NoiseConfig:
    dir: str
    prob: float = 0.5  # share of utterances that get noise
    snr_db: tuple[float, float] = (0.0, 20.0)  # drawn uniformly


class NoiseMixer:
    """Training-time background noise: with probability ``prob``, a random stretch of a random
    file of the folder, mixed at an SNR drawn from ``snr_db``. Files are loaded (resampled to
    ``sample_rate``) on first use and kept; draws come from torch's generator, which Lightning
    seeds per DataLoader worker."""

    def __init__(self, cfg: NoiseConfig, sample_rate: int) -> None:
        lo, hi = cfg.snr_db
        if not 0.0 <= cfg.prob <= 1.0 or lo > hi:
            raise ValueError(f"data.noise: prob must be in [0, 1] and snr_db a [low, high] range, got {cfg}")
        self.cfg, self.sample_rate = cfg, sample_rate
        self.files = noise_files(cfg.dir)
        self._cache: dict[Path, np.ndarray] = {}

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (S,) -> (S,), noisy or unchanged."""
        if wave.numel() == 0 or float(torch.rand(())) >= self.cfg.prob:
            return wave
        path = self.files[int(torch.randint(len(self.files), ()))]
        if path not in self._cache:
            self._cache[path] = load_audio(path, self.sample_rate).numpy()
        noise = self._cache[path]
        crop = noise_crop(noise, int(torch.randint(len(noise), ())), wave.shape[0])
        lo, hi = self.cfg.snr_db
        snr = lo + (hi - lo) * float(torch.rand(()))
        return torch.from_numpy(mix_at_snr(wave.numpy(), crop, snr).astype(np.float32))
