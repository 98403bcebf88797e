"""CTC decoding: best path on a hand-made example; prefix beam search exact against brute-force
enumeration of alignments, equal to a plain per-utterance reference when it prunes; batched ==
one at a time; streamed == offline; the decoder with a CTC first pass and LAS rescoring."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from sonus.asr.decoding import (
    CTCGreedySearch,
    CTCPrefixBeamSearch,
    Decoder,
    DecodingOptions,
)
from sonus.asr.decoding.las import las_score_nbest
from sonus.asr.model import TwoPassASR
from sonus.text.tokenizer import BLANK, CharTokenizer

from .test_model import small_config

NEG_INF = -math.inf


def _logaddexp(*xs: float) -> float:
    hi = max(xs)
    return hi if hi == NEG_INF else hi + math.log(sum(math.exp(x - hi) for x in xs))


def exact_sequence_logprobs(lp: torch.Tensor) -> dict[tuple[int, ...], float]:
    """lp (T, V) -> log P(y) of every label sequence y, summing all V**T alignments (collapse, drop blanks)."""
    T, V = lp.shape
    rows = lp.tolist()
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        y = tuple(c for i, c in enumerate(path) if c != BLANK and (i == 0 or path[i - 1] != c))
        out[y] = _logaddexp(out.get(y, NEG_INF), sum(rows[t][c] for t, c in enumerate(path)))
    return out


def ctc_logprob(lp: torch.Tensor, y: list[int]) -> float:
    """log P(y | lp (T, V)) by torch's CTC loss: an independent reference for longer inputs."""
    tgt = torch.tensor([y or [1]], dtype=torch.long)
    loss = F.ctc_loss(lp[:, None].double(), tgt, torch.tensor([lp.shape[0]]), torch.tensor([len(y)]), blank=BLANK, reduction="sum")
    return -float(loss)


def _add(beam: dict, y: tuple[int, ...], b: float = NEG_INF, n: float = NEG_INF) -> None:
    ob, on = beam.get(y, (NEG_INF, NEG_INF))
    beam[y] = (_logaddexp(ob, b), _logaddexp(on, n))


def reference_prefix_beam(lp: torch.Tensor, K: int, C: int) -> tuple[list[tuple[list[int], float]], int]:
    """Prefix beam search on one utterance with Python dicts (Hannun et al. 2014, as WeNet writes
    it): lp (T, V) -> (n-best [(tokens, log P)], merges of an extension into a kept prefix)."""
    beam: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}  # prefix -> (ends in blank, ends in label)
    merges = 0
    for row in lp.tolist():
        top = sorted(range(len(row)), key=lambda c: -row[c])[:C]
        nxt: dict[tuple[int, ...], tuple[float, float]] = {}
        for c in top:
            for y, (pb, pn) in beam.items():
                if c == BLANK:
                    _add(nxt, y, b=_logaddexp(pb, pn) + row[c])
                else:
                    if y and y[-1] == c:
                        _add(nxt, y, n=pn + row[c])
                        ext = pb + row[c]
                    else:
                        ext = _logaddexp(pb, pn) + row[c]
                    _add(nxt, y + (c,), n=ext)
                    merges += y + (c,) in beam and ext > NEG_INF
        ranked = sorted(nxt.items(), key=lambda kv: -_logaddexp(*kv[1]))
        beam = {y: s for y, s in ranked[:K] if _logaddexp(*s) > NEG_INF}
    return [(list(y), _logaddexp(*s)) for y, s in sorted(beam.items(), key=lambda kv: -_logaddexp(*kv[1]))], merges


def random_log_probs(B: int, T: int, V: int, sharpness: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(B, T, V, generator=g) * sharpness, dim=-1)  # (B, T, V)


def _same(results, expected, abs=1e-4) -> None:
    for r, ref in zip(results, expected):
        assert [h.tokens for h in r.nbest] == [toks for toks, _ in ref]
        assert [h.score for h in r.nbest] == pytest.approx([s for _, s in ref], abs=abs)


def test_greedy_hand_made_example():
    """Best path a a - a b b - c collapses to a a b c (a blank separates the two a's)."""
    a, b, c = 3, 4, 5
    path = [a, a, BLANK, a, b, b, BLANK, c]
    probs = torch.full((2, len(path), 6), 0.05)
    for t, s in enumerate(path):
        probs[0, t, s] = 0.75
    probs[1, :, BLANK] = 0.75  # the second utterance: blanks only, 3 valid frames
    lp = probs.log()
    res = CTCGreedySearch()(lp, torch.tensor([len(path), 3]))
    assert res[0].best.tokens == [a, a, b, c]
    assert res[0].best.score == pytest.approx(len(path) * math.log(0.75))
    assert res[1].best.tokens == [] and res[1].best.score == pytest.approx(3 * math.log(0.75))
    assert CTCGreedySearch()(lp, torch.tensor([0, 1]))[0].best.tokens == []  # no frames: empty, score 0


@pytest.mark.parametrize("T, V, seed", [(1, 2, 0), (3, 2, 1), (4, 3, 2), (5, 3, 3), (5, 4, 4), (5, 4, 5)])
def test_prefix_beam_is_exact_with_a_beam_that_keeps_every_prefix(T, V, seed):
    """With every token tried and a beam larger than the number of prefixes, prefix beam search
    computes P(y) = the sum over all alignments of y: the n-best is the exact ranking."""
    lp = random_log_probs(2, T, V, 2.0, seed)
    lengths = torch.tensor([T, max(1, T - 2)])
    res = CTCPrefixBeamSearch(beam_size=128, token_topk=V)(lp, lengths)
    for b in range(2):
        exact = exact_sequence_logprobs(lp[b, : int(lengths[b])])
        ranked = sorted(exact.items(), key=lambda kv: -kv[1])
        r = res[b]
        assert len(r.nbest) == min(128, len(exact))
        assert [tuple(h.tokens) for h in r.nbest[:5]] == [y for y, _ in ranked[:5]]
        for h in r.nbest:
            assert h.score == pytest.approx(exact[tuple(h.tokens)], abs=1e-4)
        assert r.best.score == pytest.approx(ctc_logprob(lp[b, : int(lengths[b])], r.best.tokens), abs=1e-4)


@pytest.mark.parametrize("K, C", [(1, 2), (3, 2), (4, 6), (8, 3)])
def test_pruned_prefix_beam_equals_reference(K, C):
    """Beam K, C tokens a frame: the batched search keeps what the dict reference keeps, and every
    score sums some of the prefix's alignments (at most log P(y) from torch's CTC loss)."""
    lp = random_log_probs(3, 14, 6, 3.0, seed=K * 10 + C)
    lengths = torch.tensor([14, 9, 5])
    res = CTCPrefixBeamSearch(K, C)(lp, lengths)
    total_merges = 0
    for b in range(3):
        ref, merges = reference_prefix_beam(lp[b, : int(lengths[b])], K, C)
        total_merges += merges
        _same([res[b]], [ref])
        for h in res[b].nbest:
            assert h.score <= ctc_logprob(lp[b, : int(lengths[b])], h.tokens) + 1e-4
    if K > 1:
        assert total_merges > 0, "no extension met a kept prefix: merging is untested"


def test_beam_one_trying_one_token_is_greedy():
    """Beam 1 with the best token only follows the best path: greedy's tokens and score."""
    lp = random_log_probs(4, 40, 3, 2.0, seed=7)  # few labels: repeats with and without a blank between
    lengths = torch.tensor([40, 33, 17, 1])
    g = CTCGreedySearch()(lp, lengths)
    p = CTCPrefixBeamSearch(1, 1)(lp, lengths)
    assert [r.best.tokens for r in p] == [r.best.tokens for r in g]
    assert [r.best.score for r in p] == pytest.approx([r.best.score for r in g], abs=1e-4)
    assert any(x == y for r in g for x, y in itertools.pairwise(r.best.tokens)), "no repeated label: collapse is untested"


@pytest.mark.parametrize("search", [CTCGreedySearch(), CTCPrefixBeamSearch(4), CTCPrefixBeamSearch(3, 5)], ids=["greedy", "beam4", "beam3-top5"])
def test_batched_equals_one_by_one(search):
    lp = random_log_probs(3, 20, 7, 2.5, seed=3)
    lengths = torch.tensor([20, 13, 6])
    lp[1, 13:] = lp[0, 13:].flip(0)  # padding frames hold something else: they must be ignored
    batched = search(lp, lengths)
    for b in range(3):
        T = int(lengths[b])
        single = search(lp[b : b + 1, :T], lengths[b : b + 1])[0]
        assert [h.tokens for h in single.nbest] == [h.tokens for h in batched[b].nbest]
        assert [h.score for h in single.nbest] == pytest.approx([h.score for h in batched[b].nbest], abs=1e-5)
    assert any(r.best.tokens for r in batched)


@pytest.mark.parametrize("search", [CTCGreedySearch(), CTCPrefixBeamSearch(4)], ids=["greedy", "beam4"])
def test_streamed_pieces_equal_offline(search):
    """run() continued over pieces (one frame, empty, uneven; utterances ending in different
    pieces) gives the offline result, and each partial is the offline result of the frames so far."""
    lp = random_log_probs(3, 23, 5, 3.0, seed=11)
    lengths = torch.tensor([23, 16, 4])
    state, t = search.start(3, lp.device), 0
    for size in (1, 0, 3, 7, 5, 7):
        piece = lp[:, t : t + size]
        state = search.run(piece, (lengths - t).clamp(0, size), state)
        t += size
        partial = search.results(state)
        upto = search(lp[:, :t], lengths.clamp(max=t))
        for got, want in zip(partial, upto):
            assert [h.tokens for h in got.nbest] == [h.tokens for h in want.nbest]
            assert [h.score for h in got.nbest] == pytest.approx([h.score for h in want.nbest], abs=1e-5)
    assert t == 23
    offline = search(lp, lengths)
    assert [[h.tokens for h in r.nbest] for r in search.results(state)] == [[h.tokens for h in r.nbest] for r in offline]


def test_nbest_sorted_and_distinct():
    res = CTCPrefixBeamSearch(6)(random_log_probs(2, 30, 8, 1.5, seed=5), torch.tensor([30, 21]))
    for r in res:
        scores = [h.score for h in r.nbest]
        assert len(r.nbest) == 6 and scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in r.nbest}) == 6


@pytest.fixture(scope="module")
def ctc_model():
    """A random two-pass model with a CTC head; blank-shy, so hypotheses are not empty."""
    torch.manual_seed(0)
    tok = CharTokenizer("abcde ")
    model = TwoPassASR(replace(small_config(tok.vocab_size), ctc_head=True), specaug=None, gain=None).eval()
    with torch.no_grad():
        model.ctc.weight.mul_(20.0)
        model.ctc.bias[BLANK] -= 1.0
        enc = model.encode(torch.randn(3, 12000) * 0.3, torch.tensor([12000, 9000, 5000]))
    return model, tok, enc


def test_decoder_ctc_prefix_beam_then_las_rescoring(ctc_model):
    """WeNet-style attention rescoring: the CTC n-best, re-ranked by (1 - w) * ctc + w * las."""
    model, tok, enc = ctc_model
    opts = DecodingOptions(strategy="ctc_prefix_beam", beam_size=3, second_pass="rescore", las_weight=0.3)
    assert opts.first_pass_kind == "ctc"
    first, final = Decoder(model, tok, opts).decode_encoded(enc)
    direct = CTCPrefixBeamSearch(3)(model.ctc_log_probs(enc.enc), enc.lengths)
    _same(first, [[(h.tokens, h.score) for h in r.nbest] for r in direct], abs=1e-5)
    for f, r in zip(first, final):
        assert {tuple(h.tokens) for h in f.nbest} == {tuple(h.tokens) for h in r.nbest}
        assert [h.score for h in r.nbest] == sorted((h.score for h in r.nbest), reverse=True)
        for h in r.nbest:
            assert h.las_score is not None and h.text == tok.decode(h.tokens)
            assert h.score == pytest.approx(0.7 * h.rnnt_score + 0.3 * h.las_score)
    copy = [type(r)([replace(h, las_score=None) for h in r.nbest]) for r in direct]
    las_score_nbest(model.las, enc.enc, enc.lengths, copy)  # the same LAS scores as rescoring by hand
    assert [h.las_score for r in copy for h in r.nbest] == pytest.approx([h.las_score for r in first for h in r.nbest], abs=1e-5)
    assert sum(len(h.tokens) for r in first for h in r.nbest) > 0


def test_decoder_ctc_first_pass_streams(ctc_model):
    """The decoder's bound first pass (what the streaming decoder drives) over encoder pieces == offline."""
    model, tok, enc = ctc_model
    for strategy in ("ctc_greedy", "ctc_prefix_beam"):
        dec = Decoder(model, tok, DecodingOptions(strategy=strategy, beam_size=3, second_pass="none"))
        off, _ = dec.decode_encoded(enc)
        state, t = dec.first_search.start(3, enc.enc.device), 0
        for size in (5, 1, 9, 100):
            state = dec.first_search.run(enc.enc[:, t : t + size], (enc.lengths - t).clamp(0, size), state)
            t += size
        got = dec.texts(dec.first_search.results(state))
        assert [[(h.tokens, h.text) for h in r.nbest] for r in got] == [[(h.tokens, h.text) for h in r.nbest] for r in off]
        assert [h.score for r in got for h in r.nbest] == pytest.approx([h.score for r in off for h in r.nbest], abs=1e-5)


def test_ctc_only_model_decodes_with_ctc_and_refuses_a_transducer_strategy(ctc_model):
    model, tok, enc = ctc_model
    ctc_only = TwoPassASR(replace(model.cfg, transducer=False), specaug=None, gain=None).eval()
    ctc_only.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(("predictor.", "joiner."))})
    opts = DecodingOptions(strategy="ctc_greedy", second_pass="none")
    a, _ = Decoder(ctc_only, tok, opts).decode_encoded(enc)
    b, _ = Decoder(model, tok, opts).decode_encoded(enc)
    assert [r.best.tokens for r in a] == [r.best.tokens for r in b]
    with pytest.raises(ValueError, match="strategy=beam needs a transducer"):
        Decoder(ctc_only, tok, DecodingOptions(strategy="beam"))


def test_model_without_ctc_head_is_refused():
    tok = CharTokenizer("abc")
    model = TwoPassASR(small_config(tok.vocab_size)).eval()
    for strategy in ("ctc_greedy", "ctc_prefix_beam"):
        with pytest.raises(ValueError, match=r"model\.loss_weights\.ctc"):
            Decoder(model, tok, DecodingOptions(strategy=strategy))
    with pytest.raises(ValueError, match="strategy"):
        DecodingOptions(strategy="ctc_beam")
    with pytest.raises(ValueError, match="token_topk"):
        CTCPrefixBeamSearch(2, token_topk=0)
