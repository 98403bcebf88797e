"""The union second pass in the onnxruntime path (``OnnxRecognizer(second_pass="union")``)
against PyTorch's (``decoding.second_pass=union``): the transducer's exact score of any label
sequence, LAS beam search (with and without the lexicon LM), and whole streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonus.asr.decoding import BeamSearch, DecodingOptions, bind
from sonus.asr.decoding.las import LASBeamSearch as TorchLASBeam
from sonus.asr.infer import load_lexicon
from sonus.asr.streaming import StreamingDecoder
from sonus.export.ort_decoder import OnnxRecognizer
from sonus.export.ort_lexicon import LexiconTables
from sonus.export.ort_union import LASBeamSearch, lm_logprob, transducer_logprob
from sonus.text.tokenizer import CharTokenizer

from .test_ort_lm import LM_WEIGHT, OOV_LOGPROB, WORD_BONUS, WORDS

TOL = 1e-4
STREAM_TOL = {"abs": 1e-3, "rel": 1e-5}  # as test_ort_two_pass: whole streams through the graphs
LAS_VARIANTS = ["lstm_stack_las", "conformer_conv2d_left1_las"]


@pytest.fixture(scope="module", params=LAS_VARIANTS)
def with_las(request, export_variant):
    return export_variant(request.param)


@pytest.fixture(scope="module")
def lexicon(tmp_path_factory, export_variant):
    """The PyTorch lexicon of test_ort_lm's words over the character tokenizer of the LAS variants."""
    words = tmp_path_factory.mktemp("words") / "words.txt"
    words.write_text(WORDS)
    return load_lexicon(words, export_variant(LAS_VARIANTS[0]).tokenizer, {}, OOV_LOGPROB, WORD_BONUS)


def _enc(ex, wave):
    with torch.no_grad():
        enc = ex.model.encode(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    return enc, enc.enc[0, : int(enc.lengths[0])].numpy()


def test_transducer_logprob_equals_the_first_pass_score(exported):
    """Any label sequence (empty, short, longer than the frames allow one a frame): the exact
    log P(y | x) over all alignments equals FirstPass.score's (PyTorch's RNN-T loss)."""
    m = exported.model
    rec = OnnxRecognizer(exported.folder, las=False)
    first = bind(BeamSearch(4, 3), m)
    rng = np.random.default_rng(0)
    V = exported.tokenizer.vocab_size
    for wave in exported.waves[:2]:
        enc, frames = _enc(exported, wave)
        T = frames.shape[0]
        for n in (0, 1, 3, T + 2):
            y = rng.integers(1, V, n).tolist()  # any labels but blank
            want = first.score(enc.enc, enc.lengths, torch.tensor([y or [0]]), torch.tensor([n]))[0]
            got = transducer_logprob(rec.transducer, frames, y)
            assert got == pytest.approx(float(want), abs=TOL, rel=1e-6), (n, got, float(want))


@pytest.mark.parametrize("lm", [False, True], ids=["no_lm", "lm"])
@pytest.mark.parametrize("K", [1, 3])
def test_las_beam_search_equals_pytorch(with_las, lexicon, lm, K):
    """On the same encoder frames: the same finished hypotheses in the same order, their total,
    LAS and LM scores within 1e-4."""
    m = with_las.model
    tables = LexiconTables(lexicon.tables()) if lm else None
    weight = LM_WEIGHT if lm else 0.0
    rec = OnnxRecognizer(with_las.folder)
    ours = LASBeamSearch(rec.rescorer, K, 3.0, tables, weight)
    theirs = TorchLASBeam(K, 3.0, lexicon if lm else None, weight)
    seen = set()
    for wave in with_las.waves[:3]:
        enc, frames = _enc(with_las, wave)
        want = theirs(m.las, enc.enc, enc.lengths)[0].nbest
        got = ours(frames)
        assert [h.tokens for h in got] == [h.tokens for h in want]
        for g, w in zip(got, want):
            assert (g.score, g.las_score) == pytest.approx((w.score, w.las_score), abs=TOL)
            assert (g.lm_score is None) == (not lm) and (not lm or g.lm_score == pytest.approx(w.lm_score, abs=TOL))
        seen |= {tuple(h.tokens) for h in got}
    assert any(seen), "LAS beam search found only empty hypotheses: the comparison shows little"


def test_lm_logprob_is_the_lexicons_text_score(lexicon):
    """Stepping a label sequence's tables and closing its last word gives Lexicon.score_text of
    its text: known words, unknown ones, a prefix, nothing."""
    tables, tok = LexiconTables(lexicon.tables()), CharTokenizer("abcdef ")
    for text in ("abc fed", "face bad bad", "fad dab", "eee cab", "fac", "", "cab dec face"):
        want = lexicon.score_text(text)
        assert lm_logprob(tables, tok.encode(text), blank=0) == pytest.approx(want, abs=1e-4), text


@pytest.mark.parametrize("lm", [False, True], ids=["no_lm", "lm"])
def test_streamed_union_equals_pytorch(with_las, lexicon, tmp_path, lm):
    """From audio in 160 ms chunks: the final n-best of the union (first-pass beam 4 and LAS beam
    3, each hypothesis scored by the transducer, LAS and the LM) equals StreamingDecoder's."""
    m, tok = with_las.model, with_las.tokenizer
    folder = with_las.folder
    if lm:  # the same export with the lexicon's tables beside it
        from sonus.export.onnx import ExportOptions, export_onnx

        words = tmp_path / "words.txt"
        words.write_text(WORDS)
        folder = tmp_path / "onnx"
        export_onnx(with_las.checkpoint, folder, ExportOptions(lm_text=str(words), lm_weight=LM_WEIGHT, lm_oov_logprob=OOV_LOGPROB, lm_word_bonus=WORD_BONUS))
    opts = DecodingOptions(strategy="beam", beam_size=4, max_symbols_per_frame=3, las_weight=0.6, length_bonus=0.3,
                           second_pass="union", las_beam_size=3, lm_weight=LM_WEIGHT if lm else 0.0)  # fmt: skip
    sd = StreamingDecoder(m, tok, opts, lm=lexicon if lm else None)
    rec = OnnxRecognizer(folder, strategy="beam", beam_size=4, max_symbols_per_frame=3, las_weight=0.6, length_bonus=0.3,
                         second_pass="union", las_beam_size=3)  # fmt: skip
    grew = False
    for i, wave in enumerate(with_las.waves[:3]):
        state, stream = sd.initial_state(1), rec.start()
        for s in range(0, len(wave), 2560):
            _, state = sd.step(torch.from_numpy(wave[None, s : s + 2560]), state)
            rec.accept(stream, wave[s : s + 2560])
        first, final = sd.finish(state)
        got = rec.finish(stream)
        assert [h.tokens for h in got.nbest] == [h.tokens for h in final[0].nbest], i
        assert got.text == final[0].best.text
        for g, w in zip(got.nbest, final[0].nbest):
            assert (g.score, g.rnnt_score, g.las_score) == pytest.approx((w.score, w.rnnt_score, w.las_score), **STREAM_TOL), (i, g, w)
            assert (g.lm_score is None) == (not lm)
            if lm:
                assert g.lm_score == pytest.approx(w.lm_score, **STREAM_TOL)
            assert g.score == pytest.approx(0.4 * g.rnnt_score + 0.6 * g.las_score + 0.3 * len(g.tokens) + (g.lm_score or 0.0), abs=1e-6)
        grew |= len(final[0].nbest) > len(first[0].nbest)
    assert grew, "LAS beam search never added a hypothesis: the union was not exercised"


def test_union_needs_las_and_a_known_second_pass(export_variant):
    with pytest.raises(ValueError, match="needs LAS"):
        OnnxRecognizer(export_variant("gru_pool_sp").folder, second_pass="union")
    with pytest.raises(ValueError, match="second_pass"):
        OnnxRecognizer(export_variant(LAS_VARIANTS[0]).folder, second_pass="las_beam")
    with pytest.raises(ValueError, match="las_beam_size"):
        OnnxRecognizer(export_variant(LAS_VARIANTS[0]).folder, second_pass="union", las_beam_size=0)
