import math

import numpy as np
import pytest
import torch

from sonus.metrics.signal import bss_sdr, pesq_score, si_sdr, snr, stoi_score


def test_si_sdr_hand_computed():
    ref = torch.tensor([1.0, -1.0, 1.0, -1.0])
    noise = 0.5 * torch.tensor([1.0, 1.0, -1.0, -1.0])  # zero mean, orthogonal to ref
    est = 2 * ref + noise  # target part 2*ref: energy 16; error energy 1
    assert si_sdr(est, ref).item() == pytest.approx(10 * math.log10(16), abs=1e-4)
    # scale invariance; an offset is removed by zero_mean
    assert si_sdr(3 * est + 0.7, ref).item() == pytest.approx(10 * math.log10(16), abs=1e-4)
    assert snr(est, ref).item() == pytest.approx(10 * math.log10(4 / ((est - ref) ** 2).sum().item()), abs=1e-4)


def test_si_sdr_ignores_padding():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 100, generator=g)
    est = ref + 0.3 * torch.randn(2, 100, generator=g)
    lengths = torch.tensor([100, 60])
    padded_est = est.clone()
    padded_est[1, 60:] = 5.0  # garbage beyond the length must not count
    got = si_sdr(padded_est, ref, lengths)
    assert got[0] == pytest.approx(si_sdr(est[0], ref[0]).item(), abs=1e-4)
    assert got[1] == pytest.approx(si_sdr(est[1, :60], ref[1, :60]).item(), abs=1e-4)


def test_si_sdr_fp32_under_autocast_and_finite_for_silence():
    ref = torch.zeros(1, 1000, dtype=torch.bfloat16)
    est = torch.zeros(1, 1000, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = si_sdr(est, ref)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bss_sdr_pesq_stoi_rank_quality():
    sr = 8000
    rng = np.random.default_rng(0)
    t = np.arange(2 * sr) / sr
    # a speech-like signal: harmonics with a syllabic envelope
    ref = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900), 1)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    ref = (0.3 * ref / np.abs(ref).max()).astype(np.float32)
    good = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    bad = ref + 0.3 * rng.standard_normal(ref.shape).astype(np.float32)
    sdr = bss_sdr(np.stack([good, bad]), np.stack([ref, ref]))
    assert sdr[0] > sdr[1] + 10
    assert pesq_score(good, ref, sr) > pesq_score(bad, ref, sr)
    assert stoi_score(good, ref, sr) > stoi_score(bad, ref, sr)
    assert math.isnan(bss_sdr(np.stack([good]), np.zeros((1, len(ref))))[0])


def test_bss_sdr_allows_a_distortion_filter_and_matches_a_known_case():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(8000)
    filtered = np.convolve(ref, [0.6, 0.3, -0.2, 0.1])[:8000]  # a short filter is not an error for SDR
    noise = rng.standard_normal(8000)
    noise -= ref * (noise @ ref) / (ref @ ref)
    noise *= 0.1 * np.linalg.norm(filtered) / np.linalg.norm(noise)  # 20 dB below the filtered target
    sdr = bss_sdr(np.stack([filtered + noise, filtered]), np.stack([ref, ref]))
    assert sdr[0] == pytest.approx(20.0, abs=0.3)
    assert sdr[1] > 40  # filtered only: nothing outside the filter's span (but the cut-off tail)
    assert bss_sdr(np.stack([filtered]), np.stack([ref]), filter_length=1)[0] < 10  # no filter allowed: distortion counts
