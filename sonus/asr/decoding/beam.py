"""Batched RNN-T beam searches: modified beam search (at most one label per frame) and the
standard time-synchronous beam search (several labels per frame).

Both keep K hypotheses per utterance as tensors (:class:`BeamState`) and pick the next beam
the same way, for all utterances at once (:func:`select_hypotheses`): the best 2K candidate
extensions by score, duplicates merged by log-sum-exp, the K best distinct ones kept. Two
candidates are the same hypothesis when their label sequences are (Graves 2012: the
probability of a label sequence sums over its alignments); sequences are compared by a
rolling hash kept per hypothesis, so no step looks at a Python list.

Shapes: B batch, K beam, N = 2K candidates, V vocabulary, J joiner width, L label capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sonus.asr.decoding.lexicon import ROOT, Lexicon, fused
from sonus.asr.decoding.search import (
    FrameSynchronousSearch,
    feed_labels,
    prime_predictor,
    reserve,
    select_rows,
)
from sonus.asr.decoding.types import DecodeResult, Hypothesis
from sonus.asr.joiner import Joiner
from sonus.asr.predictor import Predictor, PredState
from sonus.text.tokenizer import BLANK

# Two polynomial hashes modulo primes below 2**31, packed as hi << 31 | lo: products stay far
# below 2**63, and two different sequences collide with probability about L / 2**62.
_MOD = (2_147_483_647, 2_147_483_629)
_BASE = (1_000_003, 999_983)
_LO = (1 << 31) - 1


def extend_keys(keys: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hash of each sequence after appending ``labels`` (blank appends nothing); any shape."""
    hi = (keys >> 31) * _BASE[0] + labels + 1
    lo = (keys & _LO) * _BASE[1] + labels + 1
    return torch.where(labels == BLANK, keys, (hi % _MOD[0]) << 31 | (lo % _MOD[1]))


@dataclass
class Selection:
    """The next beam: slot (b, k) extends old slot ``src[b, k]`` with ``label[b, k]`` (blank: none)."""

    scores: torch.Tensor  # (B, K), -inf for an empty slot
    src: torch.Tensor  # (B, K)
    label: torch.Tensor  # (B, K)
    keys: torch.Tensor  # (B, K) hash of the new label sequence
    done: torch.Tensor  # (B, K) the hypothesis ended its frame (empty slots count as done)


def select_hypotheses(
    cand: torch.Tensor, src: torch.Tensor, label: torch.Tensor, keys: torch.Tensor, K: int, done: torch.Tensor | None = None
) -> Selection:
    """The K best distinct hypotheses among N candidates per utterance.

    cand (B, N) scores sorted best first (-inf: no candidate), src/label/keys (B, N) as in
    :class:`Selection`; candidates are the same hypothesis when their keys (and ``done``, when
    given) are equal. Slots are filled in order of each hypothesis' best candidate, and a
    hypothesis scores the log-sum-exp of its candidates.
    """
    B, N = cand.shape
    finite = cand > float("-inf")
    same = (keys[:, :, None] == keys[:, None, :]) & finite[:, :, None] & finite[:, None, :]  # (B, N, N)
    if done is not None:
        same &= done[:, :, None] == done[:, None, :]
    earlier = torch.ones(N, N, dtype=torch.bool, device=cand.device).tril(-1)  # [i, j]: j before i
    first = finite & ~(same & earlier).any(-1)  # (B, N): the best candidate of its hypothesis
    merged = torch.where(same, cand.double()[:, None, :], float("-inf")).logsumexp(-1).float()  # (B, N)
    rank = first.long().cumsum(1) - 1
    take = first & (rank < K)
    slot = torch.where(take, rank, K)  # column K collects what is not taken

    def put(values: torch.Tensor, fill: float | bool) -> torch.Tensor:
        return values.new_full((B, K + 1), fill).scatter_(1, slot, values)[:, :K]

    no_done = torch.zeros_like(take)
    return Selection(
        put(torch.where(take, merged, float("-inf")), float("-inf")), put(src, 0), put(label, BLANK), put(keys, 0),
        put(done if done is not None else no_done, True),
    )  # fmt: skip


@dataclass
class BeamState:
    """K hypotheses for each of B utterances; row b*K + k of the predictor batch is slot (b, k)."""

    scores: torch.Tensor  # (B, K) log-probabilities, -inf for an empty slot
    keys: torch.Tensor  # (B, K) hash of each slot's label sequence
    tokens: torch.Tensor  # (B*K, L) labels; a row's first lengths are its sequence, the rest scratch
    lengths: torch.Tensor  # (B*K,)
    pred_state: PredState  # each (layers, B*K, H)
    pred_p: torch.Tensor  # (B*K, J) projected predictor output after each slot's last label
    frames: torch.Tensor | None = None  # (B*K, L) encoder frame at which each label was emitted (None: not tracked)
    t: torch.Tensor | None = None  # (B,) encoder frames each utterance has finished
    lm_node: torch.Tensor | None = None  # (B, K) each slot's lexicon state (shallow fusion; None: no LM)
    lm_score: torch.Tensor | None = None  # (B, K) the weighted LM score included in ``scores``

    @classmethod
    def start(cls, predictor: Predictor, joiner: Joiner, B: int, K: int, device: torch.device) -> BeamState:
        pred_state, pred_p = prime_predictor(predictor, joiner, B * K, device)
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0
        keys = torch.zeros(B, K, dtype=torch.long, device=device)
        tokens = torch.zeros(B * K, 16, dtype=torch.long, device=device)
        n = torch.zeros(B * K, dtype=torch.long, device=device)
        return cls(scores, keys, tokens, n, pred_state, pred_p, torch.zeros_like(tokens), torch.zeros(B, dtype=torch.long, device=device))

    def log_probs(self, joiner: Joiner, enc_p_t: torch.Tensor) -> torch.Tensor:
        """enc_p_t (B, J) -> (B, K, V) log-probabilities of every slot's next symbol, in fp32."""
        B, K = self.scores.shape
        return torch.log_softmax(joiner.joint(enc_p_t[:, None, :], self.pred_p.view(B, K, -1)).float(), dim=-1)

    def reserve(self, labels: int) -> BeamState:
        """Room for ``labels`` more labels in every slot (grown as the hypotheses grow, not for
        the worst case up front: every step copies the buffer)."""
        self.tokens = reserve(self.tokens, int(self.lengths.max()) + labels + 1)
        self.frames = reserve(self._frames(), self.tokens.shape[1])
        return self

    def _frames(self) -> torch.Tensor:
        """(B*K, L) emission frames; zeros for a state built without them."""
        return self.frames if self.frames is not None else torch.zeros_like(self.tokens)

    def _t(self) -> torch.Tensor:
        """(B,) frames finished; zeros for a state built without them."""
        return self.t if self.t is not None else self.scores.new_zeros(self.scores.shape[0], dtype=torch.long)

    def next_frame(self, active: torch.Tensor) -> BeamState:
        """Count the frame just decoded for the utterances where active (B,) is True."""
        self.t = self._t() + active.long()
        return self

    def lm_step(self, lm: Lexicon | None, weight: float) -> LMStep | None:
        """Every slot's weighted LM score and next lexicon state for every label, or None without an LM."""
        if lm is None:
            return None
        B, K = self.scores.shape
        if self.lm_node is None:  # a state started without the LM
            self.lm_node = torch.full((B, K), ROOT, dtype=torch.long, device=self.scores.device)
            self.lm_score = torch.zeros_like(self.scores)
        score, nxt = lm.step(self.lm_node.view(-1))
        return LMStep(weight * score.view(B, K, -1), nxt.view(B, K, -1))

    def advance(self, predictor: Predictor, joiner: Joiner, sel: Selection, active: torch.Tensor, lm: LMStep | None = None) -> BeamState:
        """The beam ``sel`` describes; utterances where active (B,) is False keep theirs.
        ``lm``: the LM step the selection's scores include (moves the slots' lexicon states)."""
        B, K = self.scores.shape
        act = active[:, None]
        keep = torch.arange(K, device=act.device).expand(B, K)
        src = torch.where(act, sel.src, keep)
        label = torch.where(act, sel.label, BLANK).view(-1)
        rows = (torch.arange(B, device=act.device)[:, None] * K + src).view(-1)  # (B*K,) old rows
        tokens, n = self.tokens[rows], self.lengths[rows]
        tokens[torch.arange(B * K, device=act.device), n] = label  # a slot without a label writes scratch
        frames = self._frames()[rows]
        frames[torch.arange(B * K, device=act.device), n] = self._t().repeat_interleave(K)
        emit = label != BLANK
        pred_state, pred_p = feed_labels(predictor, joiner, label, emit, select_rows(self.pred_state, rows), self.pred_p[rows])
        lm_node, lm_score = self.lm_node, self.lm_score
        if lm is not None:
            assert lm_node is not None and lm_score is not None, "set by lm_step"
            V = lm.score.shape[-1]
            flat = sel.src * V + sel.label  # (B, K) into (B, K * V)
            lm_node = torch.where(act, lm.next.reshape(B, -1).gather(1, flat), lm_node)
            gained = lm.score.reshape(B, -1).gather(1, flat)
            lm_score = torch.where(act, lm_score.gather(1, sel.src) + gained, lm_score)
        return BeamState(
            torch.where(act, sel.scores, self.scores), torch.where(act, sel.keys, self.keys), tokens,
            n + emit.long(), pred_state, pred_p, frames, self._t(), lm_node, lm_score,
        )  # fmt: skip

    def results(self, lm: Lexicon | None = None, weight: float = 0.0) -> list[DecodeResult]:
        """N-best lists, best first. With the LM, each hypothesis' last word is closed (as at
        the end of the utterance), ``lm_score`` is its weighted LM score and ``rnnt_score`` the rest."""
        B, K = self.scores.shape
        lm_total = torch.zeros_like(self.scores)
        if lm is not None and self.lm_node is not None and self.lm_score is not None:
            lm_total = self.lm_score + weight * lm.final[self.lm_node]
        total = self.scores - (self.lm_score if self.lm_score is not None else 0.0) + lm_total
        scores, order = total.sort(dim=1, descending=True, stable=True)
        lengths = self.lengths.view(B, K).tolist()
        frames, lm_rows = self._frames(), lm_total.tolist()
        with_lm = lm is not None
        out = []
        for b, (row, ks) in enumerate(zip(scores.tolist(), order.tolist())):
            hyps = [(s, k, b * K + k, lengths[b][k]) for s, k in zip(row, ks) if s > float("-inf")]
            out.append(DecodeResult([
                Hypothesis(self.tokens[i, :n].tolist(), s, s - lm_rows[b][k], frames=frames[i, :n].tolist(),
                           lm_score=lm_rows[b][k] if with_lm else None)
                for s, k, i, n in hyps
            ]))  # fmt: skip
        return out


@dataclass
class LMStep:
    """One LM step for every slot: weighted scores and next lexicon states, (B, K, V) each."""

    score: torch.Tensor
    next: torch.Tensor


class _BeamSearchBase(FrameSynchronousSearch[BeamState]):
    """``lm``: a :class:`~sonus.asr.decoding.lexicon.Lexicon` fused into the search (shallow
    fusion: ``lm_weight`` times its score added to every label's log-probability)."""

    def __init__(self, beam_size: int, lm: Lexicon | None = None, lm_weight: float = 0.0) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.K = beam_size
        self.lm, self.lm_weight = fused(lm, lm_weight)

    def start(self, predictor: Predictor, joiner: Joiner, batch: int, device: torch.device) -> BeamState:
        state = BeamState.start(predictor, joiner, batch, self.K, device)
        if self.lm is not None:  # the lexicon states from the start: states of streams begun apart stack
            self.lm.to(device)
            state.lm_node = torch.full(state.scores.shape, ROOT, dtype=torch.long, device=device)
            state.lm_score = torch.zeros_like(state.scores)
        return state

    def results(self, state: BeamState) -> list[DecodeResult]:
        return state.results(self.lm, self.lm_weight)

    def _log_probs(self, state: BeamState, joiner: Joiner, enc_p_t: torch.Tensor) -> tuple[torch.Tensor, LMStep | None]:
        """(B, K, V) label scores, the LM's included, and the LM step taken."""
        lp = state.log_probs(joiner, enc_p_t)
        lm = state.lm_step(self.lm, self.lm_weight)
        return (lp if lm is None else lp + lm.score), lm


class ModifiedBeamSearch(_BeamSearchBase):
    """Beam search with at most one label per frame (icefall's modified_beam_search).

    Emitting a label also moves to the next frame, so a frame costs one joiner call.
    """

    def frame(self, predictor: Predictor, joiner: Joiner, enc_p_t: torch.Tensor, active: torch.Tensor, state: BeamState) -> BeamState:
        state = state.reserve(1)
        lp, lm = self._log_probs(state, joiner, enc_p_t)  # (B, K, V)
        B, K, V = lp.shape
        cand, idx = (state.scores[:, :, None] + lp).view(B, K * V).topk(min(2 * K, K * V), dim=-1)  # (B, N)
        src, label = idx // V, idx % V
        sel = select_hypotheses(cand, src, label, extend_keys(state.keys.gather(1, src), label), K)
        return state.advance(predictor, joiner, sel, active, lm).next_frame(active)


class BeamSearch(_BeamSearchBase):
    """Time-synchronous beam search with up to ``max_symbols`` labels per frame.

    The standard transducer topology: within frame t a hypothesis emits labels, then a
    blank that moves it to t+1 (time-synchronous decoding, Saon et al. 2020). Each frame
    runs ``max_symbols + 1`` rounds over the beam: a hypothesis that took its blank is
    "closed" and carried over unchanged, and the last round only allows blank.
    """

    def __init__(self, beam_size: int = 4, max_symbols: int = 2, lm: Lexicon | None = None, lm_weight: float = 0.0) -> None:
        super().__init__(beam_size, lm, lm_weight)
        self.max_symbols = max_symbols

    def frame(self, predictor: Predictor, joiner: Joiner, enc_p_t: torch.Tensor, active: torch.Tensor, state: BeamState) -> BeamState:
        B, K = state.scores.shape
        state = state.reserve(self.max_symbols)
        closed = torch.zeros(B, K, dtype=torch.bool, device=enc_p_t.device)
        for rnd in range(self.max_symbols + 1):
            if bool(closed[active].all()):
                break
            lp, lm = self._log_probs(state, joiner, enc_p_t)  # (B, K, V)
            V = lp.shape[-1]
            ext = (state.scores[:, :, None] + lp).masked_fill(closed[:, :, None], float("-inf"))  # open ones extend ...
            if rnd == self.max_symbols:  # ... with blank only in the last round
                ext[:, :, :BLANK] = float("-inf")
                ext[:, :, BLANK + 1 :] = float("-inf")
            carry = torch.where(closed, state.scores, float("-inf"))  # closed ones stay as they are
            cand, idx = torch.cat([ext.view(B, K * V), carry], dim=1).topk(min(2 * K, K * V + K), dim=-1)  # (B, N)
            carried = idx >= K * V
            src = torch.where(carried, idx - K * V, idx // V)
            label = torch.where(carried, BLANK, idx % V)
            keys = extend_keys(state.keys.gather(1, src), label)
            sel = select_hypotheses(cand, src, label, keys, K, done=label == BLANK)
            state = state.advance(predictor, joiner, sel, active, lm)
            closed = torch.where(active[:, None], sel.done, closed)
        return state.next_frame(active)
