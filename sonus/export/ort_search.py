"""First-pass searches and LAS rescoring for :class:`~sonus.export.ort_decoder.OnnxRecognizer`,
with onnxruntime and numpy only (no torch).

Each mirrors its PyTorch counterpart in ``sonus.asr.decoding`` for one stream, with the same
three steps, so a stream continues one state chunk by chunk::

    state = search.start(transducer)
    state = search.run(transducer, enc, state)   # once a chunk: encoder frames enc (m, H)
    nbest = search.nbest(state)                  # best first; mid-stream, the partial result

- :class:`GreedySearch` (``decoding.greedy``): label-looping over a chunk; one joiner call scores
  every remaining frame against the current predictor output, the stream jumps to the first
  non-blank frame, emits, advances the predictor; at most ``max_symbols`` labels a frame.
- :class:`ModifiedBeamSearch` (``decoding.beam``; icefall's ``modified_beam_search``): K
  hypotheses, at most one label a frame. A frame scores every hypothesis' extensions, keeps the
  2K best candidates, merges those with the same label sequence by log-sum-exp (ranked by their
  best candidate) and keeps the K best distinct ones. With a lexicon LM
  (:class:`~sonus.export.ort_lexicon.LexiconTables`, an export's ``lexicon.npz``) and ``lm_weight`` > 0, every label's score includes ``lm_weight``
  times the LM's (shallow fusion, as ``decoding.lexicon``), and the n-best closes each
  hypothesis' last word.
- :class:`BeamSearch` (``decoding.beam``'s time-synchronous search): up to ``max_symbols``
  labels a frame in rounds, a hypothesis that took blank carried to the next round; for
  models that emit several labels a frame. The LM fuses into it as into modified beam search.
- :class:`LASRescorer` (``decoding.las``): the teacher-forced LAS log P(tokens, <eos>) of every
  hypothesis, then score = (1 - w) * rnnt + w * las + length_bonus * tokens (+ the fused LM's
  score), re-ranked.

Shapes: m encoder frames of a chunk, H encoder width, N rows (hypotheses), L predictor layers,
Hp predictor width, V vocabulary, T encoder frames of an utterance, D listener width, A attention
width, Hd LAS decoder width.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, get_args

import numpy as np
import onnxruntime as ort

from sonus.export.ort_lexicon import ROOT, LexiconTables

Strategy = Literal["greedy", "modified_beam", "beam"]
S = TypeVar("S")


@dataclass(frozen=True)
class SearchOptions:
    """How :class:`~sonus.export.ort_decoder.OnnxRecognizer` decodes, as
    :class:`~sonus.asr.decoding.DecodingOptions` names it: ``strategy`` the first pass (greedy:
    up to ``max_symbols_per_frame`` labels a frame; modified_beam: beam ``beam_size``, at most
    one; beam: beam ``beam_size``, up to ``max_symbols_per_frame``); with LAS, the final n-best is
    rescored with w = ``las_weight`` and ``length_bonus``. ``lm_weight`` > 0 fuses the export's
    lexicon LM into the beam searches (``decoding.lm_weight``)."""

    strategy: Strategy = "greedy"
    beam_size: int = 4
    max_symbols_per_frame: int = 10
    las_weight: float = 0.5
    length_bonus: float = 0.0
    lm_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in get_args(Strategy):
            raise ValueError(f"strategy must be one of {get_args(Strategy)}, got {self.strategy!r}")
        if self.beam_size < 1 or self.max_symbols_per_frame < 1:
            raise ValueError(
                f"beam_size and max_symbols_per_frame must be >= 1, got {self.beam_size}, {self.max_symbols_per_frame}"
            )
        if not 0.0 <= self.las_weight <= 1.0:
            raise ValueError(f"las_weight must be in [0, 1], got {self.las_weight}")
        if self.lm_weight < 0.0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")
        if self.lm_weight and self.strategy == "greedy":
            raise ValueError(f"lm_weight > 0 needs strategy='modified_beam' or 'beam', got strategy={self.strategy!r}")


@dataclass
class OnnxHypothesis:
    """One entry of an n-best list. ``score`` ranks it: the RNN-T score, or after LAS rescoring
    (1 - w) * rnnt_score + w * las_score + length_bonus * len(tokens), plus ``lm_score`` with an LM."""

    tokens: list[int]
    score: float
    rnnt_score: float  # RNN-T log-probability of the search path (greedy) or of the label sequence (beam)
    las_score: float | None = None  # LAS teacher-forced log P(tokens, <eos>); None before rescoring
    text: str = ""
    lm_score: float | None = None  # the weighted lexicon LM score in ``score``; None without an LM


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class Transducer:
    """The predictor and joiner graphs, batched over N rows.

    ``state_names``/``state_shapes``: the predictor's state inputs (h_in[, c_in]) and their shapes
    from ``metadata.json`` (the symbolic dim is the rows)."""

    def __init__(
        self, predictor: ort.InferenceSession, joiner: ort.InferenceSession, state_shapes: dict[str, list[int | str]], blank: int
    ) -> None:
        self.predictor, self.joiner, self.blank = predictor, joiner, blank
        self.state_names, self.state_shapes = list(state_shapes), state_shapes

    def start(self, rows: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Output (N, Hp) and state of N rows that have seen only blank (start of sequence)."""
        zeros = [np.zeros([rows if isinstance(d, str) else d for d in self.state_shapes[k]], np.float32) for k in self.state_names]
        return self.predict(np.full(rows, self.blank, dtype=np.int64), zeros)

    def predict(self, tokens: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """tokens (N,), state (L, N, Hp) each -> output (N, Hp), new state."""
        out, *new = self.predictor.run(None, {"tokens": tokens.astype(np.int64)} | dict(zip(self.state_names, state)))
        return out, new

    def log_probs(self, enc: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """enc (m, H), pred (N, Hp), m or N being 1 -> log-probabilities (max(m, N), V) in fp32."""
        return log_softmax(self.joiner.run(None, {"enc": enc, "pred": pred})[0])


class OrtSearch(ABC, Generic[S]):
    """A first-pass strategy: ``start`` a state, ``run`` it over chunks of frames, read ``nbest``."""

    @abstractmethod
    def start(self, tr: Transducer) -> S:
        """The state before the first frame: the predictor primed with blank."""

    @abstractmethod
    def run(self, tr: Transducer, enc: np.ndarray, state: S) -> S:
        """Continue ``state`` over encoder frames enc (m, H); ``state`` may be updated in place."""

    @abstractmethod
    def nbest(self, state: S) -> list[OnnxHypothesis]:
        """The hypotheses so far, best first."""


@dataclass
class GreedyState:
    pred: np.ndarray  # (1, Hp) predictor output after the last label
    pred_state: list[np.ndarray]  # h[, c]: (L, 1, Hp)
    tokens: list[int] = field(default_factory=list)
    score: float = 0.0  # log-probability of the path taken


class GreedySearch(OrtSearch[GreedyState]):
    """``sonus.asr.decoding.GreedySearch`` for one stream: a frame that used up its ``max_symbols``
    labels ends with blank, whose log-probability is charged."""

    def __init__(self, max_symbols: int) -> None:
        self.max_symbols = max_symbols

    def start(self, tr: Transducer) -> GreedyState:
        return GreedyState(*tr.start(1))

    def run(self, tr: Transducer, enc: np.ndarray, state: GreedyState) -> GreedyState:
        m, t, emitted = enc.shape[0], 0, 0
        while t < m:
            lp = tr.log_probs(enc[t:], state.pred)  # (m - t, V)
            best = lp.argmax(-1)
            if emitted >= self.max_symbols:  # frame t used up its labels: it ends with blank
                best[0] = tr.blank
            hits = np.flatnonzero(best != tr.blank)
            if hits.size == 0:
                state.score += float(lp[:, tr.blank].sum())
                break
            i = int(hits[0])
            label = int(best[i])
            state.score += float(lp[:i, tr.blank].sum() + lp[i, label])
            state.tokens.append(label)
            emitted = emitted + 1 if i == 0 else 1
            t += i
            state.pred, state.pred_state = tr.predict(np.array([label]), state.pred_state)
        return state

    def nbest(self, state: GreedyState) -> list[OnnxHypothesis]:
        return [OnnxHypothesis(list(state.tokens), state.score, state.score)]


@dataclass
class BeamState:
    """N <= K distinct hypotheses; row n of the predictor arrays belongs to ``tokens[n]``."""

    tokens: list[tuple[int, ...]]
    scores: np.ndarray  # (N,) fp32 log-probabilities of the label sequences (with the weighted LM score)
    pred: np.ndarray  # (N, Hp) predictor output after each hypothesis' last label
    pred_state: list[np.ndarray]  # (L, N, Hp) each
    lm_node: np.ndarray | None = None  # (N,) lexicon states; None without an LM
    lm_score: np.ndarray | None = None  # (N,) fp32 weighted LM scores included in ``scores``


class ModifiedBeamSearch(OrtSearch[BeamState]):
    """``sonus.asr.decoding.ModifiedBeamSearch`` for one stream: beam K, at most one label a frame.

    The beam holds only live hypotheses (PyTorch's batched one pads it with -inf slots, which
    never survive a frame), so the first frames score fewer rows. ``lm``: a lexicon LM fused with
    ``lm_weight`` (shallow fusion), as in PyTorch's."""

    def __init__(self, beam_size: int, lm: LexiconTables | None = None, lm_weight: float = 0.0) -> None:
        self.K = beam_size
        self.lm, self.lm_weight = (lm, np.float32(lm_weight)) if lm is not None and lm_weight else (None, np.float32(0.0))

    def start(self, tr: Transducer) -> BeamState:
        pred, pred_state = tr.start(1)
        if self.lm is None:
            return BeamState([()], np.zeros(1, np.float32), pred, pred_state)
        return BeamState([()], np.zeros(1, np.float32), pred, pred_state, np.full(1, ROOT, np.int64), np.zeros(1, np.float32))

    def run(self, tr: Transducer, enc: np.ndarray, state: BeamState) -> BeamState:
        for t in range(enc.shape[0]):
            state = self.frame(tr, enc[t : t + 1], state)
        return state

    def frame(self, tr: Transducer, enc_t: np.ndarray, state: BeamState) -> BeamState:
        """One encoder frame enc_t (1, H)."""
        lp, lm = self._log_probs(tr, enc_t, state)  # (N, V)
        V = lp.shape[1]
        cand = (state.scores[:, None] + lp).reshape(-1)  # (N * V,) fp32, as PyTorch adds them
        idx = top_indices(cand, 2 * self.K)
        return self._select(tr, state, cand[idx], idx // V, idx % V, None, lm)[0]

    def _log_probs(self, tr: Transducer, enc_t: np.ndarray, state: BeamState) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """(N, V) label scores, the weighted LM's included, and the LM step (scores, next states) taken."""
        lp = tr.log_probs(enc_t, state.pred)
        if self.lm is None:
            return lp, None
        assert state.lm_node is not None, "a state of this search's start"
        lm_step, lm_next = self.lm.step(state.lm_node, tr.blank)
        lm_step *= self.lm_weight
        return lp + lm_step, (lm_step, lm_next)

    def _select(
        self, tr: Transducer, state: BeamState, cand: np.ndarray, src: np.ndarray, labels: np.ndarray, done: np.ndarray | None,
        lm: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[BeamState, np.ndarray]:
        """The next beam from candidates (best first, -inf dropped): hypothesis ``src`` extended with
        ``labels`` (blank: none) -> the state and which of its hypotheses are ``done`` (ended the frame).

        Candidates with the same label sequence (and the same ``done``, when given) are one
        hypothesis (Graves 2012): its slot is that of its best candidate, its score the
        log-sum-exp of its candidates (in fp64), as PyTorch's ``select_hypotheses``."""
        groups: dict[tuple[tuple[int, ...], bool], list[int]] = {}
        for i, (k, label) in enumerate(zip(src.tolist(), labels.tolist())):
            if cand[i] == -np.inf:
                continue
            seq = state.tokens[k] if label == tr.blank else state.tokens[k] + (label,)
            groups.setdefault((seq, bool(done[i]) if done is not None else False), []).append(i)
        kept = list(groups.items())[: self.K]  # dicts keep the order of each hypothesis' best candidate
        scores = np.array([np.logaddexp.reduce(cand[g].astype(np.float64)) for _, g in kept]).astype(np.float32)
        best = np.array([g[0] for _, g in kept])
        src, labels = src[best], labels[best]
        pred, pred_state = state.pred[src], [s[:, src] for s in state.pred_state]  # copies
        emit = np.flatnonzero(labels != tr.blank)
        if emit.size:
            out, new = tr.predict(labels[emit], [s[:, emit] for s in pred_state])
            pred[emit] = out
            for s, n in zip(pred_state, new):
                s[:, emit] = n
        lm_node = lm_score = None
        if lm is not None:
            assert state.lm_score is not None
            lm_node, lm_score = lm[1][src, labels], state.lm_score[src] + lm[0][src, labels]
        tokens = [seq for (seq, _), _ in kept]
        return BeamState(tokens, scores, pred, pred_state, lm_node, lm_score), np.array([d for (_, d), _ in kept], dtype=bool)

    def nbest(self, state: BeamState) -> list[OnnxHypothesis]:
        """Best first. With the LM each hypothesis' last word is closed (as at the end of the
        utterance): ``lm_score`` is its weighted LM score, ``rnnt_score`` the rest."""
        if self.lm is None or state.lm_node is None or state.lm_score is None:
            order = np.argsort(-state.scores, kind="stable")  # PyTorch's stable descending sort
            return [OnnxHypothesis(list(state.tokens[k]), float(state.scores[k]), float(state.scores[k])) for k in order]
        lm_total = state.lm_score + self.lm_weight * self.lm.final[state.lm_node]
        total = state.scores - state.lm_score + lm_total
        order = np.argsort(-total, kind="stable")
        return [
            OnnxHypothesis(list(state.tokens[k]), float(total[k]), float(total[k]) - float(lm_total[k]), lm_score=float(lm_total[k]))
            for k in order
        ]


class BeamSearch(ModifiedBeamSearch):
    """``sonus.asr.decoding.BeamSearch`` for one stream: the time-synchronous beam search, up to
    ``max_symbols`` labels a frame (Saon et al. 2020).

    A frame runs ``max_symbols + 1`` rounds: every open hypothesis extends by a label or by
    blank, which ends its frame ("done"); a done one is carried to the next round unchanged; the
    last round allows blank only. Each round keeps the K best distinct hypotheses (a done and an
    open one with the same labels are distinct). Models that emit a word's labels as a burst
    in one frame (the demo's characters at 80 ms frames) need it: modified beam search truncates them."""

    def __init__(self, beam_size: int, max_symbols: int, lm: LexiconTables | None = None, lm_weight: float = 0.0) -> None:
        super().__init__(beam_size, lm, lm_weight)
        self.max_symbols = max_symbols

    def frame(self, tr: Transducer, enc_t: np.ndarray, state: BeamState) -> BeamState:
        closed = np.zeros(len(state.tokens), dtype=bool)
        for rnd in range(self.max_symbols + 1):
            if closed.all():
                break
            lp, lm = self._log_probs(tr, enc_t, state)  # (N, V)
            N, V = lp.shape
            ext = state.scores[:, None] + lp  # open ones extend ...
            ext[closed] = -np.inf
            if rnd == self.max_symbols:  # ... with blank only in the last round
                ext[:, np.arange(V) != tr.blank] = -np.inf
            carry = np.where(closed, state.scores, np.float32(-np.inf))  # done ones stay as they are
            everything = np.concatenate([ext.reshape(-1), carry])
            idx = top_indices(everything, min(2 * self.K, everything.size))
            carried = idx >= N * V
            src = np.where(carried, idx - N * V, idx // V)
            labels = np.where(carried, tr.blank, idx % V)
            state, closed = self._select(tr, state, everything[idx], src, labels, labels == tr.blank, lm)
        return state


def top_indices(x: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest values of x (1-D), largest first."""
    if n < x.size:
        part = np.argpartition(-x, n - 1)[:n]
        return part[np.argsort(-x[part], kind="stable")]
    return np.argsort(-x, kind="stable")


# (options, the export's lexicon or None) -> the search
SEARCHES: dict[str, Callable[[SearchOptions, LexiconTables | None], OrtSearch[Any]]] = {
    "greedy": lambda o, lm: GreedySearch(o.max_symbols_per_frame),
    "modified_beam": lambda o, lm: ModifiedBeamSearch(o.beam_size, lm, o.lm_weight),
    "beam": lambda o, lm: BeamSearch(o.beam_size, o.max_symbols_per_frame, lm, o.lm_weight),
}


class LASRescorer:
    """The second pass on the ``las_listen``/``las_step`` graphs (Sainath et al. 2019,
    "Two-Pass End-to-End Speech Recognition"), as ``sonus.asr.decoding.las`` computes it."""

    def __init__(self, listen: ort.InferenceSession, step: ort.InferenceSession, dec_hidden: int, eos: int) -> None:
        self.listen, self.step, self.dec_hidden, self.eos = listen, step, dec_hidden, eos
        # a decoder without input feeding, or with dot attention, ignores context_in or prev_in,
        # and the exporter drops an unused input from the graph
        self.step_inputs = {i.name for i in step.get_inputs()}

    def listen_to(self, enc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One utterance's encoder frames enc (T, H) -> the listener's values (1, T, D), keys (1, T, A)."""
        return tuple(self.listen.run(None, {"enc": enc[None].astype(np.float32)}))  # type: ignore[return-value]

    def start(self, values: np.ndarray, keys: np.ndarray, N: int) -> dict[str, np.ndarray]:
        """The decoder's inputs for N rows on one utterance's listener output: zero state and
        context, uniform attention (``LAS.initial_state``)."""
        T = values.shape[1]
        return {
            "h_in": np.zeros((N, self.dec_hidden), np.float32), "c_in": np.zeros((N, self.dec_hidden), np.float32),
            "context_in": np.zeros((N, values.shape[2]), np.float32), "prev_in": np.full((N, T), 1.0 / T, np.float32),
            "values": np.repeat(values, N, 0), "keys": np.repeat(keys, N, 0), "mask": np.ones((N, T), dtype=bool),
        }  # fmt: skip

    def run(self, feed: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
        """One decoder step on tokens (N,) -> log-probabilities (N, V); ``feed``'s state moves on."""
        lp, feed["h_in"], feed["c_in"], feed["context_in"], feed["prev_in"] = self.step.run(
            None, {k: v for k, v in (feed | {"tokens": tokens}).items() if k in self.step_inputs}
        )
        return lp

    def scores(self, enc: np.ndarray, hyps: list[list[int]], listened: tuple[np.ndarray, np.ndarray] | None = None) -> list[float]:
        """LAS teacher-forced log P(tokens, <eos>) of each hypothesis (N,), unnormalised (a sum over
        tokens and <eos>), given one utterance's encoder frames enc (T, H): the listener once
        (or its output ``listened``), then the attention decoder over the N together."""
        N = len(hyps)
        feed = self.start(*(listened or self.listen_to(enc)), N)
        U = max(1, max(len(h) for h in hyps))
        inputs = np.zeros((N, U + 1), dtype=np.int64)
        inputs[:, 0] = self.eos  # <eos> starts, as in LAS.forward
        targets = np.full((N, U + 1), -1, dtype=np.int64)  # each hypothesis, then <eos>, then -1
        for k, h in enumerate(hyps):
            inputs[k, 1 : 1 + len(h)] = h
            targets[k, : len(h)] = h
            targets[k, len(h)] = self.eos
        total, rows = np.zeros(N, dtype=np.float64), np.arange(N)
        for u in range(U + 1):
            lp = self.run(feed, inputs[:, u])
            valid = targets[:, u] >= 0
            total[valid] += lp[rows[valid], targets[valid, u]]
        return total.tolist()

    def rescore(
        self, enc: np.ndarray, nbest: list[OnnxHypothesis], las_weight: float, length_bonus: float = 0.0,
        listened: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[OnnxHypothesis]:  # fmt: skip
        """The n-best of one utterance (encoder frames enc (T, H)) with LAS scores, re-ranked by
        (1 - w) * rnnt + w * las + length_bonus * tokens (+ the fused LM's score; ``decoding.las.combine``)."""
        if not nbest:
            return []
        out = []
        for h, las in zip(nbest, self.scores(enc, [h.tokens for h in nbest], listened)):
            score = (1.0 - las_weight) * h.rnnt_score + las_weight * las + length_bonus * len(h.tokens) + (h.lm_score or 0.0)
            out.append(OnnxHypothesis(h.tokens, score, h.rnnt_score, las, h.text, h.lm_score))
        out.sort(key=lambda h: -h.score)
        return out
