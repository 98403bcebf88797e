"""Conv-TasNet (Luo & Mesgarani 2019, "Conv-TasNet: Surpassing Ideal Time-Frequency
Magnitude Masking for Speech Separation").

A learned conv filterbank (N filters of L samples, hop L/2), a temporal convolutional
network (TCN) that estimates one mask per source over the encoder frames, and a
transposed-conv filterbank back to waveforms. The TCN: gLN/cLN and a 1x1 bottleneck to
B channels, then R repeats of X 1-D conv blocks with dilations 1, 2, ..., 2^(X-1). Each
block is 1x1 conv B -> H, PReLU, norm, depthwise conv (kernel P, dilated), PReLU, norm,
then a 1x1 residual conv H -> B and a 1x1 skip conv H -> Sc; the summed skips go through
PReLU, a 1x1 conv to C x N and the mask nonlinearity.

Causal mode (``causal=True``, needs ``norm="cLN"``) pads the depthwise convolutions on the
left only. What remains non-causal is the filterbank itself: an output sample comes from
the encoder frames that cover it, and such a frame reads up to ``kernel_size - 1``
samples ahead, so the algorithmic latency is one window of L samples (2 ms at 8 kHz with
L = 16), as in the paper.

Shapes: B batch, T samples, N filters, F encoder frames, C sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sonus.separation.models.blocks import (
    Decoder,
    Encoder,
    MaskAct,
    MaskHead,
    NormKind,
    bottleneck,
    make_norm,
    require_choice,
    require_positive,
    separate,
)


@dataclass(frozen=True)
class ConvTasNetConfig:
    """Defaults: the paper's best (non-causal, gLN) configuration, 5.1M parameters."""

    n_src: int = 2  # C
    n_filters: int = 512  # N: encoder/decoder filters
    kernel_size: int = 16  # L: filter length in samples; hop L // 2
    bn_channels: int = 128  # B: bottleneck (residual path) channels
    hidden_channels: int = 512  # H: channels inside each conv block
    skip_channels: int = 128  # Sc: skip-connection channels
    conv_kernel: int = 3  # P: depthwise conv kernel
    n_blocks: int = 8  # X: conv blocks per repeat, dilations 1 .. 2^(X-1)
    n_repeats: int = 3  # R
    norm: NormKind = "gLN"
    mask_act: MaskAct = "sigmoid"  # the paper's mask nonlinearity
    causal: bool = False  # causal depthwise padding; requires norm="cLN"

    def __post_init__(self) -> None:
        require_positive(self, "n_src", "n_filters", "kernel_size", "bn_channels", "hidden_channels", "skip_channels",
                         "conv_kernel", "n_blocks", "n_repeats")  # fmt: skip
        if self.kernel_size < 2:
            raise ValueError(f"ConvTasNetConfig: kernel_size must be >= 2 (hop = kernel_size // 2), got {self.kernel_size}")
        require_choice(self, "norm", NormKind)
        require_choice(self, "mask_act", MaskAct)
        if not isinstance(self.causal, bool):
            raise TypeError(f"ConvTasNetConfig: causal must be a bool, got {self.causal!r}")
        if self.causal and self.norm != "cLN":
            # gLN pools over the whole utterance and BN over the batch in training: both see the future.
            raise ValueError(f"ConvTasNetConfig: causal=True needs norm='cLN', got norm={self.norm!r}")

    @property
    def receptive_field(self) -> int:
        """Encoder frames the TCN sees around (causal: before) each frame, itself included."""
        return 1 + self.n_repeats * (self.conv_kernel - 1) * (2**self.n_blocks - 1)


class TCNBlock(nn.Module):
    """One 1-D conv block: x (B, Bc, F) -> (residual (B, Bc, F) or None, skip (B, Sc, F)).

    The last block of the TCN has no residual conv: its output would go unused (and an
    unused parameter breaks DistributedDataParallel)."""

    def __init__(self, cfg: ConvTasNetConfig, dilation: int, residual: bool) -> None:
        super().__init__()
        H = cfg.hidden_channels
        self.in_conv = nn.Conv1d(cfg.bn_channels, H, 1)
        self.act1, self.norm1 = nn.PReLU(), make_norm(cfg.norm, H)
        pad = (cfg.conv_kernel - 1) * dilation
        self.pad = (pad, 0) if cfg.causal else (pad // 2, pad - pad // 2)
        self.dconv = nn.Conv1d(H, H, cfg.conv_kernel, dilation=dilation, groups=H)
        self.act2, self.norm2 = nn.PReLU(), make_norm(cfg.norm, H)
        self.res_conv = nn.Conv1d(H, cfg.bn_channels, 1) if residual else None
        self.skip_conv = nn.Conv1d(H, cfg.skip_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        h = self.norm1(self.act1(self.in_conv(x)))  # (B, H, F)
        h = self.norm2(self.act2(self.dconv(F.pad(h, self.pad))))  # (B, H, F)
        return (None if self.res_conv is None else self.res_conv(h)), self.skip_conv(h)


class TemporalConvNet(nn.Module):
    """The Conv-TasNet masker: encoder frames (B, N, F) -> masks (B, C, N, F)."""

    def __init__(self, cfg: ConvTasNetConfig) -> None:
        super().__init__()
        self.bottleneck = bottleneck(cfg.norm, cfg.n_filters, cfg.bn_channels)
        n = cfg.n_repeats * cfg.n_blocks
        self.blocks = nn.ModuleList(TCNBlock(cfg, 2 ** (i % cfg.n_blocks), residual=i < n - 1) for i in range(n))
        self.prelu = nn.PReLU()
        self.head = MaskHead(cfg.skip_channels, cfg.n_src, cfg.n_filters, cfg.mask_act, gated=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(frames)  # (B, Bc, F)
        skips = torch.zeros((), dtype=x.dtype, device=x.device)
        for block in self.blocks:
            residual, skip = block(x)
            skips = skips + skip  # (B, Sc, F)
            if residual is not None:
                x = x + residual
        return self.head(self.prelu(skips))  # (B, C, N, F)


class ConvTasNet(nn.Module):
    """Conv-TasNet separator: mix (B, T) -> estimates (B, C, T), C = ``cfg.n_src``, any T >= 1."""

    def __init__(self, cfg: ConvTasNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.n_filters, cfg.kernel_size)
        self.masker = TemporalConvNet(cfg)
        self.decoder = Decoder(cfg.n_filters, cfg.kernel_size)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return separate(self.encoder, self.masker, self.decoder, mix)
