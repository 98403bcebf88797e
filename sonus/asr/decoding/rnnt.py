"""First-pass RNN-T search, batched across utterances.

Both searches run frame-synchronously: all utterances advance one encoder frame at a
time, and the predictor runs once per frame on every hypothesis that emitted a label.

Shapes: B batch, K beam, T encoder frames, V vocabulary, H hidden.
"""

from __future__ import annotations

import torch

from sonus.asr.decoding.types import DecodeResult, Hypothesis
from sonus.asr.joiner import Joiner
from sonus.asr.predictor import Predictor
from sonus.text.tokenizer import BLANK


def _select_state(state: tuple[torch.Tensor, ...], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(s[:, idx] for s in state)


def _merge_state(new: tuple[torch.Tensor, ...], old: tuple[torch.Tensor, ...], take_new: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(torch.where(take_new[None, :, None], n, o) for n, o in zip(new, old))


class GreedySearch:
    """Label-looping greedy search: up to ``max_symbols`` labels per frame."""

    def __init__(self, max_symbols: int = 3) -> None:
        self.max_symbols = max_symbols

    @torch.no_grad()
    def __call__(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        B, T, _ = enc.shape
        dev = enc.device
        enc_p = joiner.enc_proj(enc)  # (B, T, J)
        state = predictor.initial_state(B, dev)
        pred_out, state = predictor.step(torch.full((B,), BLANK, dtype=torch.long, device=dev), state)
        pred_p = joiner.pred_proj(pred_out)
        tokens: list[list[int]] = [[] for _ in range(B)]
        scores = torch.zeros(B, device=dev)
        for t in range(T):
            active = t < lengths  # (B,)
            for _ in range(self.max_symbols):
                lp = torch.log_softmax(joiner.joint(enc_p[:, t], pred_p).float(), dim=-1)  # (B, V)
                best_lp, best = lp.max(-1)
                emit = active & (best != BLANK)
                scores += torch.where(active, best_lp, torch.zeros_like(best_lp))
                if not bool(emit.any()):
                    break
                for b in emit.nonzero().flatten().tolist():
                    tokens[b].append(int(best[b]))
                new_out, new_state = predictor.step(best, state)
                state = _merge_state(new_state, state, emit)
                pred_p = torch.where(emit[:, None], joiner.pred_proj(new_out), pred_p)
                active = emit  # only those that emitted get another symbol in this frame
        return [DecodeResult([Hypothesis(tokens[b], float(scores[b]), float(scores[b]))]) for b in range(B)]


class ModifiedBeamSearch:
    """Beam search with at most one label per frame (icefall's modified_beam_search).

    Hypotheses of all utterances live in one (B*K) batch; duplicates (the same label
    sequence reached by two paths) are merged by log-sum-exp of their scores.
    """

    def __init__(self, beam_size: int = 4) -> None:
        self.K = beam_size

    @torch.no_grad()
    def __call__(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        B, T, _ = enc.shape
        K, dev = self.K, enc.device
        enc_p = joiner.enc_proj(enc)  # (B, T, J)
        state = predictor.initial_state(B * K, dev)
        out, state = predictor.step(torch.full((B * K,), BLANK, dtype=torch.long, device=dev), state)
        pred_p = joiner.pred_proj(out)  # (B*K, J)
        scores = torch.full((B, K), float("-inf"), device=dev)
        scores[:, 0] = 0.0
        hyps: list[list[tuple[int, ...]]] = [[()] * K for _ in range(B)]
        for t in range(T):
            active = t < lengths  # (B,)
            if not bool(active.any()):
                break
            lp = torch.log_softmax(joiner.joint(enc_p[:, t, None, :], pred_p.view(B, K, -1)).float(), dim=-1)  # (B, K, V)
            V = lp.shape[-1]
            cand = (scores[:, :, None] + lp).view(B, K * V)
            top_s, top_i = cand.topk(min(2 * K, K * V), dim=-1)  # extra candidates survive merging
            top_s, top_i = top_s.cpu(), top_i.cpu()
            new_scores = torch.full((B, K), float("-inf"))
            src = torch.arange(B * K).view(B, K).clone()  # which old hypothesis each slot extends
            label = torch.full((B, K), BLANK, dtype=torch.long)
            new_hyps = [list(h) for h in hyps]
            for b in range(B):
                if not bool(active[b]):
                    new_scores[b] = scores[b].cpu()
                    continue
                merged: dict[tuple[int, ...], int] = {}
                slot = 0
                for s, i in zip(top_s[b].tolist(), top_i[b].tolist()):
                    if s == float("-inf"):
                        break
                    k, v = divmod(i, V)
                    seq = hyps[b][k] if v == BLANK else hyps[b][k] + (v,)
                    if seq in merged:
                        j = merged[seq]
                        new_scores[b, j] = torch.logaddexp(new_scores[b, j], torch.tensor(s))
                        continue
                    if slot == K:
                        continue
                    merged[seq] = slot
                    new_hyps[b][slot] = seq
                    new_scores[b, slot] = s
                    src[b, slot] = b * K + k
                    label[b, slot] = v
                    slot += 1
            src_d, label_d = src.view(-1).to(dev), label.view(-1).to(dev)
            state = _select_state(state, src_d)
            pred_p = pred_p[src_d]
            emit = label_d != BLANK
            if bool(emit.any()):
                out, new_state = predictor.step(label_d, state)
                state = _merge_state(new_state, state, emit)
                pred_p = torch.where(emit[:, None], joiner.pred_proj(out), pred_p)
            scores = new_scores.to(dev)
            hyps = new_hyps
        results = []
        sc = scores.cpu()
        for b in range(B):
            order = sorted(range(K), key=lambda k: -float(sc[b, k]))
            nbest = [Hypothesis(list(hyps[b][k]), float(sc[b, k]), float(sc[b, k])) for k in order if sc[b, k] > float("-inf")]
            results.append(DecodeResult(nbest))
        return results
