"""Decoding: batched searches == a plain per-utterance reference, batched == one at a time,
beam 1 == greedy, rescoring arithmetic, LAS beam, exact first-pass scores, the union second pass."""

from __future__ import annotations

import math

import pytest
import torch

from sonus.asr.decoding import (
    BeamSearch,
    Decoder,
    DecodingOptions,
    GreedySearch,
    ModifiedBeamSearch,
)
from sonus.asr.decoding import first_pass as first_pass_module
from sonus.asr.decoding.beam import extend_keys
from sonus.asr.decoding.first_pass import bind
from sonus.asr.decoding.las import LASBeamSearch, combine, las_score_nbest
from sonus.asr.decoding.lexicon import Lexicon
from sonus.asr.las import las_sequence_logprob
from sonus.asr.loss import rnnt_loss, rnnt_loss_reference
from sonus.asr.model import TwoPassASR
from sonus.text.tokenizer import BLANK, CharTokenizer

from .test_model import small_config


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = CharTokenizer("abcde ")
    model = TwoPassASR(small_config(tok.vocab_size)).eval()
    with torch.no_grad():  # a blank-shy joiner, so hypotheses are not empty
        model.joiner.out.bias[0] -= 2.0
    wave = torch.randn(3, 12000) * 0.3
    wl = torch.tensor([12000, 9000, 5000])
    with torch.no_grad():
        enc = model.encode(wave, wl)
    return model, tok, enc


@pytest.fixture(scope="module")
def peaky():
    """A model with sharp, frame-dependent posteriors: frames that emit several labels, and
    labels whose timing is uncertain, so two paths reach one hypothesis and beams merge."""
    torch.manual_seed(0)
    model = TwoPassASR(small_config(CharTokenizer("abcde ").vocab_size)).eval()
    with torch.no_grad():
        model.joiner.enc_proj.weight.mul_(30.0)
        model.joiner.out.weight.mul_(3.0)
        model.joiner.out.bias[0] += 2.0
        enc = model.encode(torch.randn(3, 12000) * 0.3, torch.tensor([12000, 9000, 5000]))
    return model, enc


class _Ref:
    """A plain reference for one utterance: Python lists and dicts, one hypothesis at a time."""

    def __init__(self, model, enc: torch.Tensor) -> None:
        self.p, self.j = model.predictor, model.joiner
        self.enc_p = self.j.enc_proj(enc)  # (T, J)

    def start(self):
        out, st = self.p.step(torch.tensor([BLANK]), self.p.initial_state(1, torch.device("cpu")))
        return st, self.j.pred_proj(out)

    def feed(self, label: int, st):
        out, st = self.p.step(torch.tensor([label]), st)
        return st, self.j.pred_proj(out)

    def log_probs(self, t: int, pred_p: torch.Tensor) -> list[float]:
        return torch.log_softmax(self.j.joint(self.enc_p[t], pred_p[0]), dim=-1).tolist()


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


@torch.no_grad()
def reference_greedy(model, enc: torch.Tensor, max_symbols: int) -> tuple[list[int], float, int]:
    """Best symbol until blank in every frame, at most ``max_symbols`` labels (then blank is
    charged) -> (tokens, score, frames that hit the cap)."""
    r = _Ref(model, enc)
    st, pred_p = r.start()
    tokens, score, capped = [], 0.0, 0
    for t in range(enc.shape[0]):
        for s in range(max_symbols + 1):
            lp = r.log_probs(t, pred_p)
            v = BLANK if s == max_symbols else max(range(len(lp)), key=lp.__getitem__)
            score += lp[v]
            capped += s == max_symbols
            if v == BLANK:
                break
            tokens.append(v)
            st, pred_p = r.feed(v, st)
    return tokens, score, capped


@torch.no_grad()
def reference_beam(model, enc: torch.Tensor, K: int, max_symbols: int | None) -> tuple[list[tuple[list[int], float]], int]:
    """Beam search over label sequences -> (n-best [(tokens, score)], merges).

    ``max_symbols=None``: modified beam search (one label per frame, emitting one ends the
    frame); else time-synchronous: rounds of extensions until every hypothesis took its
    blank, the last round blank only. Each round keeps the first K distinct hypotheses
    among the 2K best candidates; a hypothesis reached twice scores the log-sum-exp.
    """
    r = _Ref(model, enc)
    beam = {(): (0.0, *r.start())}  # label sequence -> (log-prob, predictor state, projected output)
    merges = 0
    for t in range(enc.shape[0]):
        rounds = 1 if max_symbols is None else max_symbols + 1
        opened, closed = beam, {}
        for rnd in range(rounds):
            if not opened:
                break
            cands = []  # (score, label sequence, label, parent); blank ends the frame (time-synchronous)
            for seq, (score, st, pp) in opened.items():
                lp = r.log_probs(t, pp)
                labels = [BLANK] if max_symbols is not None and rnd == max_symbols else range(len(lp))
                cands += [(score + lp[v], seq, v, (st, pp)) for v in labels]
            cands += [(score, seq, None, (st, pp)) for seq, (score, st, pp) in closed.items()]
            cands.sort(key=lambda c: -c[0])
            new: dict = {}
            for score, seq, v, (st, pp) in cands[: 2 * K]:
                done = max_symbols is not None and v in (None, BLANK)
                key = (seq if v in (None, BLANK) else seq + (v,), done)
                if key in new:
                    new[key][0] = _logaddexp(new[key][0], score)
                    merges += 1
                elif len(new) < K:
                    new[key] = [score, *((st, pp) if v in (None, BLANK) else r.feed(v, st))]
            opened = {k[0]: tuple(h) for k, h in new.items() if not k[1]}
            closed = {k[0]: tuple(h) for k, h in new.items() if k[1]}
        beam = closed if max_symbols is not None else opened
    return sorted(((list(seq), h[0]) for seq, h in beam.items()), key=lambda x: -x[1]), merges


def _assert_same(batched, expected: list[list[tuple[list[int], float]]]) -> None:
    for r, ref in zip(batched, expected):
        assert [h.tokens for h in r.nbest] == [toks for toks, _ in ref]
        assert [h.score for h in r.nbest] == pytest.approx([s for _, s in ref], rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("max_symbols", [1, 2, 10])
@pytest.mark.parametrize("window", [1, 4])
def test_greedy_equals_reference(peaky, max_symbols, window):
    model, enc = peaky
    res = GreedySearch(max_symbols, window)(model.predictor, model.joiner, enc.enc, enc.lengths)
    refs = [reference_greedy(model, enc.enc[b, : int(enc.lengths[b])], max_symbols) for b in range(3)]
    _assert_same(res, [[(toks, score)] for toks, score, _ in refs])
    assert sum(capped for _, _, capped in refs) > 0, "no frame reached the cap: it is untested"


@pytest.mark.parametrize("K", [2, 4])
def test_modified_beam_equals_reference(peaky, K):
    model, enc = peaky
    res = ModifiedBeamSearch(K)(model.predictor, model.joiner, enc.enc, enc.lengths)
    refs = [reference_beam(model, enc.enc[b, : int(enc.lengths[b])], K, None) for b in range(3)]
    _assert_same(res, [nbest for nbest, _ in refs])
    assert sum(m for _, m in refs) > 0, "no two paths reached one hypothesis: merging is untested"


@pytest.mark.parametrize("K, max_symbols", [(3, 2), (4, 3)])
def test_time_synchronous_beam_equals_reference(peaky, K, max_symbols):
    model, enc = peaky
    res = BeamSearch(K, max_symbols)(model.predictor, model.joiner, enc.enc, enc.lengths)
    refs = [reference_beam(model, enc.enc[b, : int(enc.lengths[b])], K, max_symbols) for b in range(3)]
    _assert_same(res, [nbest for nbest, _ in refs])
    assert sum(m for _, m in refs) > 0, "no two paths reached one hypothesis: merging is untested"


def test_sequence_keys_depend_on_labels_and_order_not_on_blanks():
    empty = torch.zeros((), dtype=torch.long)

    def key(labels):
        k = empty
        for v in labels:
            k = extend_keys(k, torch.tensor(v))
        return int(k)

    assert key([5, 0, 7]) == key([5, 7]) == key([0, 5, 7, 0])
    assert len({key(s) for s in ([5, 7], [7, 5], [5], [5, 7, 7], [4, 8], [])}) == 6
    big = key(range(3, 300))
    assert 0 <= big < 2**62


def test_batched_equals_single(setup):
    model, _, enc = setup
    for search in (GreedySearch(3), ModifiedBeamSearch(4), BeamSearch(4, 2)):
        batched = search(model.predictor, model.joiner, enc.enc, enc.lengths)
        for b in range(3):
            T = int(enc.lengths[b])
            single = search(model.predictor, model.joiner, enc.enc[b : b + 1, :T], enc.lengths[b : b + 1])[0]
            assert [h.tokens for h in single.nbest] == [h.tokens for h in batched[b].nbest]
            assert [h.score for h in single.nbest] == pytest.approx([h.score for h in batched[b].nbest], abs=1e-4)


def test_beam_one_equals_greedy_one_symbol(setup):
    model, _, enc = setup
    g = GreedySearch(max_symbols=1)(model.predictor, model.joiner, enc.enc, enc.lengths)
    m = ModifiedBeamSearch(1)(model.predictor, model.joiner, enc.enc, enc.lengths)
    assert [r.best.tokens for r in g] == [r.best.tokens for r in m]
    assert any(r.best.tokens for r in g), "test model emits nothing; the comparison would be empty"


def test_time_synchronous_beam_one_equals_greedy(setup):
    """Beam 1 with the same symbol cap is greedy search under the standard topology
    (labels, then a blank that ends the frame), score included."""
    model, _, enc = setup
    g = GreedySearch(max_symbols=10)(model.predictor, model.joiner, enc.enc, enc.lengths)
    b = BeamSearch(1, max_symbols=10)(model.predictor, model.joiner, enc.enc, enc.lengths)
    assert [r.best.tokens for r in g] == [r.best.tokens for r in b]
    assert [r.best.score for r in g] == pytest.approx([r.best.score for r in b], abs=1e-4)
    assert any(r.best.tokens for r in g)


def test_nbest_sorted_unique_and_beam_not_worse(setup):
    model, _, enc = setup
    res = ModifiedBeamSearch(4)(model.predictor, model.joiner, enc.enc, enc.lengths)
    g = GreedySearch(1)(model.predictor, model.joiner, enc.enc, enc.lengths)
    for r, gr in zip(res, g):
        scores = [h.score for h in r.nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in r.nbest}) == len(r.nbest)
        assert len(r.nbest) == 4
        assert r.best.score >= gr.best.score - 1e-4


def test_las_rescoring_scores_and_weights(setup):
    model, _, enc = setup
    first = ModifiedBeamSearch(4)(model.predictor, model.joiner, enc.enc, enc.lengths)
    las_score_nbest(model.las, enc.enc, enc.lengths, first)
    h = first[1].nbest[2]
    T = int(enc.lengths[1])
    tgt = torch.tensor([h.tokens or [0]])
    out = model.las(enc.enc[1:2, :T], enc.lengths[1:2], tgt)
    direct = las_sequence_logprob(out, tgt, torch.tensor([len(h.tokens)]))
    assert h.las_score == pytest.approx(float(direct), abs=1e-4)
    w0, w1 = combine(first, 0.0), combine(first, 1.0)
    for r, a, b in zip(first, w0, w1):
        assert a.best.tokens == r.best.tokens  # w=0: RNN-T order
        assert b.best.las_score == max(x.las_score for x in r.nbest)  # w=1: LAS order
        mid = combine([r], 0.3)[0].best
        assert mid.score == pytest.approx(0.7 * mid.rnnt_score + 0.3 * mid.las_score)


def test_las_beam_search_finishes_with_eos(setup):
    model, _, enc = setup
    res = LASBeamSearch(beam_size=3, max_len_ratio=0.5)(model.las, enc.enc, enc.lengths)
    assert len(res) == 3
    for r in res:
        assert r.nbest and all(t >= 3 for h in r.nbest for t in h.tokens)
        scores = [h.score for h in r.nbest]
        assert scores == sorted(scores, reverse=True)


def test_decoder_options_validated_and_texts_filled(setup):
    model, tok, enc = setup
    with pytest.raises(ValueError, match="strategy"):
        DecodingOptions(strategy="viterbi")
    with pytest.raises(ValueError, match="las_weight"):
        DecodingOptions(las_weight=1.5)
    first, final = Decoder(model, tok, DecodingOptions(beam_size=3, las_weight=0.5)).decode_encoded(enc)
    for r in first + final:
        assert r.best.text == tok.decode(r.best.tokens)
    assert all(h.las_score is not None for r in final for h in r.nbest)


def test_beam_scores_never_exceed_the_sequence_probability(setup):
    """A hypothesis' score sums some of its alignments (<= 2 labels per frame): <= log P(y|x)."""
    model, _, enc = setup
    res = BeamSearch(4, max_symbols=2)(model.predictor, model.joiner, enc.enc, enc.lengths)
    checked = 0
    for b, r in enumerate(res):
        T = int(enc.lengths[b])
        for h in r.nbest:
            y = torch.tensor([h.tokens], dtype=torch.long)
            logits = model.joiner(enc.enc[b : b + 1, :T], model.predictor(y))
            logp = -rnnt_loss(logits, y.int(), torch.tensor([T]), torch.tensor([len(h.tokens)]), reduction="sum")
            assert h.score <= float(logp) + 1e-4, (h.score, float(logp))
            checked += 1
    assert checked == 12


def _teacher_forced_las(model, enc, b: int, tokens: list[int]) -> float:
    T = int(enc.lengths[b])
    tgt = torch.tensor([tokens or [0]])
    out = model.las(enc.enc[b : b + 1, :T], enc.lengths[b : b + 1], tgt)
    return float(las_sequence_logprob(out, tgt, torch.tensor([len(tokens)])))


def _exact_rnnt(model, enc, b: int, tokens: list[int]) -> float:
    """log P(y | x) by the plain reference loss, one sequence at a time."""
    T = int(enc.lengths[b])
    y = torch.tensor([tokens or [0]])
    logits = model.joiner(enc.enc[b : b + 1, :T], model.predictor(y))
    return -float(rnnt_loss_reference(logits, y.int(), torch.tensor([T]), torch.tensor([len(tokens)])))


def test_transducer_first_pass_scores_are_exact(setup, monkeypatch):
    """Packed rows of different lengths, across chunk boundaries, score like one at a time."""
    model, _, enc = setup
    monkeypatch.setattr(first_pass_module, "SCORE_CHUNK", 2)
    seqs = [(0, [3, 4, 5]), (1, []), (2, [7]), (0, [6, 6, 3, 8, 4]), (1, [3, 3])]
    owner = torch.tensor([b for b, _ in seqs])
    targets = torch.zeros(len(seqs), 5, dtype=torch.long)
    for i, (_, t) in enumerate(seqs):
        targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    tl = torch.tensor([len(t) for _, t in seqs])
    first = bind(ModifiedBeamSearch(2), model)
    with torch.no_grad():
        got = first.score(enc.enc[owner], enc.lengths[owner], targets, tl).tolist()
        want = [_exact_rnnt(model, enc, b, t) for b, t in seqs]
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("with_lm", [False, True])
def test_union_second_pass_scores_both_lists_with_both_models(setup, with_lm):
    model, tok, enc = setup
    lm = Lexicon({"ab": 3, "cab": 2, "dee": 1}, tok, oov_logprob=-6.0, word_bonus=1.0) if with_lm else None
    w = 0.6
    opts = DecodingOptions(beam_size=3, las_beam_size=3, las_max_len_ratio=0.5, second_pass="union", las_weight=w,
                           lm_weight=0.5 if with_lm else 0.0)  # fmt: skip
    dec = Decoder(model, tok, opts, lm)
    with torch.no_grad():
        first, final = dec.decode_encoded(enc)
        las_beam = LASBeamSearch(3, 0.5, lm, opts.lm_weight)(model.las, enc.enc, enc.lengths)  # the LM fused, as in the decoder
        for b, (f, l, r) in enumerate(zip(first, las_beam, final)):
            proposed = {tuple(h.tokens) for h in f.nbest} | {tuple(h.tokens) for h in l.nbest}
            assert {tuple(h.tokens) for h in r.nbest} == proposed
            assert len(r.nbest) == len(proposed) > len(f.nbest)  # LAS added hypotheses the first pass lacked
            for h in r.nbest:
                assert h.text == tok.decode(h.tokens)
                assert h.rnnt_score == pytest.approx(_exact_rnnt(model, enc, b, h.tokens), abs=1e-4)
                assert h.las_score == pytest.approx(_teacher_forced_las(model, enc, b, h.tokens), abs=1e-4)
                lm_score = 0.5 * lm.score_text(h.text) if with_lm else 0.0
                assert (h.lm_score or 0.0) == pytest.approx(lm_score, abs=1e-5)
                assert h.score == pytest.approx((1 - w) * h.rnnt_score + w * h.las_score + lm_score, abs=1e-4)
            scores = [h.score for h in r.nbest]
            assert scores == sorted(scores, reverse=True)


def test_las_beam_with_lm_splits_scores_and_spells_lexicon_words(setup):
    model, tok, enc = setup
    lm = Lexicon({"ab": 3, "cab": 2, "dee": 1}, tok, oov_logprob=-20.0, word_bonus=1.0)
    plain = LASBeamSearch(3, 1.0)(model.las, enc.enc, enc.lengths)
    strong = LASBeamSearch(3, 1.0, lm, lm_weight=2.0)(model.las, enc.enc, enc.lengths)
    spelt = [tok.decode(h.tokens) for r in plain for h in r.nbest]
    assert any(w not in ("ab", "cab", "dee") for t in spelt for w in t.split())  # the model alone spells non-words
    words = []
    for b, r in enumerate(strong):
        for h in r.nbest:
            text = tok.decode(h.tokens)
            words += text.split()
            assert all(w in ("ab", "cab", "dee") for w in text.split()), text
            assert h.lm_score == pytest.approx(2.0 * lm.score_text(text), abs=1e-4)
            assert h.las_score == pytest.approx(_teacher_forced_las(model, enc, b, h.tokens), abs=1e-4)
            assert h.score == pytest.approx(h.las_score + h.lm_score, abs=1e-4)
    assert len(words) >= 3


def test_tune_picks_a_length_bonus_that_stops_early_endings():
    """LAS likes ending early; a per-label bonus, tuned on dev with w, undoes it."""
    from sonus.asr.decoding import DecodeResult, Hypothesis
    from sonus.asr.infer import DecodedSet, tune_las_weight

    def utt(ref: str, cut: str) -> tuple[str, DecodeResult]:
        full = Hypothesis(list(range(len(ref))), 0.0, rnnt_score=-8.0, las_score=-20.0, text=ref)
        short = Hypothesis(list(range(len(cut))), 0.0, rnnt_score=-40.0, las_score=-5.0, text=cut)
        return ref, DecodeResult([short, full])

    pairs = [utt("horrible thousands push", "horrible"), utt("next mountain more", "next")]
    ds = DecodedSet(["a", "b"], [r for r, _ in pairs], [d for _, d in pairs], [d for _, d in pairs])
    w, bonus, table = tune_las_weight(ds, [0.7])
    assert (w, bonus) == (0.7, 0.0) and table[(0.7, 0.0)] > 0.6  # 0.3*-40 + 0.7*-5 beats 0.3*-8 + 0.7*-20
    w, bonus, table = tune_las_weight(ds, [0.7], [0.0, 0.5, 1.0])
    assert (w, bonus) == (0.7, 0.5) and table[(0.7, 0.5)] == 0.0  # the smallest bonus that fixes both
