"""RNN-T prediction network: an autoregressive LSTM/GRU over previous labels.

Shapes: B batch, U labels, H hidden. Input position 0 is the blank id, used as
start-of-sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from sonus.asr.config import PredictorConfig
from sonus.text.tokenizer import BLANK

PredState = tuple[torch.Tensor, ...]  # (h,) for GRU, (h, c) for LSTM; each (layers, B, H)


class Predictor(nn.Module):
    def __init__(self, vocab_size: int, cfg: PredictorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        rnn = nn.LSTM if cfg.kind == "lstm" else nn.GRU
        if cfg.kind not in ("lstm", "gru"):
            raise ValueError(f"predictor kind must be 'lstm' or 'gru', got {cfg.kind!r}")
        self.rnn = rnn(cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_dim = cfg.hidden

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """targets (B, U) -> (B, U+1, H): output u has seen targets[:u]."""
        start = targets.new_full((targets.shape[0], 1), BLANK)
        y, _ = self.rnn(self.embed(torch.cat([start, targets], dim=1)))
        return self.dropout(y)

    def initial_state(self, batch: int, device: torch.device) -> PredState:
        z = torch.zeros(self.cfg.layers, batch, self.cfg.hidden, device=device)
        return (z, z.clone()) if self.cfg.kind == "lstm" else (z,)

    def step(self, tokens: torch.Tensor, state: PredState) -> tuple[torch.Tensor, PredState]:
        """tokens (N,) -> output (N, H) and new state; the decoding loop's single step.

        Out of training (no dropout between layers) each layer is one cell call: the same
        arithmetic as the ``nn.LSTM``/``nn.GRU`` (to rounding), but a one-frame call of those
        costs about 300 us on one CPU thread (oneDNN set-up) and a cell call about 70 us, and
        a search calls this once per emitted label.
        """
        if self.training:
            x = self.embed(tokens)[:, None, :]
            if self.cfg.kind == "lstm":
                y, (h, c) = self.rnn(x, (state[0], state[1]))
                return y[:, 0], (h, c)
            y, h = self.rnn(x, state[0])
            return y[:, 0], (h,)
        x = self.embed(tokens)  # (N, E)
        hs, cs = [], []
        for k in range(self.cfg.layers):
            w = [getattr(self.rnn, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if self.cfg.kind == "lstm":
                x, c = torch.lstm_cell(x, (state[0][k], state[1][k]), *w)
                cs.append(c)
            else:
                x = torch.gru_cell(x, state[0][k], *w)
            hs.append(x)
        return x, (torch.stack(hs), torch.stack(cs)) if cs else (torch.stack(hs),)
