"""Listen-Attend-Spell second pass over the shared encoder (Chan et al. 2016).

A BiLSTM re-reads the shared encoder output (no longer streaming), and an
attention decoder predicts the transcript. Used to rescore the RNN-T n-best
(Sainath et al. 2019, "Two-Pass End-to-End Speech Recognition") or to decode alone.

Shapes: B batch, T encoder frames, U labels, V vocabulary, D = 2 * enc2_hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sonus.asr.config import LASConfig
from sonus.text.tokenizer import EOS


class Attention(nn.Module):
    """Location-aware (Chorowski et al. 2015) or dot-product attention."""

    def __init__(self, query_dim: int, key_dim: int, cfg: LASConfig) -> None:
        super().__init__()
        self.kind = cfg.attention
        if self.kind not in ("location", "dot"):
            raise ValueError(f"las.attention must be 'location' or 'dot', got {self.kind!r}")
        self.q = nn.Linear(query_dim, cfg.attention_dim)
        self.k = nn.Linear(key_dim, cfg.attention_dim, bias=False)
        if self.kind == "location":
            self.loc_conv = nn.Conv1d(1, cfg.location_channels, cfg.location_kernel, padding=cfg.location_kernel // 2, bias=False)
            self.loc_proj = nn.Linear(cfg.location_channels, cfg.attention_dim, bias=False)
            self.v = nn.Linear(cfg.attention_dim, 1, bias=False)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Hq), keys (B, T, A) pre-projected, values (B, T, D), mask (B, T), prev (B, T)
        -> context (B, D), weights (B, T)."""
        if self.kind == "dot":
            context, w = self.all_steps(query[:, None, :], keys, values, mask)
            return context[:, 0], w[:, 0]
        q = self.q(query)
        loc = self.loc_proj(self.loc_conv(prev[:, None, :]).transpose(1, 2))  # (B, T, A)
        energy = self.v(torch.tanh(keys + q[:, None, :] + loc)).squeeze(-1)
        energy = energy.float().masked_fill(~mask, float("-inf"))
        w = torch.softmax(energy, dim=-1).to(values.dtype)
        return torch.bmm(w[:, None, :], values).squeeze(1), w

    def all_steps(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dot attention for every decoder step at once: queries (B, U, Hq) -> contexts (B, U, D), weights (B, U, T).

        ``forward`` with dot attention is this with U = 1 (it does not depend on the last weights)."""
        assert self.kind == "dot", self.kind
        energy = torch.bmm(self.q(queries), keys.transpose(1, 2)) / keys.shape[-1] ** 0.5  # (B, U, T)
        energy = energy.float().masked_fill(~mask[:, None, :], float("-inf"))
        w = torch.softmax(energy, dim=-1).to(values.dtype)
        return torch.bmm(w, values), w


@dataclass
class LASOutput:
    logits: torch.Tensor  # (B, U+1, V): predictions of targets then <eos>
    attention: torch.Tensor  # (B, U+1, T)


class LAS(nn.Module):
    """Listener BiLSTM, then an attention decoder.

    With ``cfg.input_feeding`` (the default, as Chan et al.) the decoder LSTM reads the last
    attention context beside the last token, so training runs it one step at a time. Without
    it (Luong et al. 2015's plain global attention) the LSTM reads tokens only: under teacher
    forcing it runs over all positions in one call, and with dot attention so does the
    attention, which makes LAS's training and rescoring cost a few matrix products."""

    def __init__(self, enc_dim: int, vocab_size: int, cfg: LASConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.listener = nn.LSTM(enc_dim, cfg.enc2_hidden, batch_first=True, bidirectional=True)
        D = 2 * cfg.enc2_hidden
        self.embed = nn.Embedding(vocab_size, cfg.embedding_dim)
        if cfg.input_feeding:
            self.cell, self.rnn = nn.LSTMCell(cfg.embedding_dim + D, cfg.dec_hidden), None
        else:
            self.cell, self.rnn = None, nn.LSTM(cfg.embedding_dim, cfg.dec_hidden, batch_first=True)
        self.attention = Attention(cfg.dec_hidden, D, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dec_hidden + D, vocab_size)
        self.enc_dim, self.out_dim = D, vocab_size

    def listen(self, enc: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared encoder output (B, T, H) -> values (B, T, D), pre-projected keys (B, T, A), mask (B, T)."""
        mask = torch.arange(enc.shape[1], device=enc.device)[None, :] < lengths[:, None]
        values = self.dropout(padded_bilstm(self.listener, enc, lengths, mask))
        return values, self.attention.k(values), mask

    def initial_state(self, values: torch.Tensor, mask: torch.Tensor):
        B, _, D = values.shape
        z = values.new_zeros(B, self.cfg.dec_hidden)
        prev = mask.to(values.dtype) / mask.sum(1, keepdim=True).clamp(min=1).to(values.dtype)
        return (z, z.clone()), values.new_zeros(B, D), prev

    def _recur(self, emb, state, context, prev, values, keys, mask):
        """The recurrent part of a step: embedded tokens (B, E) -> output features (B, H + D), state, context, weights."""
        if self.rnn is None:
            h, c = self.cell(torch.cat([emb, context], dim=-1), state)
        else:
            _, (h, c) = self.rnn(emb[:, None, :], (state[0][None], state[1][None]))
            h, c = h[0], c[0]
        context, w = self.attention(h, keys, values, mask, prev)
        return torch.cat([h, context], dim=-1), (h, c), context, w

    def step(self, tokens, state, context, prev, values, keys, mask):
        """One decoder step: tokens (B,) -> logits (B, V), new state, context, attention weights."""
        feat, state, context, w = self._recur(self.embed(tokens), state, context, prev, values, keys, mask)
        return self.out(self.dropout(feat)), state, context, w

    def forward(self, enc: torch.Tensor, enc_lengths: torch.Tensor, targets: torch.Tensor) -> LASOutput:
        """Teacher forcing. targets (B, U) padded with anything -> logits for targets[0..U-1], <eos>."""
        return self.teacher_force(*self.listen(enc, enc_lengths), targets)

    def teacher_force(self, values: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> LASOutput:
        """``forward`` from the listener's output (``listen``): logits for targets[0..U-1], <eos>.

        The embedding and the output layer run once over all U+1 positions (one large matrix
        product instead of U+1 small ones); so does the decoder LSTM without input feeding,
        and then dot attention too. The rest runs step by step."""
        state, context, prev = self.initial_state(values, mask)
        inputs = torch.cat([targets.new_full((targets.shape[0], 1), EOS), targets], dim=1)  # <eos> starts
        embs = self.embed(inputs)  # (B, U+1, E)
        if self.rnn is None:
            feats, weights = [], []
            for emb in embs.unbind(1):  # (B, E) each
                feat, state, context, prev = self._recur(emb, state, context, prev, values, keys, mask)
                feats.append(feat)
                weights.append(prev)
            feat, w = torch.stack(feats, 1), torch.stack(weights, 1)
        else:
            hs, _ = self.rnn(embs, (state[0][None], state[1][None]))  # (B, U+1, Hd)
            if self.attention.kind == "dot":
                contexts, w = self.attention.all_steps(hs, keys, values, mask)
            else:
                ctxs, weights = [], []
                for h in hs.unbind(1):  # location attention needs the last step's weights
                    context, prev = self.attention(h, keys, values, mask, prev)
                    ctxs.append(context)
                    weights.append(prev)
                contexts, w = torch.stack(ctxs, 1), torch.stack(weights, 1)
            feat = torch.cat([hs, contexts], dim=-1)
        return LASOutput(self.out(self.dropout(feat)), w)


def padded_bilstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A one-layer bidirectional batch-first ``lstm`` over a padded batch x (B, T, H) -> (B, T, 2 Hl),
    equal to running it on the packed batch, zeros at padded frames.

    A packed batch makes PyTorch's CPU LSTM run frame by frame under autograd (the fast
    oneDNN kernel takes padded input only). So each direction runs padded with the module's
    own weights: the forward one as is (padding comes after every valid frame), the
    backward one on each sequence reversed within its length. The demo's LAS (B 32, T 40,
    bf16) then trains in 50 ms a step instead of 72.
    """
    if lstm.num_layers != 1 or not lstm.bidirectional or not lstm.batch_first or lstm.proj_size:
        raise ValueError("padded_bilstm: needs a one-layer bidirectional batch-first LSTM without projection")
    B, T, _ = x.shape
    t = torch.arange(T, device=x.device)[None, :]
    ln = lengths.to(x.device).long()[:, None]
    rev = torch.where(t < ln, ln - 1 - t, t)  # (B, T): a permutation of each row, its own inverse
    x_rev = x.gather(1, rev[..., None].expand_as(x))
    hx = x.new_zeros(1, B, lstm.hidden_size)
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")[: 4 if lstm.bias else 2]
    fwd = torch.lstm(x, (hx, hx), [getattr(lstm, n) for n in names], lstm.bias, 1, 0.0, lstm.training, False, True)[0]
    bwd = torch.lstm(x_rev, (hx, hx), [getattr(lstm, n + "_reverse") for n in names], lstm.bias, 1, 0.0, lstm.training, False, True)[0]
    bwd = bwd.gather(1, rev[..., None].expand_as(bwd))
    return torch.cat([fwd, bwd], dim=-1) * mask[..., None].to(fwd.dtype)


def las_targets(targets: torch.Tensor, target_lengths: torch.Tensor, pad: int = -100) -> torch.Tensor:
    """(B, U) labels -> (B, U+1) with <eos> after each sequence and ``pad`` beyond."""
    B, U = targets.shape
    out = torch.cat([targets, targets.new_full((B, 1), pad)], dim=1).long()
    idx = torch.arange(U + 1, device=targets.device)[None, :]
    out = torch.where(idx < target_lengths[:, None], out, torch.full_like(out, pad))
    out[torch.arange(B, device=targets.device), target_lengths.long()] = EOS
    return out


def las_sequence_logprob(out: LASOutput, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Sum of log P(targets, <eos>) per sequence, (B,), in fp32."""
    tgt = las_targets(targets, target_lengths)
    lp = torch.log_softmax(out.logits.float(), dim=-1)
    valid = tgt >= 0
    tok_lp = lp.gather(2, tgt.clamp(min=0)[..., None]).squeeze(-1)
    return (tok_lp * valid).sum(1)


def las_loss(out: LASOutput, targets: torch.Tensor, target_lengths: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Token-level cross entropy (teacher forcing, <eos> included), summed over each
    utterance and averaged over the batch, in fp32."""
    tgt = las_targets(targets, target_lengths)
    ce = F.cross_entropy(out.logits.float().transpose(1, 2), tgt, ignore_index=-100, label_smoothing=label_smoothing, reduction="sum")
    return ce / tgt.shape[0]
