"""Decoding: batched == one at a time, beam 1 == greedy, rescoring arithmetic, LAS beam."""

from __future__ import annotations

import pytest
import torch

from sonus.asr.decoding import Decoder, DecodingOptions
from sonus.asr.decoding.las import LASBeamSearch, combine, las_score_nbest
from sonus.asr.decoding.rnnt import BeamSearch, GreedySearch, ModifiedBeamSearch
from sonus.asr.loss import rnnt_loss
from sonus.asr.las import las_sequence_logprob
from sonus.asr.model import TwoPassASR
from sonus.text.tokenizer import CharTokenizer

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
    model, tok, enc = setup
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
