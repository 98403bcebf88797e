"""Batched greedy RNN-T search, label-looping (Bataev et al. 2024, "Label-Looping: Highly
Efficient Decoding for Transducers").

The loop runs over labels, not frames: each utterance keeps its own frame index, and a
step finds every utterance's next label at once. Between two labels the predictor output
is fixed, so the joiner scores the next W frames of each utterance in one call (B x W
rows); an utterance moves to the first frame whose best symbol is not blank, charging
the blanks before it, and emits that label (it stays on that frame, for more labels); the
predictor then advances, batched over all that emitted. An utterance with no label in its
W frames moves W frames on. No step waits for another utterance to finish its frame, and
labels are written into a tensor, never a Python list. W trades Python steps (about one
per label instead of one per frame and label) for joiner rows scored past the next label.

Shapes: B batch, T encoder frames, W look-ahead frames, V vocabulary, J joiner width, L label capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sonus.asr.decoding.search import (
    TransducerSearch,
    feed_labels,
    prime_predictor,
    reserve,
)
from sonus.asr.decoding.types import DecodeResult, Hypothesis
from sonus.asr.joiner import Joiner
from sonus.asr.predictor import Predictor, PredState
from sonus.text.tokenizer import BLANK


@dataclass
class GreedyState:
    """One hypothesis per utterance, between frames (so a stream can stop after any chunk)."""

    pred_state: PredState  # each (layers, B, H)
    pred_p: torch.Tensor  # (B, J) projected predictor output after the last label
    tokens: torch.Tensor  # (B, L) labels; row b's first lengths[b] are its hypothesis, the rest is scratch
    lengths: torch.Tensor  # (B,)
    scores: torch.Tensor  # (B,) log-probability of the path taken
    frames: torch.Tensor | None = None  # (B, L) encoder frame at which each label was emitted (None: not tracked)
    offset: torch.Tensor | None = None  # (B,) encoder frames consumed before this state's next ``run``


class GreedySearch(TransducerSearch[GreedyState]):
    """Best symbol at each step, at most ``max_symbols`` labels per frame.

    The score is the log-probability of the path taken: a frame that used up its labels
    still ends with a blank, and that blank's log-probability is charged. ``window`` is W,
    the frames scored per step; it does not change the result.
    """

    def __init__(self, max_symbols: int = 3, window: int = 4) -> None:
        if max_symbols < 1 or window < 1:
            raise ValueError(f"max_symbols and window must be >= 1, got {max_symbols}, {window}")
        self.max_symbols, self.window = max_symbols, window

    def start(self, predictor: Predictor, joiner: Joiner, batch: int, device: torch.device) -> GreedyState:
        state, pred_p = prime_predictor(predictor, joiner, batch, device)
        z = torch.zeros(batch, dtype=torch.long, device=device)
        tokens = torch.zeros(batch, 16, dtype=torch.long, device=device)
        return GreedyState(state, pred_p, tokens, z, torch.zeros(batch, device=device), torch.zeros_like(tokens), z.clone())

    @torch.no_grad()
    def run(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor, state: GreedyState) -> GreedyState:
        B, T, _ = enc.shape
        if T == 0:
            return state
        dev, W = enc.device, self.window
        enc_p = F.pad(joiner.enc_proj(enc), (0, 0, 0, W))  # (B, T+W, J): zero frames past the end
        lengths = lengths.to(dev)
        rows, ahead = torch.arange(B, device=dev), torch.arange(W, device=dev)
        t = torch.zeros(B, dtype=torch.long, device=dev)  # each utterance's frame
        emitted = torch.zeros(B, dtype=torch.long, device=dev)  # labels it emitted in that frame
        n, scores = state.lengths.clone(), state.scores.clone()
        tokens = reserve(state.tokens, int(n.max()) + T * self.max_symbols + 1)  # +1: the scratch slot
        at_frame = reserve(_frames_of(state), tokens.shape[1])  # (B, L) emission frames, alongside tokens
        offset = state.offset if state.offset is not None else torch.zeros_like(n)
        pred_state, pred_p = state.pred_state, state.pred_p
        zero = scores.new_zeros(())
        first_labels = torch.zeros(W, joiner.out.out_features, dtype=torch.bool, device=dev)  # (W, V): the labels of frame t
        first_labels[0] = True
        first_labels[0, BLANK] = False
        while True:
            if not bool((t < lengths).any()):
                break
            frames = t[:, None] + ahead  # (B, W)
            lp = torch.log_softmax(joiner.joint(enc_p[rows[:, None], frames], pred_p[:, None]).float(), dim=-1)  # (B, W, V)
            capped = (emitted >= self.max_symbols)[:, None, None] & first_labels  # frame t used up its labels: it ends with blank
            best_lp, best = lp.masked_fill(capped, float("-inf")).max(-1)  # (B, W)
            valid = frames < lengths[:, None]
            hit = valid & (best != BLANK)
            emit = hit.any(1)  # (B,)
            first = torch.where(emit, hit.long().argmax(1), W)  # the frame of the next label; W: none in the window
            blanks = valid & (ahead < first[:, None])  # the blanks before it
            at = first.clamp(max=W - 1)[:, None]
            label, label_lp = best.gather(1, at)[:, 0], best_lp.gather(1, at)[:, 0]
            scores += torch.where(blanks, best_lp, zero).sum(1) + torch.where(emit, label_lp, zero)
            emitted = torch.where(emit, torch.where(first == 0, emitted + 1, 1), 0)
            t = torch.minimum(t + first, lengths)  # a finished utterance stays at its end
            tokens[rows, n] = label  # a row that did not emit writes its scratch slot
            at_frame[rows, n] = offset + t
            n += emit
            pred_state, pred_p = feed_labels(predictor, joiner, label, emit, pred_state, pred_p)
        return GreedyState(pred_state, pred_p, tokens, n, scores, at_frame, offset + lengths.clamp(max=T))

    def results(self, state: GreedyState) -> list[DecodeResult]:
        scores = state.scores.tolist()
        frames = _frames_of(state)
        return [
            DecodeResult([Hypothesis(state.tokens[b, :n].tolist(), scores[b], scores[b], frames=frames[b, :n].tolist())])
            for b, n in enumerate(state.lengths.tolist())
        ]


def _frames_of(state: GreedyState) -> torch.Tensor:
    """The state's (B, L) emission frames; zeros for a state built without them."""
    return state.frames if state.frames is not None else torch.zeros_like(state.tokens)
