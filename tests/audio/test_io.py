"""Promises of sonus.audio.io: rate, channels, errors naming the file, round trips."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sonus.audio.io import AudioError, load_audio, resample, save_audio


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spectrum)])


@pytest.fixture
def sine_8k(tmp_path: Path) -> Path:
    path = tmp_path / "sine_8k.wav"
    sf.write(path, _sine(440.0, 8000, 1.0), 8000, subtype="PCM_16")
    return path


def test_resample_8k_to_16k_keeps_duration_and_frequency(sine_8k: Path) -> None:
    wave = load_audio(sine_8k, sample_rate=16000)
    assert wave.dtype == torch.float32 and wave.ndim == 1, (wave.dtype, wave.shape)
    assert abs(wave.shape[0] - 16000) <= 2, wave.shape  # 1.0 s at 16 kHz
    assert abs(_peak_hz(wave.numpy(), 16000) - 440.0) < 2.0
    # no energy was created above the old Nyquist (4 kHz) beyond the resampler's leakage
    spectrum = np.abs(np.fft.rfft(wave.numpy())) ** 2
    freqs = np.fft.rfftfreq(wave.shape[0], 1 / 16000)
    assert spectrum[freqs > 4100].sum() < 1e-4 * spectrum.sum()


def test_resample_array_lengths() -> None:
    x = _sine(1000.0, 44100, 0.5)
    y = resample(x, 44100, 16000)
    assert y.dtype == np.float32
    assert abs(len(y) - 8000) <= 1, len(y)
    assert abs(_peak_hz(y, 16000) - 1000.0) < 4.0
    assert resample(x, 16000, 16000) is x  # same rate: no copy, no filtering


def test_native_rate_is_bit_exact_to_pcm16(sine_8k: Path) -> None:
    wave = load_audio(sine_8k, sample_rate=8000).numpy()
    ref, sr = sf.read(sine_8k, dtype="float32")
    assert sr == 8000
    np.testing.assert_array_equal(wave, ref)


def test_stereo_is_downmixed_with_warning(tmp_path: Path) -> None:
    left = _sine(300.0, 16000, 0.5)
    stereo = np.stack([left, 0.5 * left], axis=1)  # (T, 2)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"stereo\.wav: 2 channels, downmixed"):
        wave = load_audio(path, sample_rate=16000)
    np.testing.assert_allclose(wave.numpy(), 0.75 * left, atol=1e-6)


def test_mono_does_not_warn(sine_8k: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(sine_8k)


def test_offset_and_duration_select_the_segment(tmp_path: Path) -> None:
    ramp = np.linspace(-0.9, 0.9, 16000).astype(np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, 16000, subtype="FLOAT")
    part = load_audio(path, sample_rate=16000, offset=0.25, duration=0.5).numpy()
    np.testing.assert_allclose(part, ramp[4000:12000], atol=1e-7)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav: audio file not found") as info:
        load_audio(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("keep_bytes", [0, 10, 30, 44])
def test_truncated_wav_header_names_the_path(sine_8k: Path, tmp_path: Path, keep_bytes: int) -> None:
    path = tmp_path / f"cut{keep_bytes}.wav"
    path.write_bytes(sine_8k.read_bytes()[:keep_bytes])
    with pytest.raises(AudioError, match=f"cut{keep_bytes}.wav"):
        load_audio(path)


def test_truncated_flac_names_the_path(tmp_path: Path) -> None:
    full = tmp_path / "full.flac"
    sf.write(full, _sine(440.0, 16000, 1.0), 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AudioError, match="cut.flac"):
        load_audio(cut)


def test_segment_past_the_end_of_a_short_file_raises(sine_8k: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.wav"
    cut.write_bytes(sine_8k.read_bytes()[: 44 + 2 * 4000])  # 0.5 s of the 1 s file
    with pytest.raises(AudioError, match="cut.wav: truncated"):
        load_audio(cut, sample_rate=8000, duration=1.0)
    with pytest.raises(AudioError, match="past the end"):
        load_audio(sine_8k, sample_rate=8000, offset=0.9, duration=0.5)  # intact 1 s file
    with pytest.raises(AudioError, match="past the end"):
        load_audio(sine_8k, sample_rate=8000, offset=1.5)


def test_wav_cut_inside_data_raises(sine_8k: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.wav"
    cut.write_bytes(sine_8k.read_bytes()[: 44 + 2 * 4000])
    with pytest.raises(AudioError, match="cut.wav"):
        load_audio(cut)


def test_negative_offset_raises(sine_8k: Path) -> None:
    with pytest.raises(AudioError, match="offset"):
        load_audio(sine_8k, offset=-0.25)


def test_non_audio_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError, match="notes.wav: cannot decode audio"):
        load_audio(path)


def test_save_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    wave = torch.from_numpy(rng.uniform(-0.9, 0.9, 12345).astype(np.float32))
    path = tmp_path / "sub" / "out.wav"  # parent folders are created
    save_audio(path, wave, 16000)
    assert not path.with_name("out.wav.tmp").exists()
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 12345, "PCM_16")
    back = load_audio(path, sample_rate=16000)
    assert back.shape == wave.shape
    assert torch.max(torch.abs(back - wave)).item() <= 1.0 / 32767  # one 16-bit step


def test_save_clips_out_of_range_samples(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    save_audio(path, np.array([2.0, -3.0, 0.5], dtype=np.float32), 8000)
    back = load_audio(path, sample_rate=8000).numpy()
    np.testing.assert_allclose(back, [1.0, -1.0, 0.5], atol=1.0 / 32767)
