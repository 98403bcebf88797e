"""Second pass: LAS rescoring of the RNN-T n-best, LAS's own beam search, or both.

Rescoring (Sainath et al. 2019): score = (1 - w) * log P_rnnt + w * log P_las, where
log P_las is the teacher-forced log-probability of the hypothesis followed by <eos>.

The union (``second_pass="union"``) rescores the RNN-T n-best and LAS beam search's n-best
together: each model proposes what it finds likely, and each hypothesis of either list is
scored by both (log P_rnnt exact, summed over all alignments; see ``FirstPass.score``). LAS
sees the whole utterance through its bidirectional listener and often finds what the
streaming first pass missed, while the RNN-T score keeps LAS from dropping or repeating
words, its typical errors (Sainath et al. 2019 compare rescoring with LAS beam search).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sonus.asr.decoding.first_pass import FirstPass
from sonus.asr.decoding.lexicon import ROOT, Lexicon, fused
from sonus.asr.decoding.types import DecodeResult, DecodingOptions, Hypothesis
from sonus.asr.las import LAS, las_sequence_logprob
from sonus.text.tokenizer import EOS


@dataclass
class PackedNBest:
    """All hypotheses of a batch's n-best lists as one padded batch: hypothesis n belongs to
    utterance ``owner[n]``, its labels are ``targets[n, :target_lengths[n]]``."""

    hyps: list[Hypothesis]
    owner: torch.Tensor  # (N,)
    targets: torch.Tensor  # (N, U), padded with blank
    target_lengths: torch.Tensor  # (N,)


def pack_nbest(results: list[DecodeResult], device: torch.device) -> PackedNBest:
    """``results[b]`` belongs to utterance b; N = all their hypotheses."""
    hyps = [h for r in results for h in r.nbest]
    owner = torch.tensor([b for b, r in enumerate(results) for _ in r.nbest], dtype=torch.long, device=device)
    U = max([1] + [len(h.tokens) for h in hyps])
    targets = torch.zeros(len(hyps), U, dtype=torch.long, device=device)
    for i, h in enumerate(hyps):
        targets[i, : len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
    tl = torch.tensor([len(h.tokens) for h in hyps], dtype=torch.long, device=device)
    return PackedNBest(hyps, owner, targets, tl)


@torch.no_grad()
def las_score_nbest(las: LAS, enc: torch.Tensor, lengths: torch.Tensor, results: list[DecodeResult]) -> None:
    """Fill ``las_score`` of every hypothesis, all n-best lists in one batch.

    enc (B, T, H), lengths (B,); ``results[b]`` belongs to utterance b. The listener runs
    once per utterance, not once per hypothesis (it is most of LAS's cost); its output is
    then repeated for the N hypotheses of all n-best lists, which are teacher-forced together.
    """
    p = pack_nbest(results, enc.device)
    if not p.hyps:
        return
    values, keys, mask = (x[p.owner] for x in las.listen(enc, lengths))  # (N, T, D), (N, T, A), (N, T)
    lp = las_sequence_logprob(las.teacher_force(values, keys, mask, p.targets), p.targets, p.target_lengths).tolist()
    for h, s in zip(p.hyps, lp):
        h.las_score = s


def first_pass_score_nbest(first: FirstPass, enc: torch.Tensor, lengths: torch.Tensor, results: list[DecodeResult]) -> None:
    """Set ``rnnt_score`` of every hypothesis to the first pass' exact log P(y | x)."""
    p = pack_nbest(results, enc.device)
    if not p.hyps:
        return
    for h, s in zip(p.hyps, first.score(enc[p.owner], lengths[p.owner], p.targets, p.target_lengths).tolist()):
        h.rnnt_score = s


def union_nbest(a: list[DecodeResult], b: list[DecodeResult]) -> list[DecodeResult]:
    """Per utterance, the hypotheses of ``a`` then those of ``b`` not in ``a`` (same labels);
    copies with scores unset, for the caller to score."""
    out = []
    for ra, rb in zip(a, b, strict=True):
        seen: dict[tuple[int, ...], Hypothesis] = {}
        for h in ra.nbest + rb.nbest:
            seen.setdefault(tuple(h.tokens), Hypothesis(list(h.tokens), 0.0, 0.0, text=h.text))
        out.append(DecodeResult(list(seen.values())))
    return out


def combine(results: list[DecodeResult], las_weight: float, length_bonus: float = 0.0) -> list[DecodeResult]:
    """Re-rank each n-best list by (1 - w) * rnnt + w * las (+ bonus per token, + the fused LM's score)."""
    out = []
    for r in results:
        nbest = []
        for h in r.nbest:
            las = h.las_score if h.las_score is not None else 0.0
            score = (1.0 - las_weight) * h.rnnt_score + las_weight * las + length_bonus * len(h.tokens) + (h.lm_score or 0.0)
            nbest.append(Hypothesis(h.tokens, score, h.rnnt_score, h.las_score, h.text, h.frames, h.lm_score))
        nbest.sort(key=lambda h: -h.score)
        out.append(DecodeResult(nbest))
    return out


class LASBeamSearch:
    """Attention-decoder beam search, all utterances' beams in one batch.

    With a lexicon ``lm`` and ``lm_weight`` > 0 the LM is fused as in the first-pass searches:
    every label adds ``lm_weight`` times its lexicon score, <eos> the score of closing the last
    word. A result's ``score`` is the sum, ``las_score`` the LAS part and ``lm_score`` the LM's."""

    def __init__(
        self, beam_size: int = 4, max_len_ratio: float = DecodingOptions.las_max_len_ratio, lm: Lexicon | None = None, lm_weight: float = 0.0
    ) -> None:
        self.K, self.max_len_ratio = beam_size, max_len_ratio
        self.lm, self.lm_weight = fused(lm, lm_weight)

    @torch.no_grad()
    def __call__(self, las: LAS, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        B, K, dev = enc.shape[0], self.K, enc.device
        lm = self.lm.to(dev) if self.lm is not None else None
        values, keys, mask = las.listen(enc, lengths)
        rep = torch.arange(B, device=dev).repeat_interleave(K)
        values, keys, mask = values[rep], keys[rep], mask[rep]
        state, context, prev = las.initial_state(values, mask)
        scores = torch.full((B, K), float("-inf"), device=dev)
        scores[:, 0] = 0.0
        lm_part = torch.zeros(B, K, device=dev)  # the LM's share of ``scores``
        nodes = torch.full((B * K,), ROOT, dtype=torch.long, device=dev)  # each beam's lexicon node
        seqs: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
        finished: list[list[Hypothesis]] = [[] for _ in range(B)]
        tokens = torch.full((B * K,), EOS, dtype=torch.long, device=dev)
        max_len = int(lengths.max().item() * self.max_len_ratio) + 1
        for _ in range(max_len):
            logits, state, context, prev = las.step(tokens, state, context, prev, values, keys, mask)
            lp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
            V = lp.shape[-1]
            cand = scores.view(-1, 1) + lp  # (B*K, V)
            if lm is not None:
                lm_score, lm_next = lm.step(nodes)  # (B*K, V) each
                lm_score[:, EOS] = lm.final[nodes]  # <eos> closes the last word
                lm_lp = self.lm_weight * lm_score
                cand = cand + lm_lp
            top_s, top_i = cand.view(B, K * V).topk(2 * K, dim=-1)
            if lm is not None:  # each candidate's LM share, to split its score at the end
                cand_lm = (lm_part.view(-1, 1) + lm_lp).view(B, K * V).gather(1, top_i).cpu().tolist()
            else:
                cand_lm = [[0.0] * top_i.shape[1]] * B
            src = torch.zeros(B, K, dtype=torch.long)
            nxt = torch.full((B, K), EOS, dtype=torch.long)
            new_scores = torch.full((B, K), float("-inf"))
            new_lm = torch.zeros(B, K)
            new_seqs: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
            ts, ti = top_s.cpu().tolist(), top_i.cpu().tolist()
            for b in range(B):
                slot = 0
                for s, i, m in zip(ts[b], ti[b], cand_lm[b]):
                    if s == float("-inf") or slot == K:
                        break
                    k, v = divmod(i, V)
                    if v == EOS:
                        if len(finished[b]) < K:
                            finished[b].append(Hypothesis(seqs[b][k], s, 0.0, s - m, lm_score=m if lm is not None else None))
                        continue
                    if v < 3:  # blank and <unk> are never emitted
                        continue
                    src[b, slot], nxt[b, slot], new_scores[b, slot], new_lm[b, slot] = b * K + k, v, s, m
                    new_seqs[b][slot] = seqs[b][k] + [v]
                    slot += 1
            best_open = new_scores.max(1).values
            done = all(len(finished[b]) >= K and max(h.score for h in finished[b]) > best_open[b] for b in range(B))
            scores, lm_part, seqs = new_scores.to(dev), new_lm.to(dev), new_seqs
            idx = src.view(-1).to(dev)
            state = (state[0][idx], state[1][idx])
            context, prev, tokens = context[idx], prev[idx], nxt.view(-1).to(dev)
            if lm is not None:
                nodes = lm_next[idx, tokens]
            if done:
                break
        results = []
        for b in range(B):
            if not finished[b]:
                s, m = float(scores[b, 0]), float(lm_part[b, 0])
                finished[b] = [Hypothesis(seqs[b][0], s, 0.0, s - m, lm_score=m if lm is not None else None)]
            hyps = sorted(finished[b], key=lambda h: -h.score)
            results.append(DecodeResult(hyps[:K]))
        return results
