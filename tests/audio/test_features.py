from __future__ import annotations

import math

import torch

from sonus.audio.features import (
    FeatureConfig,
    GainAugment,
    GainAugmentConfig,
    GlobalCMVN,
    LogMel,
    SpecAugment,
    SpecAugmentConfig,
    vtlp_frequencies,
)


def test_logmel_shape_and_peak_bin():
    cfg = FeatureConfig()
    fe = LogMel(cfg)
    t = torch.arange(16000) / 16000
    wave = torch.sin(2 * math.pi * 1000 * t)[None]
    feats, frames = fe(wave, torch.tensor([16000]))
    assert feats.shape == (1, 100, 80) and frames.tolist() == [100]
    peak = int(feats[0, 50].argmax())
    centers = fe.fbank.argmax(0)  # FFT bin with each filter's peak
    assert abs(int(centers[peak]) * 16000 / cfg.n_fft - 1000) < 60


def test_vtlp_warps_linearly_below_the_boundary_and_keeps_nyquist():
    f = vtlp_frequencies(torch.tensor([0.9, 1.0, 1.1]), 400, 16000, 4800.0)
    plain = torch.linspace(0, 8000, 201, dtype=torch.float64)
    torch.testing.assert_close(f[1], plain)
    assert torch.allclose(f[:, 50], torch.tensor([1800.0, 2000.0, 2200.0], dtype=torch.float64))  # bin 50: 2 kHz
    assert torch.allclose(f[:, -1], torch.full((3,), 8000.0, dtype=torch.float64))
    assert bool((f.diff(dim=1) > 0).all())  # still one-to-one


def test_vtlp_moves_a_tone_in_training_only():
    cfg = FeatureConfig(vtlp=0.2)
    fe = LogMel(cfg)
    t = torch.arange(16000) / 16000
    wave = torch.sin(2 * math.pi * 1000 * t).repeat(64, 1)
    lengths = torch.full((64,), 16000)
    plain, _ = fe.eval()(wave, lengths)
    torch.testing.assert_close(plain, LogMel()(wave, lengths)[0])
    torch.manual_seed(0)
    warped, _ = fe.train()(wave, lengths)
    peaks = warped[:, 50].argmax(-1)  # the mel bin the tone lands in, per utterance
    hz = fe.fbank.argmax(0)[peaks] * 16000 / cfg.n_fft
    assert len(set(peaks.tolist())) > 3  # one warp factor per utterance
    assert bool(((hz > 1000 * 0.8 - 60) & (hz < 1000 * 1.2 + 60)).all())
    assert hz.min() < 900 and hz.max() > 1100


def test_causal_frames_ignore_what_follows():
    fe = LogMel()
    wave = torch.randn(1, 8000)
    longer = torch.cat([wave, torch.randn(1, 4000)], dim=1)
    a, n = fe(wave, torch.tensor([8000]))
    b, _ = fe(longer, torch.tensor([12000]))
    torch.testing.assert_close(a[0, : n[0]], b[0, : n[0]])


def test_cmvn_fit_normalises():
    x = torch.randn(4, 50, 80) * 3 + 7
    cmvn = GlobalCMVN(80)
    cmvn.fit(x, torch.full((4,), 50))
    y = cmvn(x)
    assert abs(float(y.mean())) < 1e-3 and abs(float(y.std()) - 1) < 1e-2
    flat = torch.randn(4, 50, 80) * 1e-3  # an empty band: no amplification of its noise
    cmvn.fit(flat, torch.full((4,), 50))
    assert float(cmvn.inv_std.max()) <= 1.0


def test_specaugment_masks_only_in_training():
    sa = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2, time_width=0.2))
    x = torch.ones(2, 100, 80)
    sa.train()
    y = sa(x, torch.tensor([100, 60]))
    assert (y == 0).any() and (y == 1).any()
    sa.eval()
    assert torch.equal(sa(x, torch.tensor([100, 60])), x)


def test_gain_augment_waits_for_its_start_step_and_is_off_in_eval():
    wave = torch.randn(4, 1600)
    gain = GainAugment(GainAugmentConfig(min_db=-20.0, max_db=-10.0, start_step=100)).train()
    gain.step = 99
    assert torch.equal(gain(wave), wave)
    gain.step = 100
    ratio = gain(wave).norm(dim=1) / wave.norm(dim=1)  # -20..-10 dB: 0.1..0.32 of the amplitude
    assert bool(((ratio >= 0.099) & (ratio <= 0.317)).all())
    assert torch.equal(gain.eval()(wave), wave)
