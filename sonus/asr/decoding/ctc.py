"""CTC first-pass searches over the CTC head's log-probabilities: best path, and prefix beam
search (Hannun et al. 2014, "First-Pass Large Vocabulary Continuous Speech Recognition using
Bi-Directional Recurrent DNNs"; the form of WeNet's ``ctc_prefix_beam_search``).

The same three-method shape as the transducer searches (:mod:`~sonus.asr.decoding.search`), so
a CTC first pass streams too: ``run`` continues from the state over new frames::

    state = search.start(B, device)
    state = search.run(log_probs, lengths, state)  # offline once; streaming once a chunk
    results = search.results(state)                # final, or partial mid-stream

A CTC search scores with nothing but the frame posteriors, so it takes log-probabilities, not
model parts; :class:`~sonus.asr.decoding.first_pass.CTCFirstPass` applies the CTC head.

Shapes: B batch, T frames, V vocabulary, K beam, C tokens kept per frame, L label capacity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from sonus.asr.decoding.beam import extend_keys
from sonus.asr.decoding.lexicon import ROOT, Lexicon, fused
from sonus.asr.decoding.search import reserve
from sonus.asr.decoding.types import DecodeResult, Hypothesis
from sonus.text.tokenizer import BLANK

S = TypeVar("S")
NEG_INF = float("-inf")


class CTCSearch(ABC, Generic[S]):
    """A CTC first-pass strategy: ``start`` a state, ``run`` it over log-probabilities, read ``results``."""

    @abstractmethod
    def start(self, batch: int, device: torch.device) -> S:
        """The state before the first frame: the empty prefix."""

    @abstractmethod
    def run(self, log_probs: torch.Tensor, lengths: torch.Tensor, state: S) -> S:
        """Continue ``state`` over log_probs (B, T, V), of which the first lengths[b] frames (B,) are valid.

        The state passed in may be reused; use the one returned."""

    @abstractmethod
    def results(self, state: S) -> list[DecodeResult]:
        """N-best list of every utterance so far, best first; ``score`` is log P(prefix)."""

    @torch.no_grad()
    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        """Offline: the whole of log_probs (B, T, V) with lengths (B,)."""
        state = self.start(log_probs.shape[0], log_probs.device)
        return self.results(self.run(log_probs, lengths.to(log_probs.device), state))


@dataclass
class CTCGreedyState:
    """The best path of every utterance so far, collapsed."""

    tokens: torch.Tensor  # (B, L) labels; row b's first lengths[b] are its hypothesis, the rest is scratch
    lengths: torch.Tensor  # (B,)
    last: torch.Tensor  # (B,) best symbol of the last frame seen (blank before the first), for repeats across chunks
    scores: torch.Tensor  # (B,) log-probability of the best path


class CTCGreedySearch(CTCSearch[CTCGreedyState]):
    """Best path decoding: the best symbol of every frame, repeats collapsed, blanks dropped.

    The score is the log-probability of that one path (a lower bound of the label sequence's
    probability, which sums over all its alignments). All frames of all utterances at once.
    """

    def start(self, batch: int, device: torch.device) -> CTCGreedyState:
        z = torch.zeros(batch, dtype=torch.long, device=device)
        return CTCGreedyState(torch.zeros(batch, 16, dtype=torch.long, device=device), z, z + BLANK, torch.zeros(batch, device=device))

    @torch.no_grad()
    def run(self, log_probs: torch.Tensor, lengths: torch.Tensor, state: CTCGreedyState) -> CTCGreedyState:
        B, T, _ = log_probs.shape
        assert B == state.lengths.shape[0], (tuple(log_probs.shape), tuple(state.lengths.shape))
        if T == 0:
            return state
        dev = log_probs.device
        lengths = lengths.to(dev).clamp(max=T)
        best_lp, best = log_probs.float().max(-1)  # (B, T)
        valid = torch.arange(T, device=dev)[None, :] < lengths[:, None]  # (B, T); padding only at the end
        prev = torch.cat([state.last[:, None], best[:, :-1]], dim=1)  # (B, T) the symbol of the frame before
        emit = valid & (best != BLANK) & (best != prev)
        pos = state.lengths[:, None] + emit.long().cumsum(1) - 1  # (B, T) where an emitted label goes
        n = state.lengths + emit.sum(1)
        tokens = reserve(state.tokens, int(n.max()) + 1)
        rows = torch.arange(B, device=dev)[:, None].expand(B, T)
        tokens[rows[emit], pos[emit]] = best[emit]
        last_frame = best.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
        last = torch.where(lengths > 0, last_frame, state.last)
        scores = state.scores + torch.where(valid, best_lp, 0.0).sum(1)
        return CTCGreedyState(tokens, n, last, scores)

    def results(self, state: CTCGreedyState) -> list[DecodeResult]:
        scores = state.scores.tolist()
        return [
            DecodeResult([Hypothesis(state.tokens[b, :n].tolist(), scores[b], scores[b])])
            for b, n in enumerate(state.lengths.tolist())
        ]


@dataclass
class PrefixBeamState:
    """K distinct prefixes (label sequences) per utterance, each with the probability of its
    paths split by how they end; row b*K + k of ``tokens`` is slot (b, k)."""

    blank: torch.Tensor  # (B, K) log P(paths that spell the prefix and end in blank); -inf: empty slot
    label: torch.Tensor  # (B, K) log P(paths that spell the prefix and end in its last label)
    keys: torch.Tensor  # (B, K) hash of the prefix (beam.extend_keys)
    last: torch.Tensor  # (B, K) last label of the prefix, blank for the empty prefix
    tokens: torch.Tensor  # (B*K, L) labels; a row's first lengths are its prefix, the rest scratch
    lengths: torch.Tensor  # (B*K,)
    lm_node: torch.Tensor | None = None  # (B, K) each prefix's lexicon state (shallow fusion; None: no LM)
    lm_score: torch.Tensor | None = None  # (B, K) its weighted LM score, not in ``blank``/``label``

    @property
    def scores(self) -> torch.Tensor:
        """(B, K) log P(prefix): all paths so far that spell it."""
        return torch.logaddexp(self.blank, self.label)


class CTCPrefixBeamSearch(CTCSearch[PrefixBeamState]):
    """CTC prefix beam search, batched over utterances; returns the K best prefixes and log P(prefix).

    A prefix's probability is split in two (Hannun et al. 2014): paths ending in blank (b) and
    in its last label (n). With p the frame's log-probabilities and ⊕ log-add-exp, a frame maps
    each prefix y (last label y_e, total y_b ⊕ y_n) to::

        y          b += (y_b ⊕ y_n) + p(blank)        n += y_n + p(y_e)   (the label repeated)
        y + c      n += (y_b ⊕ y_n) + p(c)  for c != y_e;   y_b + p(c)  for c == y_e

    Only the C = ``token_topk`` most probable symbols of each frame are tried (WeNet prunes to
    the beam size; ``token_topk=V`` with a beam as large as the number of prefixes is exact).
    Two prefixes merge when one extends another into a prefix already in the beam; distinct
    prefixes of the beam cannot otherwise meet, so merging compares the K kept prefixes with
    the K*C extensions only. The K best merged prefixes go on.

    ``lm``: a :class:`~sonus.asr.decoding.lexicon.Lexicon` fused into the search (shallow fusion
    on prefixes, as in Hannun et al.): a prefix extended by a label gains ``lm_weight`` times the
    label's LM score; prefixes are ranked by log P(prefix) + their weighted LM score. A prefix's
    LM score depends on its labels only, so merged paths share it.
    """

    def __init__(self, beam_size: int = 4, token_topk: int | None = None, lm: Lexicon | None = None, lm_weight: float = 0.0) -> None:
        if beam_size < 1 or (token_topk is not None and token_topk < 1):
            raise ValueError(f"beam_size and token_topk must be >= 1, got {beam_size}, {token_topk}")
        self.K, self.C = beam_size, token_topk if token_topk is not None else beam_size
        self.lm, self.lm_weight = fused(lm, lm_weight)

    def start(self, batch: int, device: torch.device) -> PrefixBeamState:
        K = self.K
        blank = torch.full((batch, K), NEG_INF, device=device)
        blank[:, 0] = 0.0  # the empty prefix, reached by the empty path
        z = torch.zeros(batch, K, dtype=torch.long, device=device)
        if self.lm is not None:
            self.lm.to(device)
        return PrefixBeamState(
            blank, torch.full_like(blank, NEG_INF), z, z + BLANK,
            torch.zeros(batch * K, 16, dtype=torch.long, device=device), torch.zeros(batch * K, dtype=torch.long, device=device),
            *((z + ROOT, torch.zeros_like(blank)) if self.lm is not None else (None, None)),
        )  # fmt: skip

    @torch.no_grad()
    def run(self, log_probs: torch.Tensor, lengths: torch.Tensor, state: PrefixBeamState) -> PrefixBeamState:
        B, T, _ = log_probs.shape
        assert B == state.blank.shape[0], (tuple(log_probs.shape), tuple(state.blank.shape))
        lengths = lengths.to(log_probs.device)
        for t in range(T):
            active = t < lengths  # (B,)
            if not bool(active.any()):
                break
            state = self.frame(log_probs[:, t].float(), active, state)
        return state

    def frame(self, lp: torch.Tensor, active: torch.Tensor, s: PrefixBeamState) -> PrefixBeamState:
        """One frame: lp (B, V) log-probabilities; utterances where active (B,) is False keep their prefixes."""
        B, K = s.blank.shape
        C = min(self.C, lp.shape[1])
        top_lp, top = lp.topk(C, dim=-1)  # (B, C)
        alive = s.scores > NEG_INF  # (B, K)
        total = s.scores
        # Staying: a blank, or the last label repeated (the empty prefix has no last label).
        blank_lp = torch.where((top == BLANK).any(-1), lp[:, BLANK], NEG_INF)  # (B,)
        stay_b = total + blank_lp[:, None]  # (B, K)
        repeat = (top[:, None, :] == s.last[:, :, None]) & (s.last != BLANK)[:, :, None]  # (B, K, C) c is the last label
        last_lp = torch.where(repeat, top_lp[:, None, :], NEG_INF).amax(-1)  # (B, K) -inf when not tried
        stay_n = s.label + last_lp
        # Extending with a label c: after the same label only through a blank.
        ext_n = torch.where(repeat, s.blank[:, :, None], total[:, :, None]) + top_lp[:, None, :]  # (B, K, C)
        ext_n = ext_n.masked_fill((top == BLANK)[:, None, :] | ~alive[:, :, None], NEG_INF).view(B, K * C)
        ext_label = top[:, None, :].expand(B, K, C).reshape(B, K * C)
        ext_keys = extend_keys(s.keys[:, :, None].expand(B, K, C).reshape(B, K * C), ext_label)
        # An extension that spells a kept prefix joins it.
        same = (s.keys[:, :, None] == ext_keys[:, None, :]) & alive[:, :, None] & (ext_n > NEG_INF)[:, None, :]  # (B, K, K*C)
        stay_n = torch.logaddexp(stay_n, torch.where(same, ext_n[:, None, :], NEG_INF).logsumexp(-1))
        ext_n = ext_n.masked_fill(same.any(1), NEG_INF)
        # Candidates: K stays, then K*C extensions; the K best go on (stable: ties keep that order).
        cand_b = torch.cat([stay_b, torch.full_like(ext_n, NEG_INF)], dim=1)  # (B, K + K*C)
        cand_n = torch.cat([stay_n, ext_n], dim=1)
        rank = torch.logaddexp(cand_b, cand_n)
        if s.lm_node is not None and s.lm_score is not None and self.lm is not None:
            V = lp.shape[1]
            gain, nxt = (x.view(B, K, V).gather(2, top[:, None, :].expand(B, K, C)) for x in self.lm.step(s.lm_node.view(-1)))
            cand_lm = torch.cat([s.lm_score, (s.lm_score[:, :, None] + self.lm_weight * gain).view(B, K * C)], dim=1)
            cand_node = torch.cat([s.lm_node, nxt.reshape(B, K * C)], dim=1)
            rank = rank + cand_lm
        order = rank.sort(dim=1, descending=True, stable=True).indices[:, :K]  # (B, K)
        is_ext = order >= K
        ar = torch.arange(K, device=lp.device)
        src = torch.where(is_ext, (order - K) // C, order)
        label = torch.where(is_ext, ext_label.gather(1, (order - K).clamp(min=0)), BLANK)
        keys = torch.where(is_ext, ext_keys.gather(1, (order - K).clamp(min=0)), s.keys.gather(1, src))
        act = active[:, None]
        src, label = torch.where(act, src, ar), torch.where(act, label, BLANK)
        rows = (torch.arange(B, device=lp.device)[:, None] * K + src).view(-1)  # (B*K,) old rows
        tokens = reserve(s.tokens, int(s.lengths.max()) + 1)[rows]
        n = s.lengths[rows]
        tokens[torch.arange(B * K, device=lp.device), n] = label.view(-1)  # a slot that stays writes scratch
        return PrefixBeamState(
            torch.where(act, cand_b.gather(1, order), s.blank),
            torch.where(act, cand_n.gather(1, order), s.label),
            torch.where(act, keys, s.keys),
            torch.where(label != BLANK, label, s.last.gather(1, src)),
            tokens,
            n + (label != BLANK).view(-1).long(),
            *(
                (torch.where(act, cand_node.gather(1, order), s.lm_node), torch.where(act, cand_lm.gather(1, order), s.lm_score))
                if s.lm_node is not None and self.lm is not None else (None, None)
            ),
        )

    def results(self, state: PrefixBeamState) -> list[DecodeResult]:
        """With an LM, ``score`` = log P(prefix) + ``lm_score`` (its weighted LM score, the last
        word closed), and ``rnnt_score`` holds log P(prefix)."""
        B, K = state.blank.shape
        lm = torch.zeros_like(state.blank)
        if self.lm is not None and state.lm_node is not None and state.lm_score is not None:
            lm = state.lm_score + self.lm_weight * self.lm.final[state.lm_node]
        totals, order = (state.scores + lm).sort(dim=1, descending=True, stable=True)
        acoustic, lm = state.scores.tolist(), lm.tolist()
        lengths = state.lengths.view(B, K).tolist()
        out = []
        for b, (row, ks) in enumerate(zip(totals.tolist(), order.tolist())):
            out.append(DecodeResult([
                Hypothesis(state.tokens[b * K + k, : lengths[b][k]].tolist(), s, acoustic[b][k],
                           lm_score=lm[b][k] if self.lm is not None else None)
                for s, k in zip(row, ks) if s > NEG_INF
            ]))  # fmt: skip
        return out
