"""Audio input/output: soundfile for reading and writing, soxr for resampling.

Every loader in sonus goes through :func:`load_audio`, so the promises live here:
the result is mono float32 at the requested rate, stereo is downmixed with a
warning, another sample rate is resampled, and anything unreadable raises
:class:`AudioError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch


class AudioError(RuntimeError):
    """An audio file is missing, truncated or cannot be decoded."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a (T,) or (T, C) float array with soxr (high quality)."""
    if orig_sr == target_sr:
        return wave
    return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Read ``path`` as mono float32 at ``sample_rate``.

    Args:
        path: any file libsndfile reads (wav, flac, ogg, ...).
        sample_rate: rate of the returned signal; other rates are resampled.
        offset, duration: seconds; read only that part of the file.

    Returns:
        (T,) float32 tensor in [-1, 1].

    Raises:
        AudioError: the file is missing, empty, truncated or not audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "audio file not found")
    try:
        info = sf.info(str(path))
        start = int(round(offset * info.samplerate))
        frames = -1 if duration is None else int(round(duration * info.samplerate))
        if start > info.frames:
            raise AudioError(path, f"offset {offset:.3f}s is past the end ({info.duration:.3f}s)")
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioError(path, f"cannot decode audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples (empty or truncated file)")
    if frames > 0 and data.shape[0] < frames * 0.9:
        raise AudioError(
            path, f"truncated: asked for {frames} samples, file holds {data.shape[0]} from offset {offset}s"
        )
    if data.shape[1] > 1:
        warnings.warn(f"{path}: {data.shape[1]} channels, downmixed to mono", stacklevel=2)
    wave = data.mean(axis=1)
    wave = resample(wave, sr, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def save_audio(path: str | os.PathLike, wave: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a (T,) signal as 16-bit PCM wav; written to a temporary name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().float().numpy()
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), wave, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
