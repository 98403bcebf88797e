"""DPRNN (Luo, Chen & Yoshioka 2020, "Dual-path RNN: efficient long sequence modeling for
time-domain single-channel speech separation").

The Conv-TasNet layout with a dual-path RNN as the masker: encoder frames go through gLN
and a 1x1 bottleneck to D channels, are cut into chunks of K frames with 50% overlap,
and pass ``num_layers`` dual-path blocks. In each block a bidirectional RNN runs along
every chunk (intra-chunk), then a (bi)directional RNN runs across the chunks at every
position (inter-chunk); each RNN is followed by a linear projection back to D, gLN and a
residual connection. Then PReLU, overlap-add, the gated mask head and the decoder.

Shapes: B batch, T samples, N filters, F encoder frames, D block channels, K chunk
length (frames), S chunks, C sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

RNNType = Literal["LSTM", "GRU"]


@dataclass(frozen=True)
class DPRNNConfig:
    """Defaults: the paper's model (N = D = 64, 128 hidden units a direction, 6 blocks,
    2.6M parameters) except the encoder window, see ``kernel_size``."""

    n_src: int = 2  # C
    n_filters: int = 64  # N: encoder/decoder filters
    # Encoder window in samples, hop kernel_size // 2. The paper's best uses 2 (hop 1, with
    # chunk_size 250); 16 gives 8x fewer frames, which keeps CPU runs and tests fast.
    kernel_size: int = 16
    bn_channels: int = 64  # D: channels inside the dual-path blocks
    hidden_size: int = 128  # RNN hidden units per direction
    chunk_size: int = 100  # K in encoder frames; hop K // 2
    num_layers: int = 6  # dual-path blocks
    rnn_type: RNNType = "LSTM"
    bidirectional: bool = True  # of the inter-chunk RNN (the paper's causal variant: False); intra is always bidirectional
    mask_act: MaskAct = "sigmoid"

    def __post_init__(self) -> None:
        require_positive(self, "n_src", "n_filters", "kernel_size", "bn_channels", "hidden_size", "chunk_size", "num_layers")
        if self.kernel_size < 2 or self.chunk_size < 2:
            raise ValueError(f"DPRNNConfig: kernel_size and chunk_size must be >= 2 (hops are half of them), "
                             f"got kernel_size={self.kernel_size}, chunk_size={self.chunk_size}")  # fmt: skip
        require_choice(self, "rnn_type", RNNType)
        require_choice(self, "mask_act", MaskAct)
        if not isinstance(self.bidirectional, bool):
            raise TypeError(f"DPRNNConfig: bidirectional must be a bool, got {self.bidirectional!r}")


class RNNProjection(nn.Module):
    """Sequences (batch, length, D) -> (batch, length, D): an LSTM/GRU, then a linear layer
    from its hidden units back to D."""

    def __init__(self, rnn_type: RNNType, channels: int, hidden: int, bidirectional: bool) -> None:
        super().__init__()
        rnn = nn.LSTM if rnn_type == "LSTM" else nn.GRU
        self.rnn = rnn(channels, hidden, batch_first=True, bidirectional=bidirectional)
        self.proj = nn.Linear(hidden * (2 if bidirectional else 1), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.rnn(x)[0])


class DPRNN(nn.Module):
    """DPRNN separator: mix (B, T) -> estimates (B, C, T), C = ``cfg.n_src``, any T >= 1."""

    def __init__(self, cfg: DPRNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, H = cfg.bn_channels, cfg.hidden_size
        blocks = [
            DualPathBlock(RNNProjection(cfg.rnn_type, D, H, True), RNNProjection(cfg.rnn_type, D, H, cfg.bidirectional), D)
            for _ in range(cfg.num_layers)
        ]
        self.encoder = Encoder(cfg.n_filters, cfg.kernel_size)
        self.masker = DualPathMasker(cfg.n_filters, D, cfg.chunk_size, blocks, cfg.n_src, cfg.mask_act)
        self.decoder = Decoder(cfg.n_filters, cfg.kernel_size)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return separate(self.encoder, self.masker, self.decoder, mix)
