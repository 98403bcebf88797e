"""The lexicon LM in the onnxruntime path: ``sonus export ... lm.text=FILE`` writes its tables
(``lexicon.npz``), and ``OnnxRecognizer(strategy="modified_beam", lm_weight=W)`` fuses them as
PyTorch's ModifiedBeamSearch and StreamingDecoder do (the same n-best, scores within 1e-4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sonus.asr.decoding import (
    BeamSearch,
    Decoder,
    DecodingOptions,
    ModifiedBeamSearch,
    bind,
)
from sonus.asr.decoding.lexicon import OOV, ROOT
from sonus.asr.infer import load_lexicon
from sonus.asr.streaming import StreamingDecoder
from sonus.cli import compose
from sonus.export import ort_lexicon, run_export
from sonus.export.onnx import ExportOptions, export_onnx
from sonus.export.ort_decoder import OnnxRecognizer, read_metadata
from sonus.export.ort_lexicon import LexiconTables

# the words of the test models' texts, and two more that share their prefixes
WORDS = "abc fed bad\ncab dec face\nface bad bad\ndec abc cab\nfad dab\n"
# not the defaults, so that each is seen to be applied; a bonus that outweighs the OOV cost, so that the
# LM draws the random test models' n-best away from the spaces they emit most
LM_WEIGHT, OOV_LOGPROB, WORD_BONUS = 0.6, -2.0, 2.5
TOL = 1e-4
STREAM_TOL = {"abs": 1e-3, "rel": 1e-5}  # as test_ort_two_pass: whole streams through the graphs
SEARCHES = {"modified_beam": lambda *lm: ModifiedBeamSearch(4, *lm), "beam": lambda *lm: BeamSearch(4, 3, *lm)}


@dataclass
class WithLM:
    ex: object  # conftest.Exported
    folder: Path  # the export with the lexicon
    lexicon: object  # the PyTorch Lexicon of the same words


@pytest.fixture(scope="module")
def with_lm(exported, tmp_path_factory) -> WithLM:
    tmp = tmp_path_factory.mktemp("lm")
    (tmp / "words.txt").write_text(WORDS)
    opts = ExportOptions(lm_text=str(tmp / "words.txt"), lm_weight=LM_WEIGHT, lm_oov_logprob=OOV_LOGPROB, lm_word_bonus=WORD_BONUS)
    export_onnx(exported.checkpoint, tmp / "onnx", opts)
    lex = load_lexicon(tmp / "words.txt", exported.tokenizer, {}, OOV_LOGPROB, WORD_BONUS)
    return WithLM(exported, tmp / "onnx", lex)


def test_tables_step_as_the_lexicon(with_lm):
    """LexiconTables.step (numpy) gives Lexicon.step's scores and next states for every trie node."""
    lex = with_lm.lexicon
    assert (ort_lexicon.ROOT, ort_lexicon.OOV) == (ROOT, OOV)  # numpy's copy of the lexicon's states
    tables = LexiconTables.load(with_lm.folder / "lexicon.npz")
    nodes = torch.arange(lex.num_nodes)
    want_score, want_next = lex.step(nodes)
    got_score, got_next = tables.step(nodes.numpy(), blank=0)
    assert got_score.dtype == np.float32
    np.testing.assert_array_equal(got_next, want_next.numpy())
    np.testing.assert_allclose(got_score, want_score.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(tables.final, lex.final.numpy())
    # the tables are not trivial: labels that stay on the trie, leave it, and start words
    assert (got_next[ROOT] > OOV).any() and (got_next[2:] == OOV).any() and tables.starts.any()


@pytest.mark.parametrize("strategy", list(SEARCHES))
@pytest.mark.parametrize("chunk", [1, 5])
@torch.no_grad()
def test_fused_search_equals_pytorch_on_the_same_frames(with_lm, chunk, strategy):
    """The same encoder frames in chunks: the n-best after every chunk (tokens, order; total, RNN-T
    and LM scores within 1e-4) equals PyTorch's search (modified or time-synchronous beam, 3
    labels a frame) with the same lexicon and weight."""
    m, tok = with_lm.ex.model, with_lm.ex.tokenizer
    rec = OnnxRecognizer(with_lm.folder, strategy=strategy, beam_size=4, max_symbols_per_frame=3, las=False)
    assert rec.options.lm_weight == LM_WEIGHT  # the export's default
    search = bind(SEARCHES[strategy](with_lm.lexicon, LM_WEIGHT), m)
    plain = bind(SEARCHES[strategy](), m)
    decoder = Decoder(m, tok, DecodingOptions(strategy="modified_beam", second_pass="none"))
    changed = False
    for i, wave in enumerate(with_lm.ex.waves[:2]):
        enc = m.encode(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        T, frames = int(enc.lengths[0]), enc.enc[0].numpy()
        state, ort_state = search.start(1, torch.device("cpu")), rec.search.start(rec.transducer)
        plain_state = plain.start(1, torch.device("cpu"))
        for t in range(0, T, chunk):
            piece = enc.enc[:, t : min(t + chunk, T)]
            state = search.run(piece, torch.tensor([piece.shape[1]]), state)
            plain_state = plain.run(piece, torch.tensor([piece.shape[1]]), plain_state)
            ort_state = rec.search.run(rec.transducer, frames[t : t + piece.shape[1]], ort_state)
            want = decoder.texts(search.results(state))[0]
            got = rec.search.nbest(ort_state)
            what = f"wave {i}, frames < {t + chunk}"
            assert [h.tokens for h in got] == [h.tokens for h in want.nbest], what
            for g, w in zip(got, want.nbest):
                assert (g.score, g.rnnt_score, g.lm_score) == pytest.approx((w.score, w.rnnt_score, w.lm_score), abs=TOL), (what, g, w)
                assert g.score == pytest.approx(g.rnnt_score + g.lm_score, abs=1e-9)
        assert len(want.nbest) > 1 and any(h.tokens for h in want.nbest), "the comparison needs an n-best of labels"
        changed |= [h.tokens for h in want.nbest] != [h.tokens for h in plain.results(plain_state)[0].nbest]
    assert changed, "the LM never changed the n-best: the test shows nothing about fusion"


@pytest.mark.parametrize("chunk", [2560])
def test_streamed_with_lm_equals_pytorch(with_lm, chunk):
    """From audio, with LAS rescoring when the model has it: partial and final n-best equal
    StreamingDecoder's with the same lexicon (the fused LM score stays in the rescored score)."""
    m, tok = with_lm.ex.model, with_lm.ex.tokenizer
    second = "rescore" if m.las is not None else "none"
    opts = DecodingOptions(strategy="modified_beam", beam_size=4, las_weight=0.7, second_pass=second, lm_weight=LM_WEIGHT)
    sd = StreamingDecoder(m, tok, opts, lm=with_lm.lexicon)
    rec = OnnxRecognizer(with_lm.folder, strategy="modified_beam", beam_size=4, las_weight=0.7)
    for i, wave in enumerate(with_lm.ex.waves[:2]):
        state, stream = sd.initial_state(1), rec.start()
        for s in range(0, len(wave), chunk):
            want, state = sd.step(torch.from_numpy(wave[None, s : s + chunk]), state)
            got = rec.accept(stream, wave[s : s + chunk])
            assert [h.tokens for h in got.nbest] == [h.tokens for h in want[0].nbest], (i, s)
        _, final = sd.finish(state)
        got = rec.finish(stream)
        assert [h.tokens for h in got.nbest] == [h.tokens for h in final[0].nbest], i
        assert got.text == final[0].best.text
        for g, w in zip(got.nbest, final[0].nbest):
            assert (g.score, g.rnnt_score, g.lm_score) == pytest.approx((w.score, w.rnnt_score, w.lm_score), **STREAM_TOL)
            if m.las is not None:
                assert g.score == pytest.approx(0.3 * g.rnnt_score + 0.7 * g.las_score + g.lm_score, abs=1e-6)


def test_lm_weight_defaults_and_errors(with_lm, export_variant):
    """The export's weight is modified_beam's default; greedy does not fuse (and refuses a weight);
    an export without a lexicon refuses one, naming metadata.json."""
    meta = read_metadata(with_lm.folder)
    assert meta["lexicon"]["file"] == "lexicon.npz" and meta["lexicon"]["oov_logprob"] == OOV_LOGPROB
    assert meta["decoding"]["lm_weight"] == LM_WEIGHT
    assert OnnxRecognizer(with_lm.folder).options.lm_weight == 0.0  # greedy
    assert OnnxRecognizer(with_lm.folder, strategy="modified_beam", lm_weight=0.0).lm is None
    with pytest.raises(ValueError, match="modified_beam"):
        OnnxRecognizer(with_lm.folder, lm_weight=0.5)
    with pytest.raises(ValueError, match="lm_weight"):
        OnnxRecognizer(with_lm.folder, strategy="modified_beam", lm_weight=-1.0)
    plain = export_variant("gru_pool_sp").folder
    assert read_metadata(plain)["lexicon"] is None
    with pytest.raises(ValueError, match="metadata.json"):
        OnnxRecognizer(plain, strategy="modified_beam", lm_weight=0.5)


def test_cli_export_writes_the_lexicon(with_lm, tmp_path):
    """``sonus export ... lm.text=FILE lm.weight=W``; a weight without a text names the field."""
    words = tmp_path / "words.txt"
    words.write_text(WORDS)
    ckpt = with_lm.ex.checkpoint
    run_export(compose("export", [f"checkpoint={ckpt}", f"output_dir={tmp_path / 'o'}", f"lm.text={words}", "lm.weight=0.25"]))
    assert (tmp_path / "o" / "lexicon.npz").is_file()
    rec = OnnxRecognizer(tmp_path / "o", strategy="modified_beam")
    assert rec.options.lm_weight == 0.25 and rec.lm is not None
    with pytest.raises(ValueError, match="lm.weight"):
        run_export(compose("export", [f"checkpoint={ckpt}", f"output_dir={tmp_path / 'p'}", "lm.weight=0.25"]))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        run_export(compose("export", [f"checkpoint={ckpt}", f"output_dir={tmp_path / 'q'}", f"lm.text={tmp_path / 'missing.txt'}"]))
