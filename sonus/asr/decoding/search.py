"""First-pass RNN-T search: the interface every strategy implements, and what they share.

A search is a small object with three methods, so that offline and streaming decoding run
the same inner loop (the design of torchaudio's ``RNNTBeamSearch.infer(..., state, hypothesis)``)::

    state = search.start(predictor, joiner, B, device)
    state = search.run(predictor, joiner, enc, lengths, state)  # offline once; streaming once a chunk
    results = search.results(state)                             # final, or partial mid-stream

``run`` continues from ``state``, so feeding the encoder frames in pieces gives the result
of feeding them at once. Every utterance has its own ``lengths``; frames past it are ignored.

Shapes: B batch, T encoder frames, V vocabulary, J joiner width, N predictor rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import torch

from sonus.asr.decoding.types import DecodeResult
from sonus.asr.joiner import Joiner
from sonus.asr.predictor import Predictor, PredState
from sonus.text.tokenizer import BLANK

S = TypeVar("S")


class TransducerSearch(ABC, Generic[S]):
    """A first-pass strategy: ``start`` a state, ``run`` it over encoder frames, read ``results``."""

    @abstractmethod
    def start(self, predictor: Predictor, joiner: Joiner, batch: int, device: torch.device) -> S:
        """The state before the first frame: empty hypotheses, the predictor primed with blank."""

    @abstractmethod
    def run(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor, state: S) -> S:
        """Continue ``state`` over enc (B, T, H), of which the first lengths[b] frames (B,) are valid.

        The state passed in may be reused; use the one returned."""

    @abstractmethod
    def results(self, state: S) -> list[DecodeResult]:
        """N-best list of every utterance so far, best first."""

    @torch.no_grad()
    def __call__(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        """Offline: the whole of enc (B, T, H) with lengths (B,)."""
        state = self.start(predictor, joiner, enc.shape[0], enc.device)
        return self.results(self.run(predictor, joiner, enc, lengths.to(enc.device), state))


class FrameSynchronousSearch(TransducerSearch[S]):
    """A search that moves all utterances one encoder frame at a time (the beam searches)."""

    @torch.no_grad()
    def run(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor, state: S) -> S:
        enc_p = joiner.enc_proj(enc)  # (B, T, J)
        lengths = lengths.to(enc.device)
        for t in range(enc.shape[1]):
            active = t < lengths  # (B,)
            if not bool(active.any()):
                break
            state = self.frame(predictor, joiner, enc_p[:, t], active, state)
        return state

    @abstractmethod
    def frame(self, predictor: Predictor, joiner: Joiner, enc_p_t: torch.Tensor, active: torch.Tensor, state: S) -> S:
        """One frame: enc_p_t (B, J) projected encoder frame; utterances where active (B,) is False stay as they are."""


def prime_predictor(predictor: Predictor, joiner: Joiner, n: int, device: torch.device) -> tuple[PredState, torch.Tensor]:
    """Predictor state and projected output (N, J) of N rows that have seen only blank (start of sequence)."""
    out, state = predictor.step(torch.full((n,), BLANK, dtype=torch.long, device=device), predictor.initial_state(n, device))
    return state, joiner.pred_proj(out)


def select_rows(state: PredState, idx: torch.Tensor) -> PredState:
    """Predictor state of rows ``idx`` (N,): each (layers, N, H)."""
    return tuple(s[:, idx] for s in state)


def feed_labels(
    predictor: Predictor, joiner: Joiner, labels: torch.Tensor, emit: torch.Tensor, state: PredState, pred_p: torch.Tensor
) -> tuple[PredState, torch.Tensor]:
    """Feed labels (N,) to the rows where emit (N,) is True; the others keep state and pred_p (N, J)."""
    if not bool(emit.any()):
        return state, pred_p
    out, new = predictor.step(labels, state)
    state = tuple(torch.where(emit[None, :, None], n, o) for n, o in zip(new, state))
    return state, torch.where(emit[:, None], joiner.pred_proj(out), pred_p)


def reserve(tokens: torch.Tensor, needed: int) -> torch.Tensor:
    """Label buffer (N, L) with room for ``needed`` labels a row (doubling, so a stream reallocates rarely)."""
    N, L = tokens.shape
    if needed <= L:
        return tokens
    return torch.cat([tokens, tokens.new_zeros(N, max(needed, 2 * L) - L)], dim=1)
