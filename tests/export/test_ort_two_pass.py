"""onnxruntime's two-pass search (``OnnxRecognizer(strategy="modified_beam")``) against PyTorch's:
on the same encoder frames, the search and the LAS rescoring alone (scores within 1e-4); from
audio, the whole stream against ``StreamingDecoder`` with ``DecodingOptions(strategy=
"modified_beam", second_pass="rescore")`` (the same n-best after every chunk and at the end)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from sonus.asr.decoding import (
    BeamSearch,
    Decoder,
    DecodeResult,
    DecodingOptions,
    ModifiedBeamSearch,
    bind,
    combine,
)
from sonus.asr.decoding.las import las_score_nbest
from sonus.asr.streaming import StreamingDecoder
from sonus.cli import compose
from sonus.export import run_export
from sonus.export.onnx import ExportOptions, export_onnx
from sonus.export.ort_decoder import OnnxRecognizer, read_metadata
from sonus.export.ort_search import OnnxHypothesis

TOL = 1e-4  # the searches on the same encoder frames
STREAM_TOL = {"abs": 1e-3, "rel": 1e-5}  # whole streams: the graphs agree to 1e-4 a value, the sharp joiner amplifies it
LAS_WEIGHT = 0.7  # not the default, so that the weight is seen to be applied
MAX_SYMBOLS = 3  # the time-synchronous beam search's labels a frame
# (strategy, PyTorch's search): modified beam (one label a frame) and the time-synchronous beam
SEARCHES = {"modified_beam": lambda: ModifiedBeamSearch(4), "beam": lambda: BeamSearch(4, MAX_SYMBOLS)}


def _same_nbest(got: list[OnnxHypothesis], want: DecodeResult, what: str, las: bool, **tol: float) -> None:
    """Same token ids and texts in the same order, every score within ``tol``."""
    assert [h.tokens for h in got] == [h.tokens for h in want.nbest], what
    for g, w in zip(got, want.nbest):
        assert g.text == w.text, what
        assert (g.score, g.rnnt_score) == pytest.approx((w.score, w.rnnt_score), **tol), (what, g, w)
        if las:
            assert g.las_score == pytest.approx(w.las_score, **tol), (what, g, w)
        else:
            assert g.las_score is None, (what, g)


def _texts(rec: OnnxRecognizer, nbest: list[OnnxHypothesis]) -> list[OnnxHypothesis]:
    for h in nbest:
        h.text = rec.decode_text(h.tokens)
    return nbest


@pytest.mark.parametrize("strategy", list(SEARCHES))
@pytest.mark.parametrize("chunk", [1, 7])
@torch.no_grad()
def test_search_and_rescoring_equal_pytorch_on_the_same_frames(exported, chunk, strategy):
    """The same encoder frames, in chunks of ``chunk`` frames: the n-best of the onnxruntime search
    after every chunk, then after LAS rescoring, equal PyTorch's search (ModifiedBeamSearch or
    BeamSearch), las_score_nbest and combine (token ids, texts, order; RNN-T, LAS and combined
    scores within 1e-4)."""
    m, tok = exported.model, exported.tokenizer
    rec = OnnxRecognizer(exported.folder, strategy=strategy, beam_size=4, max_symbols_per_frame=MAX_SYMBOLS, las_weight=LAS_WEIGHT)
    search = bind(SEARCHES[strategy](), m)
    decoder = Decoder(m, tok, DecodingOptions(strategy=strategy, second_pass="none"))
    for i, wave in enumerate(exported.waves[:2]):
        enc = m.encode(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))  # (1, T, H)
        T, frames = int(enc.lengths[0]), enc.enc[0].numpy()
        state, ort_state = search.start(1, torch.device("cpu")), rec.search.start(rec.transducer)
        for t in range(0, T, chunk):
            piece = enc.enc[:, t : min(t + chunk, T)]
            state = search.run(piece, torch.tensor([piece.shape[1]]), state)
            ort_state = rec.search.run(rec.transducer, frames[t : t + piece.shape[1]], ort_state)
            want = decoder.texts(search.results(state))[0]
            _same_nbest(_texts(rec, rec.search.nbest(ort_state)), want, f"wave {i}, frames < {t + chunk}", False, abs=TOL)
        assert len(want.nbest) > 1 and len(want.best.tokens) > 0, (
            "the test model must give an n-best of labels, or the comparison proves nothing"
        )
        if m.las is None:
            continue
        las_score_nbest(m.las, enc.enc, enc.lengths, [want])
        want = combine([want], LAS_WEIGHT)[0]
        got = rec.rescorer.rescore(frames[:T], rec.search.nbest(ort_state), LAS_WEIGHT)
        _same_nbest(_texts(rec, got), want, f"wave {i}, rescored", True, abs=TOL)


@pytest.mark.parametrize("strategy", list(SEARCHES))
@pytest.mark.parametrize("chunk", [2560, 1000])
def test_streamed_two_pass_equals_pytorch(exported, chunk, strategy):
    """Audio streamed in chunks of ``chunk`` samples: the partial n-best after every chunk, then
    the final n-best (rescored with LAS when the model has it) equal StreamingDecoder's."""
    m, tok = exported.model, exported.tokenizer
    opts = DecodingOptions(
        strategy=strategy, beam_size=4, max_symbols_per_frame=MAX_SYMBOLS, las_weight=LAS_WEIGHT,
        second_pass="rescore" if m.las is not None else "none",
    )  # fmt: skip
    sd = StreamingDecoder(m, tok, opts)
    rec = OnnxRecognizer(exported.folder, strategy=strategy, beam_size=4, max_symbols_per_frame=MAX_SYMBOLS, las_weight=LAS_WEIGHT)
    assert rec.options.las_weight == LAS_WEIGHT
    for i, wave in enumerate(exported.waves[:2]):
        state, stream = sd.initial_state(1), rec.start()
        for s in range(0, len(wave), chunk):
            want, state = sd.step(torch.from_numpy(wave[None, s : s + chunk]), state)
            got = rec.accept(stream, wave[s : s + chunk])
            _same_nbest(got.nbest, want[0], f"wave {i}, partial after sample {s + chunk}", False, **STREAM_TOL)
            assert got.tokens == want[0].best.tokens
        first, final = sd.finish(state)
        got = rec.finish(stream)
        assert len(first[0].nbest) > 1 and len(first[0].best.tokens) > 0, (
            "the test model must give an n-best of labels, or the comparison proves nothing"
        )
        _same_nbest(got.nbest, final[0], f"wave {i}, final", m.las is not None, **STREAM_TOL)
        assert (got.tokens, got.text) == (final[0].best.tokens, final[0].best.text)
        assert got.score == got.nbest[0].rnnt_score
        assert got.las_score == got.nbest[0].las_score
        # the first pass' n-best, whatever the rescoring did to its order
        assert {tuple(h.tokens): h.rnnt_score for h in got.nbest} == pytest.approx(
            {tuple(h.tokens): h.score for h in first[0].nbest}, **STREAM_TOL
        )
        if m.las is not None:
            for h in got.nbest:
                assert h.score == pytest.approx((1 - LAS_WEIGHT) * h.rnnt_score + LAS_WEIGHT * h.las_score, abs=1e-9)


def test_greedy_stays_the_default_and_has_a_one_best(exported):
    rec = OnnxRecognizer(exported.folder, max_symbols_per_frame=3)
    assert rec.options.strategy == "greedy"
    res = rec.transcribe(exported.waves[0])
    assert len(res.nbest) == 1 and res.nbest[0].tokens == res.tokens
    assert res.nbest[0].rnnt_score == res.score
    assert (res.las_score is None) == (exported.model.las is None)


def test_beam_of_one_is_greedy_with_one_label_a_frame(exported):
    """Modified beam search with K = 1 keeps the best extension every frame: the labels of greedy
    search with at most one label a frame. Its score is higher: a label moves it to the next
    frame, where greedy charges the blank that ends the frame too."""
    wave = exported.waves[0]
    beam = OnnxRecognizer(exported.folder, strategy="modified_beam", beam_size=1, las=False).transcribe(wave)
    greedy = OnnxRecognizer(exported.folder, max_symbols_per_frame=1, las=False).transcribe(wave)
    assert beam.tokens == greedy.tokens
    assert len(beam.tokens) > 0
    assert beam.score > greedy.score


def test_without_las_the_nbest_is_not_rescored(export_variant):
    ex = export_variant("lstm_stack_las")
    res = OnnxRecognizer(ex.folder, strategy="modified_beam", las=False).transcribe(ex.waves[0])
    assert len(res.nbest) > 1
    assert all(h.las_score is None and h.score == h.rnnt_score for h in res.nbest)
    assert [h.score for h in res.nbest] == sorted((h.score for h in res.nbest), reverse=True)


@pytest.mark.parametrize(
    "kw, field",
    [({"strategy": "las_beam"}, "strategy"), ({"beam_size": 0}, "beam_size"), ({"las_weight": 1.5}, "las_weight")],
)
def test_bad_options_name_the_field(export_variant, kw, field):
    with pytest.raises(ValueError, match=field):
        OnnxRecognizer(export_variant("gru_pool_sp").folder, **kw)


def test_las_weight_default_comes_from_the_training_config(export_variant, tmp_path):
    """metadata.json's ``decoding`` holds the run's decoding.las_weight (config.yaml beside the
    checkpoint), DecodingOptions' default without one; the recognizer uses it unless told."""
    ex = export_variant("gru_pool_sp")
    assert read_metadata(ex.folder)["decoding"] == {"las_weight": 0.5, "length_bonus": 0.0, "from": None, "lm_weight": 0.0}
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ex.checkpoint, run / "best.ckpt")
    (run / "config.yaml").write_text("decoding:\n  strategy: beam\n  las_weight: 0.3\n  length_bonus: 0.25\n")
    export_onnx(run / "best.ckpt", tmp_path / "onnx", ExportOptions(length_bonus=0.0))
    meta = read_metadata(tmp_path / "onnx")["decoding"]
    assert meta == {"las_weight": 0.3, "length_bonus": 0.0, "from": str(run / "config.yaml"), "lm_weight": 0.0}
    assert OnnxRecognizer(tmp_path / "onnx").options.las_weight == 0.3
    assert OnnxRecognizer(tmp_path / "onnx", las_weight=0.0).options.las_weight == 0.0


def test_recognizer_returns_numpy_free_floats(export_variant):
    """Scores are Python floats (JSON-serialisable), not numpy scalars."""
    ex = export_variant("lstm_stack_las")
    res = OnnxRecognizer(ex.folder, strategy="modified_beam").transcribe(ex.waves[1])
    for h in res.nbest:
        assert all(type(x) is float for x in (h.score, h.rnnt_score, h.las_score)), h
    assert not any(isinstance(t, np.integer) for h in res.nbest for t in h.tokens)


def test_cli_export_takes_the_las_weight(export_variant, tmp_path):
    """``sonus export ... +las_weight=W`` writes W as the recognizer's default."""
    ex = export_variant("gru_pool_sp")
    run_export(compose("export", [f"checkpoint={ex.checkpoint}", f"output_dir={tmp_path}", "+las_weight=0.2"]))
    assert read_metadata(tmp_path)["decoding"]["las_weight"] == 0.2
    assert OnnxRecognizer(tmp_path).options.las_weight == 0.2
