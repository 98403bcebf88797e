"""The speech tokenizer: log-mel -> ConvNeXt encoder -> RVQ -> ConvNeXt decoder -> waveform.

Shapes: B batch, S samples, T frames (one per ``hop`` samples, / ``downsample``), M mel
bins, D the quantized channels, Q quantizers, F = n_fft / 2 + 1 frequency bins.

The decoder makes the waveform itself, with no vocoder: an iSTFT head (Siuzdak 2023, Vocos)
predicts each frame's log-magnitude and phase and inverts them with ``torch.istft``. The
brief's original design, a decoder that outputs a mel spectrogram for a separate vocoder,
is ``head="mel"``; its audio then comes from Griffin-Lim (no pretrained vocoder can be
downloaded here), which is much worse, so it is an option, not the default.

Encoder and decoder blocks are ConvNeXt blocks (depthwise conv, LayerNorm, pointwise MLP,
layer scale), as Vocos uses; ``causal=True`` pads every convolution on the left only, so a
frame's code depends on past audio alone (the STFT analysis window still spans one frame).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonus.audio.features import mel_filterbank
from sonus.codec.quantize import QuantizedResult, ResidualVectorQuantizer, RVQConfig

Head = Literal["istft", "mel"]


@dataclass(frozen=True)
class CodecConfig:
    sample_rate: int = 24000
    hop: int = 320  # samples a frame before ``downsample`` (24 kHz: 75 frames/s)
    n_fft: int = 1280  # STFT of the input mel and of the iSTFT head
    n_mels: int = 100
    hidden_dim: int = 512
    encoder_layers: int = 8
    decoder_layers: int = 8
    kernel_size: int = 7
    downsample: int = 1  # extra stride of the encoder (2: half the frame rate and bitrate)
    causal: bool = False
    head: Head = "istft"
    rvq: RVQConfig = field(default_factory=lambda: RVQConfig(dim=128, n_q=8, codebook_size=1024))

    def __post_init__(self) -> None:
        if isinstance(self.rvq, dict):
            object.__setattr__(self, "rvq", RVQConfig(**self.rvq))
        bad = {k: getattr(self, k) for k in ("sample_rate", "hop", "n_fft", "n_mels", "hidden_dim", "kernel_size", "downsample") if getattr(self, k) < 1}
        bad |= {k: getattr(self, k) for k in ("encoder_layers", "decoder_layers") if getattr(self, k) < 0}
        if self.n_fft < self.hop:
            bad["n_fft"] = f"{self.n_fft} < hop {self.hop}"
        if self.head not in ("istft", "mel"):
            bad["head"] = self.head
        if bad:
            raise ValueError(f"CodecConfig: invalid values {bad}")

    @property
    def frame_rate(self) -> float:
        """Code frames a second."""
        return self.sample_rate / (self.hop * self.downsample)

    def bitrate(self, n_q: int | None = None) -> float:
        """Bits a second with the first ``n_q`` quantizers (default all): frame rate x n_q x log2 K."""
        n_q = self.rvq.n_q if n_q is None else n_q
        return self.frame_rate * n_q * math.log2(self.rvq.codebook_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecConfig:
        return cls(**{**d, "rvq": RVQConfig(**d["rvq"])})


class Conv(nn.Conv1d):
    """Conv1d with 'same' length: centred padding, or left padding only when causal."""

    def __init__(self, c_in: int, c_out: int, kernel: int, causal: bool, groups: int = 1, stride: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride, groups=groups)
        total = kernel - stride
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class ConvNeXtBlock(nn.Module):
    """x + scale * pw2(gelu(pw1(LN(dwconv(x))))) on (B, C, T) (Liu et al. 2022; Vocos)."""

    def __init__(self, dim: int, kernel: int, causal: bool, layer_scale: float) -> None:
        super().__init__()
        self.dw = Conv(dim, dim, kernel, causal, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.pw2 = nn.Linear(dim, 3 * dim), nn.Linear(3 * dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dw(x).transpose(1, 2)  # (B, T, C)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.scale * y).transpose(1, 2)


class LogMel(nn.Module):
    """(B, S) waveform -> (B, M, T) natural-log mel power, T = S // hop + 1 (centred frames)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.n_fft, self.hop = cfg.n_fft, cfg.hop
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, 0.0, cfg.sample_rate / 2).t(), persistent=False)  # (M, F)

    def forward(self, wave: Tensor) -> Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
            power = spec.real.pow(2) + spec.imag.pow(2)  # (B, F, T)
            return torch.log(torch.clamp(self.fb @ power, min=1e-5))


class Encoder(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        h = cfg.hidden_dim
        self.inp = Conv(cfg.n_mels, h, cfg.kernel_size, cfg.causal)
        self.down = Conv(h, h, 2 * cfg.downsample, cfg.causal, stride=cfg.downsample) if cfg.downsample > 1 else nn.Identity()
        self.blocks = nn.Sequential(*(ConvNeXtBlock(h, cfg.kernel_size, cfg.causal, 1.0 / max(1, cfg.encoder_layers)) for _ in range(cfg.encoder_layers)))
        self.norm = nn.LayerNorm(h)  # per frame: nothing in the encoder looks across time but the causal convs
        self.out = nn.Linear(h, cfg.rvq.dim)
        self.stride = cfg.downsample

    def forward(self, mel: Tensor) -> Tensor:
        """(B, M, T) -> (B, D, ceil(T / downsample)); the last frames are repeated to fill the stride."""
        extra = -mel.shape[-1] % self.stride
        if extra:
            mel = F.pad(mel, (0, extra), mode="replicate")
        y = self.blocks(self.down(self.inp(mel))).transpose(1, 2)  # (B, T', H)
        return self.out(self.norm(y)).transpose(1, 2)


class Decoder(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        h = cfg.hidden_dim
        self.cfg = cfg
        self.inp = Conv(cfg.rvq.dim, h, cfg.kernel_size, cfg.causal)
        self.up = nn.Upsample(scale_factor=cfg.downsample, mode="nearest") if cfg.downsample > 1 else nn.Identity()
        self.blocks = nn.Sequential(*(ConvNeXtBlock(h, cfg.kernel_size, cfg.causal, 1.0 / max(1, cfg.decoder_layers)) for _ in range(cfg.decoder_layers)))
        self.norm = nn.LayerNorm(h)
        n_out = cfg.n_fft + 2 if cfg.head == "istft" else cfg.n_mels  # log-magnitude and phase of F bins, or log-mel
        self.head = nn.Linear(h, n_out)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def forward(self, q: Tensor) -> Tensor:
        """(B, D, T') -> (B, n_fft + 2, T) iSTFT parameters or (B, M, T) log-mel."""
        y = self.blocks(self.up(self.inp(q))).transpose(1, 2)  # (B, T, H)
        return self.head(self.norm(y)).transpose(1, 2)

    def to_wave(self, out: Tensor, length: int | None = None) -> Tensor:
        """iSTFT head output (B, n_fft + 2, T) -> (B, S) waveform (fp32)."""
        with torch.autocast(out.device.type, enabled=False):
            log_mag, phase = out.float().chunk(2, dim=1)  # (B, F, T) each
            mag = torch.exp(log_mag.clamp(max=10.0))  # a cap so an early, wild step cannot overflow
            spec = torch.polar(mag, phase)
            return torch.istft(spec, self.cfg.n_fft, self.cfg.hop, window=self.window, center=True, length=length)


@dataclass
class CodecOutput:
    """What a training step needs: the reconstruction and the quantizer's result.

    wave: (B, S) reconstructed waveform (None for the mel head); mel: (B, M, T) log-mel of
    the reconstruction (the mel head's own output); mel_target: (B, M, T) the input's.
    """

    wave: Tensor | None
    mel: Tensor
    mel_target: Tensor
    quantized: QuantizedResult


class SpeechTokenizer(nn.Module):
    """Waveform <-> discrete tokens (B, Q, T'). ``forward`` runs the whole reconstruction for training."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = LogMel(cfg)
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg.rvq)
        self.decoder = Decoder(cfg)

    def _frames(self, num_samples: int) -> int:
        return num_samples // self.cfg.hop + 1

    def forward(self, wave: Tensor, n_q: int | None = None) -> CodecOutput:
        """(B, S) waveform at ``cfg.sample_rate`` -> reconstruction, with ``n_q`` quantizers."""
        s = wave.shape[-1]
        target = self.mel(wave)  # (B, M, T)
        t = target.shape[-1]
        q = self.quantizer(self.encoder(target), n_q)
        out = self.decoder(q.quantized)[..., :t]
        if self.cfg.head == "mel":
            return CodecOutput(None, out, target, q)
        rec = self.decoder.to_wave(out, length=s)
        return CodecOutput(rec, self.mel(rec), target, q)

    @torch.no_grad()
    def encode(self, wave: Tensor, n_q: int | None = None) -> Tensor:
        """(B, S) -> (B, n_q, T') codes."""
        return self.quantizer.encode(self.encoder(self.mel(wave)), n_q)

    @torch.no_grad()
    def decode(self, codes: Tensor, length: int | None = None) -> Tensor:
        """(B, Q', T') codes -> (B, S) waveform (``length`` samples, default T' x hop x downsample)."""
        length = length or codes.shape[-1] * self.cfg.hop * self.cfg.downsample
        out = self.decoder(self.quantizer.decode(codes))[..., : self._frames(length)]
        if self.cfg.head == "mel":
            return griffin_lim(out, self.cfg, length)
        return self.decoder.to_wave(out, length=length)


def griffin_lim(log_mel: Tensor, cfg: CodecConfig, length: int, iters: int = 32) -> Tensor:
    """(B, M, T) natural-log mel power -> (B, S) waveform: pseudo-inverse of the mel filters, then
    Griffin & Lim (1984) phase reconstruction. The mel head's stand-in for a neural vocoder."""
    fb = mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, 0.0, cfg.sample_rate / 2).t().to(log_mel.device)  # (M, F)
    power = torch.linalg.pinv(fb) @ log_mel.float().exp()
    mag = power.clamp_min(0).sqrt()  # (B, F, T)
    window = torch.hann_window(cfg.n_fft, device=log_mel.device)
    angle = torch.polar(torch.ones_like(mag), 2 * math.pi * torch.rand_like(mag))
    for _ in range(iters):
        wave = torch.istft(mag * angle, cfg.n_fft, cfg.hop, window=window, length=length)
        spec = torch.stft(wave, cfg.n_fft, cfg.hop, window=window, return_complex=True)[..., : mag.shape[-1]]
        angle = spec / spec.abs().clamp_min(1e-8)
    return torch.istft(mag * angle, cfg.n_fft, cfg.hop, window=window, length=length)
