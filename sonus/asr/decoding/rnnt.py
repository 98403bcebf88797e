"""First-pass RNN-T search, batched across utterances.

Both searches run frame-synchronously: all utterances advance one encoder frame at a
time, and the predictor runs once per frame on every hypothesis that emitted a label.

Shapes: B batch, K beam, T encoder frames, V vocabulary, H hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    """Label-looping greedy search: up to ``max_symbols`` labels per frame.

    The score is the log-probability of the path taken (a capped frame is charged its blank).
    """

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
            else:  # capped: the frame still ends with a blank, so the score is the path's
                if bool(active.any()):
                    lp = torch.log_softmax(joiner.joint(enc_p[:, t], pred_p).float(), dim=-1)
                    scores += torch.where(active, lp[:, BLANK], torch.zeros_like(scores))
        return [DecodeResult([Hypothesis(tokens[b], float(scores[b]), float(scores[b]))]) for b in range(B)]


@dataclass
class _Beam:
    """K hypotheses per utterance for B utterances, all in one (B*K) predictor batch.

    ``scores`` and ``closed`` live on the CPU (they drive Python-side merging); the
    predictor state and projected outputs live on the model's device.
    """

    scores: torch.Tensor  # (B, K) log-probabilities; -inf marks an empty slot
    hyps: list[list[tuple[int, ...]]]  # [B][K] label sequences
    state: tuple[torch.Tensor, ...]  # predictor state, (layers, B*K, H) each
    pred_p: torch.Tensor  # (B*K, J) projected predictor output

    @classmethod
    def start(cls, predictor: Predictor, joiner: Joiner, B: int, K: int, device: torch.device) -> "_Beam":
        state = predictor.initial_state(B * K, device)
        out, state = predictor.step(torch.full((B * K,), BLANK, dtype=torch.long, device=device), state)
        scores = torch.full((B, K), float("-inf"))
        scores[:, 0] = 0.0
        return cls(scores, [[()] * K for _ in range(B)], state, joiner.pred_proj(out))

    def log_probs(self, joiner: Joiner, enc_p_t: torch.Tensor) -> torch.Tensor:
        """enc_p_t (B, J) -> (B, K, V) log-probabilities of every hypothesis' next symbol, on the CPU."""
        B, K = self.scores.shape
        return torch.log_softmax(joiner.joint(enc_p_t[:, None, :], self.pred_p.view(B, K, -1)).float(), dim=-1).cpu()

    def advance(self, predictor: Predictor, joiner: Joiner, src: torch.Tensor, label: torch.Tensor) -> None:
        """Slot (b, k) now extends hypothesis ``src[b, k]`` (flat index) with ``label[b, k]`` (blank: no label)."""
        dev = self.pred_p.device
        src_d, label_d = src.view(-1).to(dev), label.view(-1).to(dev)
        self.state = _select_state(self.state, src_d)
        self.pred_p = self.pred_p[src_d]
        emit = label_d != BLANK
        if bool(emit.any()):
            out, new_state = predictor.step(label_d, self.state)
            self.state = _merge_state(new_state, self.state, emit)
            self.pred_p = torch.where(emit[:, None], joiner.pred_proj(out), self.pred_p)

    def assign(self, b: int, slots: list[tuple], src: torch.Tensor, label: torch.Tensor) -> None:
        """Utterance b's new beam from ``(score, k, seq, label)`` slots of :func:`_fill_slots`."""
        K = self.scores.shape[1]
        self.scores[b] = float("-inf")
        hyps = list(self.hyps[b])
        for j, (score, k, seq, v) in enumerate(slots):
            self.scores[b, j], hyps[j], src[b, j], label[b, j] = score, seq, b * K + k, v
        self.hyps[b] = hyps

    def results(self) -> list[DecodeResult]:
        out = []
        for b, row in enumerate(self.scores.tolist()):
            order = sorted(range(len(row)), key=lambda k: -row[k])
            out.append(DecodeResult([Hypothesis(list(self.hyps[b][k]), row[k], row[k]) for k in order if row[k] > float("-inf")]))
        return out


def _fill_slots(candidates, K: int) -> list[tuple[float, int, tuple, object]]:
    """Best-first (score, source, key, payload) candidates -> at most K slots, duplicates of a
    key merged by log-sum-exp (two paths to the same hypothesis add up)."""
    slots: list[list] = []
    where: dict = {}
    for score, src, key, payload in candidates:
        if score == float("-inf"):
            break
        if key in where:
            slot = slots[where[key]]
            hi, lo = max(slot[0], score), min(slot[0], score)
            slot[0] = hi + math.log1p(math.exp(lo - hi))
        elif len(slots) < K:
            where[key] = len(slots)
            slots.append([score, src, key, payload])
    return [tuple(x) for x in slots]


class ModifiedBeamSearch:
    """Beam search with at most one label per frame (icefall's modified_beam_search).

    Emitting a label also moves to the next frame, so a frame costs one joiner call.
    """

    def __init__(self, beam_size: int = 4) -> None:
        self.K = beam_size

    @torch.no_grad()
    def __call__(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        B, T, _ = enc.shape
        K = self.K
        enc_p = joiner.enc_proj(enc)  # (B, T, J)
        beam = _Beam.start(predictor, joiner, B, K, enc.device)
        for t in range(T):
            active = (t < lengths).cpu()
            if not bool(active.any()):
                break
            lp = beam.log_probs(joiner, enc_p[:, t])  # (B, K, V)
            V = lp.shape[-1]
            top_s, top_i = (beam.scores[:, :, None] + lp).view(B, K * V).topk(min(2 * K, K * V), dim=-1)
            src = torch.arange(B * K).view(B, K).clone()
            label = torch.full((B, K), BLANK, dtype=torch.long)
            for b in range(B):
                if not bool(active[b]):
                    continue
                cands = []
                for s, i in zip(top_s[b].tolist(), top_i[b].tolist()):
                    k, v = divmod(i, V)
                    seq = beam.hyps[b][k] if v == BLANK else beam.hyps[b][k] + (v,)
                    cands.append((s, k, seq, v))
                beam.assign(b, _fill_slots(cands, K), src, label)
            beam.advance(predictor, joiner, src, label)
        return beam.results()


class BeamSearch:
    """Time-synchronous beam search with up to ``max_symbols`` labels per frame.

    The standard transducer topology: within frame t a hypothesis emits labels, then a
    blank that moves it to t+1 (time-synchronous decoding, Saon et al. 2020). Each frame
    runs ``max_symbols + 1`` rounds over the beam: a hypothesis that took its blank is
    "closed" and carried over unchanged, and the last round only allows blank.
    """

    def __init__(self, beam_size: int = 4, max_symbols: int = 2) -> None:
        self.K, self.max_symbols = beam_size, max_symbols

    @torch.no_grad()
    def __call__(self, predictor: Predictor, joiner: Joiner, enc: torch.Tensor, lengths: torch.Tensor) -> list[DecodeResult]:
        B, T, _ = enc.shape
        K = self.K
        enc_p = joiner.enc_proj(enc)  # (B, T, J)
        beam = _Beam.start(predictor, joiner, B, K, enc.device)
        for t in range(T):
            active = (t < lengths).cpu()
            if not bool(active.any()):
                break
            closed = torch.zeros(B, K, dtype=torch.bool)
            for rnd in range(self.max_symbols + 1):
                if bool(closed[active].all()):
                    break
                lp = beam.log_probs(joiner, enc_p[:, t])  # (B, K, V)
                V = lp.shape[-1]
                ext = beam.scores[:, :, None] + lp  # open hypotheses extend ...
                ext[closed] = float("-inf")
                if rnd == self.max_symbols:  # ... with blank only in the last round
                    ext[:, :, :BLANK] = float("-inf")
                    ext[:, :, BLANK + 1 :] = float("-inf")
                carry = torch.where(closed, beam.scores, float("-inf"))  # closed ones stay as they are
                top_s, top_i = torch.cat([ext.view(B, K * V), carry], dim=1).topk(min(2 * K, K * V + K), dim=-1)
                src = torch.arange(B * K).view(B, K).clone()
                label = torch.full((B, K), BLANK, dtype=torch.long)
                for b in range(B):
                    if not bool(active[b]):
                        continue
                    cands = []
                    for s, i in zip(top_s[b].tolist(), top_i[b].tolist()):
                        k, v = (i - K * V, BLANK) if i >= K * V else divmod(i, V)
                        done = i >= K * V or v == BLANK
                        seq = beam.hyps[b][k] if done else beam.hyps[b][k] + (v,)
                        cands.append((s, k, (seq, done), v if i < K * V else BLANK))
                    slots = _fill_slots(cands, K)
                    beam.assign(b, [(sc, k, seq, v) for sc, k, (seq, _), v in slots], src, label)
                    closed[b] = True  # empty slots never extend
                    for j, (_, _, (_, done), _) in enumerate(slots):
                        closed[b, j] = done
                beam.advance(predictor, joiner, src, label)
        return beam.results()
