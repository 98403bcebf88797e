"""Streaming recognition: with a causal encoder, streamed == offline whatever the chunking.

Features, hypotheses and texts are identical. Scores agree to float32 rounding, not to the
bit: nn.LSTM rounds a one-frame call (a 40 ms piece, or the last frame at the end of a
stream) differently from the same frame inside a longer call, by ~3e-8.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from sonus.asr import StreamingDecoder
from sonus.asr.decoding import Decoder, DecodeResult, DecodingOptions
from sonus.asr.model import TwoPassASR
from sonus.text.tokenizer import CharTokenizer

from .test_model import small_config

WAVE_LENGTHS = [12000, 9000, 5037]  # 5037: not a whole number of hops, nor of encoder frames


@pytest.fixture(scope="module")
def setup():
    return sharp_model()


def sharp_model():
    """A random unidirectional model with sharp posteriors (so hypotheses are not empty) and
    non-trivial CMVN statistics (so padding frames are not zeros after normalisation), a
    character tokenizer, (3, S) audio and its lengths."""
    torch.manual_seed(0)
    tok = CharTokenizer("abcde ")
    model = TwoPassASR(replace(small_config(tok.vocab_size), ctc_head=True), specaug=None, gain=None).eval()
    with torch.no_grad():
        model.ctc.weight.mul_(30.0)  # the CTC head is built last: the transducer's weights are as without it
        model.joiner.enc_proj.weight.mul_(30.0)
        model.joiner.out.weight.mul_(3.0)
        model.joiner.out.bias[0] += 2.0
        model.cmvn.mean.normal_()
        model.cmvn.inv_std.uniform_(0.5, 1.5)
    wave = torch.randn(3, max(WAVE_LENGTHS)) * 0.3
    for b, n in enumerate(WAVE_LENGTHS):
        wave[b, n:] = 0.0
    return model, tok, wave, torch.tensor(WAVE_LENGTHS)


def stream(sd: StreamingDecoder, wave: torch.Tensor, lengths: torch.Tensor, chunk: int):
    """Feed (B, S) audio in pieces of ``chunk`` samples -> (partials after each piece, first, final)."""
    state = sd.initial_state(wave.shape[0])
    partials = []
    for s in range(0, int(lengths.max()), chunk):
        piece = wave[:, s : s + chunk]
        partial, state = sd.step(piece, state, (lengths - s).clamp(0, piece.shape[1]))
        partials.append(partial)
    return (partials, *sd.finish(state))


def assert_same(results: list[DecodeResult], expected: list[DecodeResult]) -> None:
    assert [[(h.tokens, h.text) for h in r.nbest] for r in results] == [[(h.tokens, h.text) for h in r.nbest] for r in expected]
    for field in ("score", "rnnt_score", "las_score"):
        got = [getattr(h, field) for r in results for h in r.nbest]
        want = [getattr(h, field) for r in expected for h in r.nbest]
        assert [g is None for g in got] == [w is None for w in want], field  # unset alike (union: first pass' las_score)
        got, want = [g for g in got if g is not None], [w for w in want if w is not None]
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6), field


OPTIONS = {
    "greedy": DecodingOptions(strategy="greedy", max_symbols_per_frame=3, las_weight=0.5),
    "modified_beam": DecodingOptions(strategy="modified_beam", beam_size=4, las_weight=0.5),
    "beam": DecodingOptions(strategy="beam", beam_size=3, max_symbols_per_frame=2, las_weight=0.5),
    "ctc_greedy": DecodingOptions(strategy="ctc_greedy", las_weight=0.5),
    "ctc_prefix_beam": DecodingOptions(strategy="ctc_prefix_beam", beam_size=4, las_weight=0.5),
    # the union second pass: exact first-pass scores (transducer and CTC) and LAS beam search
    "beam+union": DecodingOptions(strategy="beam", beam_size=3, max_symbols_per_frame=2, second_pass="union", las_beam_size=3),
    "ctc_prefix_beam+union": DecodingOptions(strategy="ctc_prefix_beam", beam_size=3, second_pass="union", las_beam_size=3),
}


@pytest.mark.parametrize("strategy", list(OPTIONS))
@pytest.mark.parametrize("chunk", [2560, 1000, 4321, 150])  # 160 ms; not multiples of the 160-sample hop; less than a hop
def test_streamed_equals_offline_one_utterance(setup, strategy, chunk):
    model, tok, wave, lengths = setup
    opts = OPTIONS[strategy]
    off_first, off_final = Decoder(model, tok, opts).decode(wave[:1], lengths[:1])
    _, first, final = stream(StreamingDecoder(model, tok, opts), wave[:1], lengths[:1], chunk)
    assert_same(first, off_first)
    assert_same(final, off_final)
    assert any(h.tokens for h in off_first[0].nbest), "the test model emits nothing: the comparison would be empty"
    assert all(h.las_score is not None for h in final[0].nbest)


@pytest.mark.parametrize("strategy", ["greedy", "modified_beam"])
def test_streams_that_end_early_equal_the_offline_batch(setup, strategy):
    model, tok, wave, lengths = setup
    opts = OPTIONS[strategy]
    off_first, off_final = Decoder(model, tok, opts).decode(wave, lengths)
    _, first, final = stream(StreamingDecoder(model, tok, opts), wave, lengths, 2560)
    assert_same(first, off_first)
    assert_same(final, off_final)


def test_greedy_partials_are_prefixes_of_what_follows(setup):
    model, tok, wave, lengths = setup
    sd = StreamingDecoder(model, tok, OPTIONS["greedy"])
    partials, first, _ = stream(sd, wave[:1], lengths[:1], sd.chunk_samples)
    assert len(partials) == -(-int(lengths[0]) // sd.chunk_samples)
    seqs = [p[0].best.tokens for p in partials] + [first[0].best.tokens]
    for a, b in itertools.pairwise(seqs):
        assert b[: len(a)] == a, (a, b)
    assert len({len(s) for s in seqs}) > 3, "partials do not grow: the prefix check is vacuous"
    assert partials[-1][0].best.text == tok.decode(partials[-1][0].best.tokens)


def test_beam_partials_are_ranked_nbest_lists(setup):
    model, tok, wave, lengths = setup
    sd = StreamingDecoder(model, tok, OPTIONS["modified_beam"])
    partials, _, _ = stream(sd, wave[:1], lengths[:1], sd.chunk_samples)
    for (p,) in partials[2:]:
        scores = [h.score for h in p.nbest]
        assert len(p.nbest) == 4 and scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in p.nbest}) == 4


def test_chunk_size_and_batch_checks(setup):
    model, tok, wave, _ = setup
    sd = StreamingDecoder(model, tok, OPTIONS["greedy"], chunk_ms=160)
    assert sd.chunk_samples == 2560
    state = sd.initial_state(2)
    with pytest.raises(AssertionError, match="2"):
        sd.step(wave[:1, :2560], state)
    partial, state = sd.step(wave[:2, :100], state)  # less than a frame: nothing decoded yet
    assert [r.best.tokens for r in partial] == [[], []] and state.frames == 0


def test_conformer_encoder_streams(setup):
    """The streaming decoder only uses the encoder's initial_state/step interface; a chunked
    Conformer gives the offline tokens (its attention sums in another order, so scores are close)."""
    from sonus.nn import conformer
    model, tok, wave, lengths = setup
    torch.manual_seed(1)
    cfg = conformer.ConformerConfig(d_model=32, layers=2, heads=2, conv_kernel=5, subsampling_channels=8, chunk_size=4, left_chunks=2)
    m = TwoPassASR(model.cfg, specaug=None, gain=None)
    m.load_state_dict(model.state_dict())
    m.encoder = conformer.ConformerEncoder(model.cfg.n_mels, cfg)
    m.eval()
    with torch.no_grad():  # the Conformer's outputs are layer-normed: about 30 times the LSTM's
        m.joiner.enc_proj.weight.div_(30.0)
        m.joiner.out.bias[0] -= 4.0
    for strategy in ("greedy", "modified_beam"):
        off_first, off_final = Decoder(m, tok, OPTIONS[strategy]).decode(wave[:1], lengths[:1])
        _, first, final = stream(StreamingDecoder(m, tok, OPTIONS[strategy]), wave[:1], lengths[:1], 1000)
        for a, b in ((first, off_first), (final, off_final)):
            assert [h.tokens for h in a[0].nbest] == [h.tokens for h in b[0].nbest]
            assert [h.score for h in a[0].nbest] == pytest.approx([h.score for h in b[0].nbest], rel=1e-5, abs=1e-5)
        assert len(off_first[0].best.tokens) > 3
