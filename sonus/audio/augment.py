"""Waveform augmentation applied while loading training audio."""

from __future__ import annotations

import numpy as np
import torch

from sonus.audio.io import resample


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
