"""RNN-T joint network: FC(encoder + prediction -> H), tanh, FC(H -> V).

The first FC on the concatenation equals the sum of two projections, so each side is
projected once and broadcast, instead of building a concatenated B x T x U x 2H tensor.
"""

from __future__ import annotations

import torch
from torch import nn


class Joiner(nn.Module):
    def __init__(self, enc_dim: int, pred_dim: int, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, hidden)
        self.pred_proj = nn.Linear(pred_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, vocab_size)

    def project(self, enc: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.enc_proj(enc), self.pred_proj(pred)

    def joint(self, enc_p: torch.Tensor, pred_p: torch.Tensor) -> torch.Tensor:
        """Already projected inputs that broadcast against each other -> logits (..., V)."""
        return self.out(torch.tanh(enc_p + pred_p))

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """enc (B, T, He), pred (B, U+1, Hp) -> logits (B, T, U+1, V)."""
        e, p = self.project(enc, pred)
        return self.joint(e[:, :, None, :], p[:, None, :, :])
