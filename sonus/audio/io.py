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


def _wav_missing_bytes(path: Path) -> int:
    """For a RIFF/WAVE file, bytes the 'data' chunk declares beyond the end of the file (0 if whole).

    libsndfile quietly reads what is there, so a copy cut off mid-transfer would pass unnoticed.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        size = os.fstat(f.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            n = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                if n in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                    return 0
                return max(0, pos + 8 + n - size)
            pos += 8 + n + (n & 1)
    return 0


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
    if offset < 0 or (duration is not None and duration <= 0):
        raise AudioError(path, f"invalid segment: offset={offset}, duration={duration} (need offset >= 0, duration > 0)")
    cut = _wav_missing_bytes(path)
    if cut:
        raise AudioError(path, f"truncated: the wav header declares {cut} more bytes of samples than the file holds")
    try:
        info = sf.info(str(path))
        start = int(round(offset * info.samplerate))
        frames = -1 if duration is None else int(round(duration * info.samplerate))
        if start >= info.frames:
            raise AudioError(path, f"offset {offset:.3f}s is at or past the end ({info.duration:.3f}s)")
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioError(path, f"cannot decode audio ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise AudioError(path, "no audio samples (empty or truncated file)")
    expected = (info.frames - start) if frames < 0 else min(frames, info.frames - start)
    if data.shape[0] < expected:
        # The header promised more samples than the data section holds: a cut-off file.
        raise AudioError(path, f"truncated: header says {expected} samples from {offset}s, only {data.shape[0]} could be read")
    if frames > 0 and start + frames > info.frames + 0.01 * info.samplerate:
        raise AudioError(path, f"segment {offset}s+{duration}s runs past the end of the file ({info.duration:.3f}s)")
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


def load_features(path: str | os.PathLike, dim: int | None = None) -> torch.Tensor:
    """A feature sequence from a ``.npy`` file -> float32 (T, D), checked: 2-D, D == ``dim``
    when given, at least one frame, finite. Read with ``allow_pickle=False`` (no code runs).

    Raises:
        AudioError: naming the file, when it is missing or not such an array.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "feature file not found")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # truncated file, bad header, pickled object array
        raise AudioError(path, f"cannot read features ({type(e).__name__}: {e})") from None
    if x.ndim != 2 or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.number):
        raise AudioError(path, f"features must be a numeric (T, D) array with T >= 1, got {x.dtype} {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise AudioError(path, f"features have D = {x.shape[1]}, the model expects model.feat_in = {dim}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise AudioError(path, "features contain NaN or infinity")
    return torch.from_numpy(np.ascontiguousarray(x))
