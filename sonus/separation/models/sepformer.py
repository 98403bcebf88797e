"""SepFormer (Subakan, Ravanelli, Cornell, Bronzi & Zhong 2021, "Attention is all you need
in speech separation").

The DPRNN layout with transformers in place of the RNNs: a learned conv filterbank
(N = 256 filters, 16 samples, hop 8), gLN and a 1x1 bottleneck to d_model, chunks of
250 frames with 50% overlap, then ``num_blocks`` SepFormer blocks. Each block is an
intra-chunk transformer (along each chunk) and an inter-chunk transformer (across the
chunks at each position), each followed by gLN and a residual connection. A transformer
adds sinusoidal positions to its input, then runs ``num_layers`` pre-LN encoder layers
(multi-head self-attention and a ReLU feed-forward of d_ffn units) and a final LayerNorm.
Then PReLU, overlap-add, the gated mask head (ReLU masks) and the decoder.

Shapes: B batch, T samples, N filters, F encoder frames, D d_model, K chunk length
(frames), S chunks, C sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sonus.separation.models.blocks import (
    Decoder,
    DualPathBlock,
    DualPathMasker,
    Encoder,
    MaskAct,
    require_choice,
    require_positive,
    separate,
)


@dataclass(frozen=True)
class SepFormerConfig:
    """Defaults: the paper's SepFormer (2 blocks of 8 + 8 layers, 26M parameters)."""

    n_src: int = 2  # C
    n_filters: int = 256  # N: encoder/decoder filters
    kernel_size: int = 16  # encoder window in samples; hop kernel_size // 2 = 8
    d_model: int = 256  # D: channels inside the dual-path blocks
    nhead: int = 8
    d_ffn: int = 1024
    num_layers: int = 8  # transformer layers in each intra- and each inter-chunk transformer
    num_blocks: int = 2  # SepFormer blocks (intra + inter)
    chunk_size: int = 250  # K in encoder frames; hop K // 2
    dropout: float = 0.0
    mask_act: MaskAct = "relu"

    def __post_init__(self) -> None:
        require_positive(self, "n_src", "n_filters", "kernel_size", "d_model", "nhead", "d_ffn", "num_layers", "num_blocks",
                         "chunk_size")  # fmt: skip
        if self.kernel_size < 2 or self.chunk_size < 2:
            raise ValueError(f"SepFormerConfig: kernel_size and chunk_size must be >= 2 (hops are half of them), "
                             f"got kernel_size={self.kernel_size}, chunk_size={self.chunk_size}")  # fmt: skip
        if self.d_model % self.nhead:
            raise ValueError(f"SepFormerConfig: d_model={self.d_model} is not divisible by nhead={self.nhead}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SepFormerConfig: dropout must be in [0, 1), got {self.dropout}")
        require_choice(self, "mask_act", MaskAct)


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """(length, dim) fp32 positional encoding of Vaswani et al. 2017: sin on even, cos on odd channels."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angle = pos * freq  # (length, ceil(dim / 2))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe


class Transformer(nn.Module):
    """Sequences (batch, length, D) -> (batch, length, D): sinusoidal positions added, then
    ``num_layers`` pre-LN transformer encoder layers and a final LayerNorm."""

    def __init__(self, cfg: SepFormerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.d_model, cfg.nhead, cfg.d_ffn, cfg.dropout, activation="relu", batch_first=True, norm_first=True
            )
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class SepFormer(nn.Module):
    """SepFormer separator: mix (B, T) -> estimates (B, C, T), C = ``cfg.n_src``, any T >= 1."""

    def __init__(self, cfg: SepFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        blocks = [DualPathBlock(Transformer(cfg), Transformer(cfg), cfg.d_model) for _ in range(cfg.num_blocks)]
        self.encoder = Encoder(cfg.n_filters, cfg.kernel_size)
        self.masker = DualPathMasker(cfg.n_filters, cfg.d_model, cfg.chunk_size, blocks, cfg.n_src, cfg.mask_act)
        self.decoder = Decoder(cfg.n_filters, cfg.kernel_size)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return separate(self.encoder, self.masker, self.decoder, mix)
