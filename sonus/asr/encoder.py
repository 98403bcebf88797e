"""Shared streaming encoder: time reduction then unidirectional LSTMs, or a Conformer.

Shapes: B batch, T input frames, T' = ceil(T / r) encoder frames, F features, H hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sonus.asr.config import EncoderConfig
from sonus.nn.conformer import ConformerEncoder


@dataclass
class EncoderState:
    """What the encoder carries between chunks: LSTM states and unreduced leftover frames."""

    h: torch.Tensor  # (layers, B, H)
    c: torch.Tensor  # (layers, B, H)
    pending: torch.Tensor  # (B, <r, F) frames waiting to complete a reduction group


class TimeReduction(nn.Module):
    """Stack (concatenate) or average-pool r consecutive frames: (B, T, F) -> (B, ceil(T/r), F')."""

    def __init__(self, factor: int, kind: str, in_dim: int) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"reduction factor must be >= 1, got {factor}")
        if kind not in ("stack", "pool"):
            raise ValueError(f"reduction_type must be 'stack' or 'pool', got {kind!r}")
        self.factor, self.kind = factor, kind
        self.out_dim = in_dim * factor if kind == "stack" else in_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.factor
        if r == 1:
            return x, lengths
        B, T, F = x.shape
        pad = (-T) % r
        if pad:
            x = torch.cat([x, x.new_zeros(B, pad, F)], dim=1)
        x = x.reshape(B, (T + pad) // r, r, F)
        x = x.reshape(B, (T + pad) // r, r * F) if self.kind == "stack" else x.mean(2)
        return x, torch.div(lengths + r - 1, r, rounding_mode="floor")


class LSTMEncoder(nn.Module):
    """Time reduction followed by ``layers`` unidirectional LSTMs (causal, so it streams)."""

    def __init__(self, in_dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.reduce = TimeReduction(cfg.reduction, cfg.reduction_type, in_dim)
        self.lstm = nn.LSTM(self.reduce.out_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_dim = cfg.hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, F), lengths (B,) -> (B, T', H), (B,). Frames past a length are garbage."""
        x, lengths = self.reduce(x, lengths)
        y, _ = self.lstm(x)  # causal: padding after a sequence cannot change its valid frames
        return self.dropout(y), lengths

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder frames (B,) of ``frames`` (B,) input frames: a partial last group is kept."""
        return torch.div(frames + self.cfg.reduction - 1, self.cfg.reduction, rounding_mode="floor")

    def initial_state(self, batch: int, device: torch.device, feat_dim: int) -> EncoderState:
        z = torch.zeros(self.cfg.layers, batch, self.cfg.hidden, device=device)
        return EncoderState(h=z, c=z.clone(), pending=torch.zeros(batch, 0, feat_dim, device=device))

    def step(self, x: torch.Tensor, state: EncoderState, final: bool = False) -> tuple[torch.Tensor, EncoderState]:
        """Streaming: x (B, t, F) new frames -> (B, t', H) outputs for the completed groups
        (with ``final``, also for the last partial group, zero-padded as in the offline pass)."""
        x = torch.cat([state.pending, x], dim=1)
        r = self.cfg.reduction
        if final and x.shape[1] % r:
            x = torch.cat([x, x.new_zeros(x.shape[0], r - x.shape[1] % r, x.shape[2])], dim=1)
        n = (x.shape[1] // r) * r
        ready, pending = x[:, :n], x[:, n:]
        if n == 0:
            return x.new_zeros(x.shape[0], 0, self.out_dim), EncoderState(state.h, state.c, pending)
        lengths = torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)
        z, _ = self.reduce(ready, lengths)
        y, (h, c) = self.lstm(z, (state.h, state.c))
        return y, EncoderState(h, c, pending)


def build_encoder(in_dim: int, cfg: EncoderConfig) -> LSTMEncoder | ConformerEncoder:
    """The encoder ``cfg.kind`` names. Both share one interface: ``forward(x, lengths)``,
    ``output_lengths``, ``initial_state`` and ``step(x, state, final)``, and ``out_dim``."""
    if cfg.kind == "lstm":
        return LSTMEncoder(in_dim, cfg)
    if cfg.kind == "conformer":
        return ConformerEncoder(in_dim, cfg.conformer)
    raise ValueError(f"model.encoder must be 'lstm' or 'conformer', got {cfg.kind!r}")
