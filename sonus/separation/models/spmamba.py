"""SPMamba (Li, Chen & Hu 2024, "SPMamba: State-space model is all you need in speech
separation"): TF-GridNet (Wang et al. 2023, "TF-GridNet: Integrating full- and sub-band
modeling for speech separation") with each BLSTM replaced by a bidirectional Mamba.

    mix (B, T) / std -> STFT -> [real, imag] (B, 2, T', F) -> conv2d 3x3 + global norm (B, D, T', F)
    -> n_layers x GridNet block:
         intra-frame: per frame, a sequence over frequency: norm, unfold (kernel I, stride J),
                      BiMamba, deconv1d back to D channels, + residual
         inter-frame: per frequency, the same over frames
         full-band self-attention across frames (per-head 1x1 Q/K/V convolutions, the
                      head's whole (channels x F) map as one vector per frame), + residual
    -> deconv2d 3x3 to (B, n_src * 2, T', F) -> iSTFT -> crop to T, * std -> (B, n_src, T)

Offline, like TF-GridNet: the Mamba pairs and the attention see the whole utterance.
Defaults are SPMamba's WSJ0-2mix (8 kHz) configuration (configs/spmamba-wsj0.yml of the
authors' code): n_fft 256, hop 64, D 16, I 8, J 1, 6 blocks, 4 heads, Mamba expand 4.
STFT, iSTFT, norms, softmax and the scan run in fp32 under autocast.

Shapes: B batch, T samples, T' frames, F = n_fft // 2 + 1 frequencies, D = emb_dim channels,
C = n_src sources, H heads, E = ceil(attn_approx_qk_dim / F) query/key channels a head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonus.nn.mamba import BiMamba, MambaConfig
from sonus.separation.models.blocks import require_positive


@dataclass(frozen=True)
class SPMambaConfig:
    """Defaults: SPMamba's WSJ0-2mix (8 kHz) configuration, 6.09M parameters."""

    n_src: int = 2
    n_fft: int = 256
    stride: int = 64  # STFT hop in samples
    emb_dim: int = 16  # D, channels of every time-frequency bin
    emb_ks: int = 8  # I, bins unfolded into one Mamba input vector
    emb_hs: int = 1  # J, hop of the unfolding
    n_layers: int = 6
    d_state: int = 16
    d_conv: int = 4
    expand: int = 4  # Mamba d_inner = expand * emb_dim * emb_ks, as in SPMamba
    attn_n_head: int = 4
    attn_approx_qk_dim: int = 512  # E = ceil(this / F) query/key channels a head
    eps: float = 1e-5

    def __post_init__(self) -> None:
        require_positive(self, "n_src", "n_fft", "stride", "emb_dim", "emb_ks", "emb_hs", "n_layers", "d_state",
                         "d_conv", "expand", "attn_n_head", "attn_approx_qk_dim")  # fmt: skip
        if self.n_fft % 2:
            raise ValueError(f"SPMambaConfig: n_fft must be even, got {self.n_fft}")
        if self.stride >= self.n_fft:  # the Hann windows' overlap-add would vanish at frame starts: no iSTFT
            raise ValueError(f"SPMambaConfig: stride must be < n_fft, got stride={self.stride}, n_fft={self.n_fft}")
        if self.emb_hs > self.emb_ks:
            raise ValueError(f"SPMambaConfig: emb_hs must be <= emb_ks (no bin skipped), got {self.emb_hs} > {self.emb_ks}")
        if self.emb_dim % self.attn_n_head:
            raise ValueError(f"SPMambaConfig: emb_dim {self.emb_dim} is not divisible by attn_n_head {self.attn_n_head}")
        if self.eps <= 0:
            raise ValueError(f"SPMambaConfig: eps must be > 0, got {self.eps}")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


def _fp32(fn: Callable[[Any, Tensor], Tensor]) -> Callable[[Any, Tensor], Tensor]:
    """A method ``fn(self, x)`` run on x.float() with autocast off, returning x's dtype (norms in fp32)."""

    def wrapped(self: Any, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return fn(self, x.float()).to(x.dtype)

    return wrapped


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each time-frequency bin (TF-GridNet's LayerNormalization4D):
    (B, D, T', F) -> same shape."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    @_fp32
    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class GlobalNorm(nn.GroupNorm):
    """gLN: one mean and variance over all channels and bins of an utterance, per-channel affine."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__(1, channels, eps=eps)

    @_fp32
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


class HeadProjection(nn.Module):
    """1x1 conv to ``heads`` groups of ``ch`` channels, a PReLU per head, and a LayerNorm over each
    head's (ch, F) map of a frame (TF-GridNet's LayerNormalization4DCF): (B, D, T', F) -> (B, H, ch, T', F)."""

    def __init__(self, in_ch: int, heads: int, ch: int, n_freqs: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, heads * ch, 1)
        self.prelu = nn.Parameter(torch.full((heads,), 0.25))  # one PReLU slope a head
        self.weight = nn.Parameter(torch.ones(heads, ch, 1, n_freqs))
        self.bias = nn.Parameter(torch.zeros(heads, ch, 1, n_freqs))
        self.heads, self.eps = heads, eps

    def forward(self, x: Tensor) -> Tensor:
        b, _, t, f = x.shape
        h = self.conv(x).view(b, self.heads, -1, t, f)
        h = F.prelu(h, self.prelu.to(h.dtype))
        return self._norm(h)

    @_fp32
    def _norm(self, h: Tensor) -> Tensor:
        var, mean = torch.var_mean(h, dim=(2, 4), correction=0, keepdim=True)  # (B, H, 1, T', 1)
        return (h - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class FullBandAttention(nn.Module):
    """TF-GridNet's full-band self-attention across frames: (B, D, T', F) -> (B, D, T', F).

    Each head attends with queries and keys of E x F values a frame and values of D/H x F;
    the heads' values are concatenated back to D channels and projected (1x1 conv, PReLU, norm).
    """

    def __init__(self, cfg: SPMambaConfig) -> None:
        super().__init__()
        d, h, f = cfg.emb_dim, cfg.attn_n_head, cfg.n_freqs
        e = math.ceil(cfg.attn_approx_qk_dim / f)
        self.query = HeadProjection(d, h, e, f, cfg.eps)
        self.key = HeadProjection(d, h, e, f, cfg.eps)
        self.value = HeadProjection(d, h, d // h, f, cfg.eps)
        self.out = HeadProjection(d, 1, d, f, cfg.eps)

    def forward(self, x: Tensor) -> Tensor:
        b, d, t, f = x.shape
        q, k, v = (proj(x).transpose(2, 3).flatten(3) for proj in (self.query, self.key, self.value))  # (B, H, T', . x F)
        with torch.autocast(x.device.type, enabled=False):  # softmax over frames in fp32
            o = F.scaled_dot_product_attention(q.float(), k.float(), v.float())  # (B, H, T', D/H x F); scale 1/sqrt(E F)
        o = o.view(b, -1, t, d // q.shape[1], f).transpose(2, 3).reshape(b, d, t, f).to(x.dtype)
        return self.out(o)[:, 0]


class SequenceModule(nn.Module):
    """One BiMamba pass along the last axis with TF-GridNet's unfold/deconv around it:
    (B, D, S, L) -> (B, D, S, L), each of the B*S rows a sequence of L bins, plus the residual.

    norm -> unfold windows of I bins at hop J: (B*S, W, D*I) -> BiMamba (B*S, W, 2*D*I)
    -> ConvTranspose1d back to (B*S, D, L). L must be I + k*J (the block pads to that).
    """

    def __init__(self, cfg: SPMambaConfig) -> None:
        super().__init__()
        width = cfg.emb_dim * cfg.emb_ks
        self.norm = ChannelNorm(cfg.emb_dim, cfg.eps)
        self.mamba = BiMamba(MambaConfig(d_model=width, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand), cfg.eps)
        self.proj = nn.ConvTranspose1d(2 * width, cfg.emb_dim, cfg.emb_ks, stride=cfg.emb_hs)
        self.ks, self.hs = cfg.emb_ks, cfg.emb_hs

    def forward(self, x: Tensor) -> Tensor:
        b, d, s, length = x.shape
        h = self.norm(x).transpose(1, 2).reshape(b * s, d, length)
        h = h.unfold(2, self.ks, self.hs)  # (B*S, D, W, I)
        h = h.transpose(1, 2).flatten(2)  # (B*S, W, D*I)
        h = self.proj(self.mamba(h).transpose(1, 2))  # (B*S, D, L)
        assert h.shape[-1] == length, (h.shape, length)
        return x + h.view(b, s, d, length).transpose(1, 2)


class GridNetBlock(nn.Module):
    """Intra-frame (over F) and inter-frame (over T') BiMamba modules, then full-band attention:
    (B, D, T', F) -> (B, D, T', F)."""

    def __init__(self, cfg: SPMambaConfig) -> None:
        super().__init__()
        self.intra = SequenceModule(cfg)
        self.inter = SequenceModule(cfg)
        self.attn = FullBandAttention(cfg)
        self.ks, self.hs = cfg.emb_ks, cfg.emb_hs

    def _padded(self, n: int) -> int:
        """The smallest I + k*J >= n: a length the unfold covers to its last bin."""
        return self.ks + math.ceil(max(n - self.ks, 0) / self.hs) * self.hs

    def forward(self, x: Tensor) -> Tensor:
        _, _, t, f = x.shape
        x = F.pad(x, (0, self._padded(f) - f, 0, self._padded(t) - t))
        x = self.intra(x)  # sequences over frequency, one per frame
        x = self.inter(x.transpose(2, 3)).transpose(2, 3)  # sequences over frames, one per frequency
        x = x[:, :, :t, :f]
        return x + self.attn(x)


class SPMamba(nn.Module):
    """SPMamba separator: mix (B, T) -> estimates (B, C, T), any T >= 1.

    The mixture is divided by its standard deviation (as TF-GridNet does) and the estimates
    multiplied back, so the model is scale-equivariant; the signal is zero-padded to a multiple
    of the hop inside and the output cropped to exactly T.
    """

    def __init__(self, cfg: SPMambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(2, cfg.emb_dim, 3, padding=1)
        self.norm = GlobalNorm(cfg.emb_dim, cfg.eps)
        self.blocks = nn.ModuleList(GridNetBlock(cfg) for _ in range(cfg.n_layers))
        self.deconv = nn.ConvTranspose2d(cfg.emb_dim, 2 * cfg.n_src, 3, padding=1)

    def forward(self, mix: Tensor) -> Tensor:
        """mix (B, T) float -> (B, C, T) in mix's dtype."""
        if mix.dim() != 2 or mix.shape[1] < 1:
            raise ValueError(f"SPMamba expects a (B, T) mixture with T >= 1, got shape {tuple(mix.shape)}")
        cfg = self.cfg
        b, t = mix.shape
        padded = math.ceil(t / cfg.stride) * cfg.stride
        with torch.autocast(mix.device.type, enabled=False):
            x = mix.float()
            # population std (defined at T = 1); the floor keeps silence finite
            std = x.std(dim=1, correction=0, keepdim=True).clamp_min(1e-8)  # (B, 1)
            x = F.pad(x / std, (0, padded - t))
            window = torch.hann_window(cfg.n_fft, device=x.device)
            # centred frames padded with zeros, not reflected: reflection needs T > n_fft / 2
            spec = torch.stft(x, cfg.n_fft, cfg.stride, window=window, center=True, pad_mode="constant",
                              return_complex=True)  # (B, F, T')  # fmt: skip
            feats = torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, 2, T', F)
        h = self.norm(self.conv(feats))  # (B, D, T', F)
        for block in self.blocks:
            h = block(h)
        est = self.deconv(h)  # (B, C*2, T', F)
        with torch.autocast(mix.device.type, enabled=False):
            n_frames = est.shape[2]
            est = est.float().reshape(b * cfg.n_src, 2, n_frames, cfg.n_freqs).permute(0, 3, 2, 1)  # (B*C, F, T', 2)
            wave = torch.istft(torch.view_as_complex(est.contiguous()), cfg.n_fft, cfg.stride, window=window,
                               center=True, length=padded)  # (B*C, padded)  # fmt: skip
            wave = wave.view(b, cfg.n_src, padded)[..., :t] * std[:, :, None]  # (B, C, T)
        return wave.to(mix.dtype)
