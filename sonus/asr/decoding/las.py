"""Second pass: LAS rescoring of the RNN-T n-best, or LAS's own beam search.

Rescoring (Sainath et al. 2019): score = (1 - w) * log P_rnnt + w * log P_las, where
log P_las is the teacher-forced log-probability of the hypothesis followed by <eos>.
"""

from __future__ import annotations

import torch

from sonus.asr.decoding.types import DecodeResult, Hypothesis
from sonus.asr.las import LAS, las_sequence_logprob
from sonus.text.tokenizer import EOS


@torch.no_grad()
def las_score_nbest(las: LAS, enc: torch.Tensor, lengths: torch.Tensor, results: list[DecodeResult]) -> None:
    """Fill ``las_score`` of every hypothesis, all n-best lists in one batch.

    enc (B, T, H), lengths (B,); ``results[b]`` belongs to utterance b. The listener runs
    once per utterance, not once per hypothesis (it is most of LAS's cost); its output is
    then repeated for the N hypotheses of all n-best lists, which are teacher-forced together.
    """
    owner = [b for b, r in enumerate(results) for _ in r.nbest]
    hyps = [h for r in results for h in r.nbest]
    if not hyps:
        return
    idx = torch.tensor(owner, device=enc.device)
    U = max(1, max(len(h.tokens) for h in hyps))
    targets = torch.zeros(len(hyps), U, dtype=torch.long, device=enc.device)
    for i, h in enumerate(hyps):
        targets[i, : len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
    tl = torch.tensor([len(h.tokens) for h in hyps], device=enc.device)
    values, keys, mask = (x[idx] for x in las.listen(enc, lengths))  # (N, T, D), (N, T, A), (N, T)
    lp = las_sequence_logprob(las.teacher_force(values, keys, mask, targets), targets, tl).tolist()
    for h, s in zip(hyps, lp):
        h.las_score = s


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
    """Attention-decoder beam search, all utterances' beams in one batch."""

    def __init__(self, beam_size: int = 4, max_len_ratio: float = 1.5) -> None:
        self.K, self.max_len_ratio = beam_size, max_len_ratio

    @torch.no_grad()
    def __call__(self, las: LAS, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        B, K, dev = enc.shape[0], self.K, enc.device
        values, keys, mask = las.listen(enc, lengths)
        rep = torch.arange(B, device=dev).repeat_interleave(K)
        values, keys, mask = values[rep], keys[rep], mask[rep]
        state, context, prev = las.initial_state(values, mask)
        scores = torch.full((B, K), float("-inf"), device=dev)
        scores[:, 0] = 0.0
        seqs: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
        finished: list[list[Hypothesis]] = [[] for _ in range(B)]
        tokens = torch.full((B * K,), EOS, dtype=torch.long, device=dev)
        max_len = int(lengths.max().item() * self.max_len_ratio) + 1
        for _ in range(max_len):
            logits, state, context, prev = las.step(tokens, state, context, prev, values, keys, mask)
            lp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
            V = lp.shape[-1]
            cand = (scores.view(-1, 1) + lp).view(B, K * V)
            top_s, top_i = cand.topk(2 * K, dim=-1)
            src = torch.zeros(B, K, dtype=torch.long)
            nxt = torch.full((B, K), EOS, dtype=torch.long)
            new_scores = torch.full((B, K), float("-inf"))
            new_seqs: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
            ts, ti = top_s.cpu().tolist(), top_i.cpu().tolist()
            for b in range(B):
                slot = 0
                for s, i in zip(ts[b], ti[b]):
                    if s == float("-inf") or slot == K:
                        break
                    k, v = divmod(i, V)
                    if v == EOS:
                        if len(finished[b]) < K:
                            finished[b].append(Hypothesis(seqs[b][k], s, 0.0, s))
                        continue
                    if v < 3:  # blank and <unk> are never emitted
                        continue
                    src[b, slot], nxt[b, slot], new_scores[b, slot] = b * K + k, v, s
                    new_seqs[b][slot] = seqs[b][k] + [v]
                    slot += 1
            best_open = new_scores.max(1).values
            done = all(len(finished[b]) >= K and max(h.score for h in finished[b]) > best_open[b] for b in range(B))
            scores, seqs = new_scores.to(dev), new_seqs
            idx = src.view(-1).to(dev)
            state = (state[0][idx], state[1][idx])
            context, prev, tokens = context[idx], prev[idx], nxt.view(-1).to(dev)
            if done:
                break
        results = []
        for b in range(B):
            hyps = finished[b] or [Hypothesis(seqs[b][0], float(scores[b, 0]), 0.0, float(scores[b, 0]))]
            hyps.sort(key=lambda h: -h.score)
            results.append(DecodeResult(hyps[:K]))
        return results
