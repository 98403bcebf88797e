"""ONNX export: every graph reproduces its PyTorch counterpart, and the onnxruntime streaming
greedy recognizer reproduces PyTorch's streaming greedy transcript, token for token."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sonus.asr.decoding import DecodingOptions
from sonus.asr.encoder import EncoderState
from sonus.asr.streaming import StreamingDecoder
from sonus.cli import main
from sonus.export.ort_decoder import OnnxRecognizer

ATOL = 1e-4


def _session(folder, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )


def _close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4, err_msg=what)


def test_frontend_graph_matches_streaming_features(exported):
    """Audio with a non-zero history: the frames StreamingDecoder._features computes (LogMel + CMVN)."""
    m, g = exported.model, torch.Generator().manual_seed(3)
    sd = StreamingDecoder(
        m, exported.tokenizer, DecodingOptions(strategy="greedy", second_pass="none")
    )
    for n in (1, 7):
        buf = torch.randn(2, sd.context + n * sd.hop, generator=g) * 0.3
        feats, _ = m.frontend(buf, torch.full((2,), buf.shape[1]))
        want = m.cmvn(feats[:, sd.context // sd.hop :])  # (2, n, F)
        got = _session(exported.folder, "frontend").run(None, {"audio": buf.numpy()})[0]
        _close(got, want, f"frontend n={n}")


def test_encoder_graph_matches_step(exported):
    m, g = exported.model, torch.Generator().manual_seed(4)
    if m.cfg.encoder.kind != "lstm":
        pytest.skip("the Conformer's encoder graph is tested in test_onnx_conformer.py")
    L, H, r = m.cfg.encoder.layers, m.encoder.out_dim, m.cfg.encoder.reduction
    for groups in (1, 5):
        x, h, c = (
            torch.randn(2, groups * r, m.in_dim, generator=g),
            torch.randn(L, 2, H, generator=g),
            torch.randn(L, 2, H, generator=g),
        )
        y, st = m.encoder.step(x, EncoderState(h, c, x.new_zeros(2, 0, m.in_dim)))
        got = _session(exported.folder, "encoder").run(
            None, {"feats": x.numpy(), "h_in": h.numpy(), "c_in": c.numpy()}
        )
        for a, b, what in zip(got, (y, st.h, st.c), ("enc", "h", "c")):
            _close(a, b, f"encoder {what}, {groups} groups")


@torch.no_grad()
def test_predictor_and_joiner_graphs_match(exported):
    m, g = exported.model, torch.Generator().manual_seed(5)
    tokens = torch.tensor([0, 3, m.cfg.vocab_size - 1])
    state = tuple(
        torch.randn(s.shape, generator=g)
        for s in m.predictor.initial_state(3, torch.device("cpu"))
    )
    out, new = m.predictor.step(tokens, state)
    names = ["h_in", "c_in"][: len(state)]
    got = _session(exported.folder, "predictor").run(
        None, {"tokens": tokens.numpy()} | {k: s.numpy() for k, s in zip(names, state)}
    )
    for a, b, what in zip(got, (out, *new), ("pred", "h", "c")):
        _close(a, b, f"predictor {what}")
    joiner = _session(exported.folder, "joiner")
    # a chunk against one output, one frame against rows, row by row
    for ne, np_ in (
        (5, 1),
        (1, 4),
        (3, 3),
    ):
        enc, pred = (
            torch.randn(ne, m.encoder.out_dim, generator=g),
            torch.randn(np_, m.predictor.out_dim, generator=g),
        )
        want = m.joiner(enc[None], pred[None])[0]  # (ne, np, V)
        want = (
            want[:, 0]
            if np_ == 1
            else want[0]
            if ne == 1
            else want.diagonal(dim1=0, dim2=1).T
        )
        _close(
            joiner.run(None, {"enc": enc.numpy(), "pred": pred.numpy()})[0],
            want,
            f"joiner {ne}x{np_}",
        )


@torch.no_grad()
def test_las_graphs_match(exported):
    m, g = exported.model, torch.Generator().manual_seed(6)
    if m.las is None:
        assert not (exported.folder / "las_step.onnx").exists()
        return
    T, N = 9, 3
    enc = torch.randn(1, T, m.encoder.out_dim, generator=g)
    values, keys, mask = m.las.listen(enc, torch.tensor([T]))
    got_v, got_k = _session(exported.folder, "las_listen").run(
        None, {"enc": enc.numpy()}
    )
    _close(got_v, values, "las values")
    _close(got_k, keys, "las keys")
    values, keys, mask = (
        values.expand(N, -1, -1),
        keys.expand(N, -1, -1),
        mask.expand(N, -1),
    )
    hd, D = m.cfg.las.dec_hidden, values.shape[2]
    h, c, ctx = (
        torch.randn(N, hd, generator=g),
        torch.randn(N, hd, generator=g),
        torch.randn(N, D, generator=g),
    )
    prev = torch.softmax(torch.randn(N, T, generator=g), -1)
    tokens = torch.tensor([2, 3, 5])
    logits, (h2, c2), ctx2, w = m.las.step(
        tokens, (h, c), ctx, prev, values, keys, mask
    )
    feed = {
        "tokens": tokens.numpy(),
        "h_in": h.numpy(),
        "c_in": c.numpy(),
        "context_in": ctx.numpy(),
        "prev_in": prev.numpy(),
    }
    feed |= {"values": values.numpy(), "keys": keys.numpy(), "mask": mask.numpy()}
    sess = _session(exported.folder, "las_step")
    names = {i.name for i in sess.get_inputs()}  # the exporter drops inputs a variant ignores
    assert names >= {"tokens", "h_in", "c_in", "values", "keys", "mask"}, names
    assert ("context_in" in names) == m.cfg.las.input_feeding, names
    got = sess.run(None, {k: v for k, v in feed.items() if k in names})
    for a, b, what in zip(
        got,
        (torch.log_softmax(logits, -1), h2, c2, ctx2, w),
        ("log_probs", "h", "c", "context", "weights"),
    ):
        _close(a, b, f"las_step {what}")


# 160 ms; not a multiple of the hop; less than a hop
@pytest.mark.parametrize("chunk", [2560, 1000, 150])
def test_ort_streaming_transcript_equals_pytorch(exported, chunk):
    """Token ids identical to PyTorch's streaming greedy search; scores agree to float rounding."""
    m, tok = exported.model, exported.tokenizer
    opts = DecodingOptions(
        strategy="greedy",
        max_symbols_per_frame=3,
        second_pass="rescore" if m.las is not None else "none",
    )
    sd = StreamingDecoder(m, tok, opts)
    rec = OnnxRecognizer(exported.folder, max_symbols_per_frame=3)
    for wave in exported.waves:
        state = sd.initial_state(1)
        for s in range(0, len(wave), chunk):
            _, state = sd.step(torch.from_numpy(wave[None, s : s + chunk]), state)
        first, final = sd.finish(state)
        want, got = first[0].best, rec.transcribe(wave, chunk)
        assert len(want.tokens) > 0, (
            "the test model must emit labels, or the comparison proves nothing"
        )
        assert got.tokens == want.tokens
        assert got.text == want.text == tok.decode(want.tokens)
        assert got.score == pytest.approx(want.score, abs=1e-3, rel=1e-5)
        if m.las is not None:
            assert got.las_score == pytest.approx(
                final[0].best.las_score, abs=1e-3, rel=1e-5
            )
        else:
            assert got.las_score is None


def test_partial_results_grow_with_the_stream(exported):
    rec = OnnxRecognizer(exported.folder, max_symbols_per_frame=3)
    wave, stream, seen = exported.waves[0], rec.start(), []
    for s in range(0, len(wave), rec.chunk_samples):
        seen.append(rec.accept(stream, wave[s : s + rec.chunk_samples]).tokens)
    final = rec.finish(stream).tokens
    # greedy never revises a label
    assert all(final[: len(p)] == p for p in seen), (
        seen,
        final,
    )


def test_metadata_describes_the_model(exported):
    meta = json.loads((exported.folder / "metadata.json").read_text())
    m = exported.model
    assert meta["vocab_size"] == m.cfg.vocab_size == len(meta["vocabulary"])
    assert (meta["blank_id"], meta["eos_id"], meta["sample_rate"]) == (
        0,
        2,
        m.cfg.sample_rate,
    )
    assert meta["chunk_samples"] == round(meta["chunk_ms"] * m.cfg.sample_rate / 1000)
    assert meta["encoder"]["kind"] == m.cfg.encoder.kind
    if m.cfg.encoder.kind == "lstm":
        assert meta["state"]["encoder"] == {
            k: [m.cfg.encoder.layers, "batch", m.encoder.out_dim]
            for k in ("h_in", "c_in")
        }
    pred_states = {"lstm": ["h_in", "c_in"], "gru": ["h_in"]}[m.cfg.predictor.kind]
    assert list(meta["state"]["predictor"]) == pred_states
    assert meta["sonus_version"] and meta["opset"] == 17
    assert (
        exported.folder / meta["tokenizer"]["file"]
    ).read_bytes() == exported.tokenizer.to_bytes()
    ids = list(range(3, m.cfg.vocab_size))
    assert OnnxRecognizer(exported.folder).decode_text(
        ids
    ) == exported.tokenizer.decode(ids)


def test_recognizer_runs_without_torch(exported):
    """The runtime side imports neither torch nor the PyTorch parts of sonus: greedy, and modified
    beam search with LAS rescoring (on the variants with LAS)."""
    code = (
        "import sys, numpy as np\n"
        "from sonus.export.ort_decoder import OnnxRecognizer\n"
        f"r = OnnxRecognizer({str(exported.folder)!r}).transcribe(np.zeros(8000, np.float32))\n"
        "wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1\n"
        f"b = OnnxRecognizer({str(exported.folder)!r}, strategy='modified_beam').transcribe(wave)\n"
        f"assert (b.nbest[0].las_score is not None) == {exported.model.las is not None}, b\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(r.tokens), len(b.nbest))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_cli_export(exported, tmp_path, capsys):
    assert (
        main(
            [
                "export",
                f"checkpoint={exported.checkpoint}",
                "format=onnx",
                f"output_dir={tmp_path}",
                "chunk_ms=80",
            ]
        )
        == 0
    )
    assert "metadata.json" in capsys.readouterr().out
    rec = OnnxRecognizer(tmp_path, max_symbols_per_frame=3)
    assert rec.chunk_samples == 1280
    assert (
        rec.transcribe(exported.waves[0]).tokens
        == OnnxRecognizer(exported.folder, max_symbols_per_frame=3)
        .transcribe(exported.waves[0])
        .tokens
    )
