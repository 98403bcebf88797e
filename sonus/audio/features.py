"""Log-mel filterbank features, computed in torch on the input's device.

Shapes: B batch, S samples, T frames, F mel bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 80
    f_min: float = 20.0
    f_max: float | None = None
    dither: float = 0.0
    vtlp: float = 0.0  # training only: each utterance's frequency axis warped by a ~ U(1 - vtlp, 1 + vtlp)
    vtlp_boundary_hz: float = 4800.0  # VTLP's f_hi: the warp is linear below it, then bends to keep Nyquist fixed


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float, freqs: torch.Tensor | None = None
) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_fft // 2 + 1, n_mels), each normalised to unit area (Slaney).

    ``freqs``: the frequency each FFT bin is taken to have, (..., n_fft // 2 + 1); a warped axis
    gives warped filters (..., n_fft // 2 + 1, n_mels). Default: the bins' own frequencies.
    """
    if freqs is None:
        freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    freqs = freqs[..., None].double()
    mels = torch.linspace(_hz_to_mel(torch.tensor(f_min)), _hz_to_mel(torch.tensor(f_max)), n_mels + 2, dtype=torch.float64)
    hz = _mel_to_hz(mels).to(freqs.device)
    lower, center, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs - lower) / (center - lower)
    down = (upper - freqs) / (upper - center)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    fb = fb * (2.0 / (upper - lower))
    return fb.float()


def vtlp_frequencies(alpha: torch.Tensor, n_fft: int, sample_rate: int, boundary_hz: float) -> torch.Tensor:
    """The FFT bins' frequencies under VTLP (Jaitly & Hinton 2013), (B, n_fft // 2 + 1) for warp factors (B,).

    f -> a f up to f0 = boundary * min(a, 1) / a, then the straight line from (f0, a f0) to
    (Nyquist, Nyquist): a longer or shorter vocal tract, with the band edge kept in place.
    """
    nyq = sample_rate / 2
    f = torch.linspace(0, nyq, n_fft // 2 + 1, dtype=torch.float64, device=alpha.device)[None]
    a = alpha.double()[:, None]
    f0 = boundary_hz * torch.clamp(a, max=1.0) / a
    high = a * f0 + (nyq - a * f0) * (f - f0) / (nyq - f0)
    return torch.where(f <= f0, a * f, high)


class LogMel(nn.Module):
    """Waveform (B, S) -> log-mel (B, T, F) with T = S // hop, plus frame lengths.

    Causal framing: frame t covers samples [(t+1)*hop - n_fft, (t+1)*hop), zero before
    the start. A frame never looks past its own end, so padding after an utterance
    cannot change it and a stream fed chunk by chunk gets exactly the offline features.
    Always computed in fp32 (the STFT and log are not safe in half precision).
    """

    def __init__(self, cfg: FeatureConfig = FeatureConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.f_max = cfg.f_max or cfg.sample_rate / 2
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("fbank", mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, self.f_max), persistent=False)

    def _filters(self, batch: int) -> torch.Tensor:
        """The mel filters: fixed, or in training with ``vtlp`` one warped set per utterance (B, n_freq, F)."""
        c = self.cfg
        if not (self.training and c.vtlp > 0):
            return self.fbank
        alpha = torch.empty(batch, device=self.fbank.device).uniform_(1.0 - c.vtlp, 1.0 + c.vtlp)
        freqs = vtlp_frequencies(alpha, c.n_fft, c.sample_rate, c.vtlp_boundary_hz)
        return mel_filterbank(c.n_fft, c.n_mels, c.sample_rate, c.f_min, self.f_max, freqs)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        return sample_lengths // self.cfg.hop_length

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = wave.float()
            if self.training and self.cfg.dither > 0:
                x = x + self.cfg.dither * torch.randn_like(x)
            x = torch.nn.functional.pad(x, (self.cfg.n_fft - self.cfg.hop_length, 0))
            spec = torch.stft(
                x, self.cfg.n_fft, self.cfg.hop_length, window=self.window, center=False, return_complex=True
            )  # (B, n_fft/2+1, T)
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(power.transpose(1, 2), self._filters(x.shape[0]))  # (B, T, F)
            feats = torch.log(mel + 1e-6)
        frames = self.frame_lengths(lengths)
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None]
        return feats.masked_fill(~mask[..., None], 0.0), frames


class GlobalCMVN(nn.Module):
    """Mean/variance normalisation with statistics of the training set, stored in the model.

    Global (not per-utterance) statistics keep the front end causal, so a streamed
    utterance gets exactly the features of the offline pass.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("inv_std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, feats: torch.Tensor, lengths: torch.Tensor, min_std: float = 1.0) -> None:
        """Set the statistics from (B, T, F) features with valid lengths (B,).

        ``min_std`` (log-mel units; speech bins have 2-4) keeps empty bins, e.g. above 4 kHz
        in 8 kHz audio, from being amplified into noise that differs between recordings.
        """
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]
        x = feats[mask].double()  # (N, F)
        self.mean.copy_(x.mean(0).float())
        self.inv_std.copy_((1.0 / x.std(0).clamp(min=min_std)).float())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) * self.inv_std


@dataclass(frozen=True)
class GainAugmentConfig:
    min_db: float = -25.0
    max_db: float = 6.0
    start_step: int = 0  # off before this optimizer step: a transducer aligns sooner without it


class GainAugment(nn.Module):
    """Random per-utterance gain (training only).

    A gain is a constant offset on every log-mel bin; recordings differ by 20 dB or more
    (FSDD's speakers do), and global CMVN does not remove it, so the model must see it.
    """

    def __init__(self, cfg: GainAugmentConfig = GainAugmentConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.step = 0  # the trainer's optimizer step, set by the training loop

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, S) -> same, each row scaled by 10 ** (g / 20), g ~ U(min_db, max_db)."""
        if not self.training or self.step < self.cfg.start_step:
            return wave
        g = torch.empty(wave.shape[0], 1, device=wave.device).uniform_(self.cfg.min_db, self.cfg.max_db)
        return wave * torch.pow(10.0, g / 20.0).to(wave.dtype)


@dataclass(frozen=True)
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 4
    time_width: float = 0.05  # max fraction of the utterance per mask


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) without time warping; active only in training mode."""

    def __init__(self, cfg: SpecAugmentConfig = SpecAugmentConfig()) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """feats: (B, T, F) -> same, with zeroed frequency bands and time spans."""
        if not self.training:
            return feats
        B, T, F = feats.shape
        dev = feats.device
        keep_f = torch.ones(B, F, dtype=torch.bool, device=dev)
        f_idx = torch.arange(F, device=dev)[None, :]
        for _ in range(self.cfg.freq_masks):
            w = torch.randint(0, self.cfg.freq_width + 1, (B, 1), device=dev)
            f0 = (torch.rand(B, 1, device=dev) * (F - w).clamp(min=1)).long()
            keep_f &= ~((f_idx >= f0) & (f_idx < f0 + w))
        keep_t = torch.ones(B, T, dtype=torch.bool, device=dev)
        t_idx = torch.arange(T, device=dev)[None, :]
        max_w = (lengths.float() * self.cfg.time_width).long().clamp(min=1)[:, None]
        for _ in range(self.cfg.time_masks):
            w = (torch.rand(B, 1, device=dev) * (max_w + 1)).long()
            t0 = (torch.rand(B, 1, device=dev) * (lengths[:, None] - w).clamp(min=1)).long()
            keep_t &= ~((t_idx >= t0) & (t_idx < t0 + w))
        keep = keep_t[:, :, None].to(feats.dtype) * keep_f[:, None, :].to(feats.dtype)
        return feats * keep


def num_frames(duration_s: float, cfg: FeatureConfig) -> int:
    return int(math.floor(duration_s * cfg.sample_rate)) // cfg.hop_length
