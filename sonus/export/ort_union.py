"""The union second pass for :class:`~sonus.export.ort_decoder.OnnxRecognizer`, as
:mod:`sonus.asr.decoding.las` computes it: LAS beam search on the ``las_listen``/``las_step``
graphs, its n-best joined with the RNN-T n-best, every hypothesis of either scored exactly by
the transducer (all alignments: the lattice's forward recursion in numpy over the joiner's
(T, U+1) grid), by LAS (teacher forced) and by the lexicon LM, then ranked by
(1 - w) * rnnt + w * las + length_bonus * tokens + lm (``decoding.las.combine``).

One utterance at a time (a stream ends alone), K = the LAS beam. The beam search's arithmetic
is fp32 as PyTorch's, so the two pick the same hypotheses.
"""

from __future__ import annotations

import numpy as np

from sonus.export.ort_lexicon import ROOT, LexiconTables
from sonus.export.ort_search import LASRescorer, OnnxHypothesis, Transducer, top_indices


def transducer_logprob(tr: Transducer, enc: np.ndarray, tokens: list[int]) -> float:
    """Exact log P(tokens | enc) over all alignments (``FirstPass.score``), enc (T, H).

    The predictor runs over blank + tokens, the joiner once on every (t, u) pair, and the
    forward recursion ``alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] +
    label[t, u-1])`` runs frame by frame, each frame's u recursion a log-cumulative-sum (fp64).
    No frames: 0, as the PyTorch loss gives a sequence it cannot align."""
    T, U = enc.shape[0], len(tokens)
    if T == 0:
        return 0.0
    out, state = tr.start(1)
    preds = [out]
    for y in tokens:
        out, state = tr.predict(np.array([y], dtype=np.int64), state)
        preds.append(out)
    pred = np.concatenate(preds)  # (U+1, Hp)
    lp = tr.log_probs(np.repeat(enc, U + 1, axis=0), np.tile(pred, (T, 1))).reshape(T, U + 1, -1).astype(np.float64)
    blank = lp[:, :, tr.blank]  # (T, U+1)
    label = lp[:, np.arange(U), np.asarray(tokens, dtype=np.int64)]  # (T, U): the arc u -> u+1
    c = np.concatenate([np.zeros((T, 1)), np.cumsum(label, axis=1)], axis=1)  # c[t, u] = sum of label[t, :u]
    alpha = np.full(U + 1, -np.inf)
    alpha[0] = 0.0  # arrivals at frame 0
    for t in range(T):
        if t:
            alpha = alpha + blank[t - 1]
        alpha = c[t] + np.logaddexp.accumulate(alpha - c[t])
    return float(alpha[U] + blank[T - 1, U])


class LASBeamSearch:
    """:class:`sonus.asr.decoding.las.LASBeamSearch` for one utterance on the exported graphs.

    The decoder starts from <eos> with zero state and uniform attention; each step extends
    every open beam by its 2K best continuations (fp32 sums, with ``lm_weight`` times the
    lexicon's score of each label, <eos> closing the last word); <eos> finishes a hypothesis,
    blank and <unk> are never emitted; the search stops when K hypotheses are finished and
    the best of them beats every open beam, or after ``max_len_ratio`` labels a frame."""

    def __init__(self, rescorer: LASRescorer, beam_size: int, max_len_ratio: float, lm: LexiconTables | None, lm_weight: float) -> None:
        self.r, self.K, self.max_len_ratio = rescorer, beam_size, max_len_ratio
        self.lm, self.lm_weight = (lm, float(lm_weight)) if lm is not None and lm_weight else (None, 0.0)

    def __call__(self, enc: np.ndarray, listened: tuple[np.ndarray, np.ndarray] | None = None) -> list[OnnxHypothesis]:
        """The n-best of one utterance, encoder frames enc (T, H) (``listened``: the listener's
        output on them, if already computed)."""
        K, eos, T = self.K, self.r.eos, enc.shape[0]
        feed = self.r.start(*(listened or self.r.listen_to(enc)), K)
        scores = np.full(K, -np.inf, np.float32)
        scores[0] = 0.0
        lm_part = np.zeros(K, np.float32)  # the LM's share of ``scores``
        nodes = np.full(K, ROOT, dtype=np.int64)
        seqs: list[list[int]] = [[] for _ in range(K)]
        finished: list[OnnxHypothesis] = []
        tokens = np.full(K, eos, dtype=np.int64)
        for _ in range(int(T * self.max_len_ratio) + 1):
            lp = self.r.run(feed, tokens)  # (K, V)
            V = lp.shape[1]
            cand = scores[:, None] + lp
            if self.lm is not None:
                lm_score, lm_next = self.lm.step(nodes, blank=0)
                lm_score[:, eos] = self.lm.final[nodes]  # <eos> closes the last word
                lm_lp = np.float32(self.lm_weight) * lm_score
                cand = cand + lm_lp
                cand_lm = (lm_part[:, None] + lm_lp).reshape(-1)
            flat = cand.reshape(-1)
            top = top_indices(flat, 2 * K)
            src, nxt = np.zeros(K, dtype=np.int64), np.full(K, eos, dtype=np.int64)
            new_scores, new_lm = np.full(K, -np.inf, np.float32), np.zeros(K, np.float32)
            new_seqs: list[list[int]] = [[] for _ in range(K)]
            slot = 0
            for i in top.tolist():
                s = float(flat[i])
                if s == float("-inf") or slot == K:
                    break
                k, v = divmod(i, V)
                m = float(cand_lm[i]) if self.lm is not None else 0.0
                if v == eos:
                    if len(finished) < K:
                        finished.append(OnnxHypothesis(seqs[k], s, 0.0, s - m, lm_score=m if self.lm is not None else None))
                    continue
                if v < 3:  # blank and <unk> are never emitted
                    continue
                src[slot], nxt[slot], new_scores[slot], new_lm[slot] = k, v, flat[i], cand_lm[i] if self.lm is not None else 0.0
                new_seqs[slot] = seqs[k] + [v]
                slot += 1
            done = len(finished) >= K and max(h.score for h in finished) > float(new_scores.max())
            scores, lm_part, seqs, tokens = new_scores, new_lm, new_seqs, nxt
            for name in ("h_in", "c_in", "context_in", "prev_in"):  # the surviving beams' decoder state
                feed[name] = feed[name][src]
            if self.lm is not None:
                nodes = lm_next[src, tokens]
            if done:
                break
        if not finished:
            s, m = float(scores[0]), float(lm_part[0])
            finished = [OnnxHypothesis(seqs[0], s, 0.0, s - m, lm_score=m if self.lm is not None else None)]
        return sorted(finished, key=lambda h: -h.score)[:K]


def lm_logprob(lm: LexiconTables, tokens: list[int], blank: int) -> float:
    """The lexicon's log-probability of a label sequence: its steps, then closing the last word
    (``Lexicon.score_text`` of the sequence's text)."""
    node, total = np.array([ROOT], dtype=np.int64), 0.0
    for y in tokens:
        score, nxt = lm.step(node, blank)
        total += float(score[0, y])
        node = nxt[:, y]
    return total + float(lm.final[node[0]])


def union_second_pass(
    tr: Transducer, rescorer: LASRescorer, beam: LASBeamSearch, enc: np.ndarray, first: list[OnnxHypothesis],
    las_weight: float, length_bonus: float,
) -> list[OnnxHypothesis]:  # fmt: skip
    """The first pass' n-best and LAS beam search's, joined (first-pass order first, then LAS's
    new ones), each scored by the transducer and the LM, then by LAS and ranked as
    :meth:`LASRescorer.rescore` ranks an n-best (``decoding.las``: union, score, combine)."""
    listened = rescorer.listen_to(enc)  # one listener run for the beam search and the scores
    seen: dict[tuple[int, ...], list[int]] = {}
    for h in first + beam(enc, listened):
        seen.setdefault(tuple(h.tokens), list(h.tokens))
    hyps = []
    for tokens in seen.values():
        lm = beam.lm_weight * lm_logprob(beam.lm, tokens, tr.blank) if beam.lm is not None else None
        hyps.append(OnnxHypothesis(tokens, 0.0, transducer_logprob(tr, enc, tokens), lm_score=lm))
    return rescorer.rescore(enc, hyps, las_weight, length_bonus, listened)
