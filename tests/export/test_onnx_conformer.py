"""ONNX export of the streaming Conformer: the encoder graph is ``ConformerEncoder.step`` with its
caches as inputs and outputs, chunk for chunk and at the end of a stream.

The graphs every encoder shares (front end, predictor, joiner, LAS) and the token-for-token
comparison of onnxruntime's streamed greedy search with PyTorch's run for the Conformer variants
too: ``exported`` in ``test_onnx.py`` covers every variant of ``conftest.VARIANTS``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sonus.asr.model import TwoPassASR
from sonus.export.onnx import export_model
from sonus.export.ort_decoder import OnnxRecognizer
from sonus.nn.conformer import CausalSubsampling, ConformerState
from sonus.text.tokenizer import CharTokenizer

from .conftest import tiny_config

ATOL = 1e-4


def _close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4, err_msg=what)


def _check_encoder_graph(model: TwoPassASR, folder: Path) -> None:
    """Two streams of random features through ``ConformerEncoder.step`` and through
    ``encoder.onnx``, fed as OnnxRecognizer feeds it: whole chunks (one, then three at once,
    more than the export's example input, then one), then the end of the stream (a partial chunk and < 4 frames PyTorch drops). Every
    output and every cache after every call must agree."""
    enc, cfg = model.encoder, model.encoder.cfg
    r = enc.reduction  # feature frames per encoder frame
    unit, F = r * cfg.chunk_size, model.in_dim
    sess = ort.InferenceSession(
        str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    meta = json.loads((folder / "metadata.json").read_text())
    rec = OnnxRecognizer(folder, las=False)
    state, st = (
        rec.encoder.initial_state(),
        enc.initial_state(2, torch.device("cpu"), F),
    )
    # two streams: the state's "batch" axes are dynamic
    shapes = meta["state"]["encoder"]
    state = {
        k: np.repeat(v, 2, shapes[k].index("batch")) if "batch" in shapes[k] else v
        for k, v in state.items()
    }
    g = torch.Generator().manual_seed(7)
    tail = (
        unit - r + 2 if cfg.chunk_size > 1 else 2
    )  # a partial chunk (if C > 1) and 2 frames dropped
    x = torch.randn(2, 5 * unit + tail, F, generator=g)
    calls = [(0, unit), (unit, 4 * unit), (4 * unit, 5 * unit)]
    for i, (a, b) in enumerate(calls + [(5 * unit, x.shape[1])]):
        final = i == len(calls)
        with torch.no_grad():
            want, st = enc.step(x[:, a:b], st, final=final)
        feats = x[:, a:b].numpy()
        feats = feats[:, : feats.shape[1] // r * r]
        if feats.shape[1] == 0:
            assert want.shape[1] == 0, want.shape
            continue
        got, *new = sess.run(None, {"feats": feats} | state)
        state = {
            o.name.removesuffix("_out") + "_in": v
            for o, v in zip(sess.get_outputs()[1:], new)
        }
        what = f"after call {i} ({'final' if final else f'{(b - a) // unit} chunks'})"
        _close(got, want, f"enc {what}")
        assert int(state["offset_in"]) == st.offset, (state["offset_in"], st.offset)
        if final:
            break
        _check_caches(state, st, enc.subsample, what)
    assert list(state) == list(meta["state"]["encoder"]), (
        list(state),
        meta["state"]["encoder"],
    )


def _check_caches(
    state: dict[str, np.ndarray], st: ConformerState, subsample, what: str
) -> None:
    for name, i in (("k_in", 0), ("v_in", 1)):
        want = torch.stack([kv[i] for kv in st.kv])  # (L, B, Hh, t, d)
        got = state[name]  # (L, B, Hh, P, d)
        if got.shape[3] > want.shape[3]:
            # a fixed cache still holds zeros for frames before the stream began
            pad = got.shape[3] - want.shape[3]
            np.testing.assert_array_equal(got[:, :, :, :pad], 0.0, err_msg=name)
            got = got[:, :, :, pad:]
        # the graph keeps the last P frames; PyTorch's cache may be longer mid-chunk
        _close(got, want[:, :, :, want.shape[3] - got.shape[3] :], f"{name} {what}")
    _close(state["conv_in"], torch.stack(st.conv), f"conv {what}")
    if isinstance(subsample, CausalSubsampling):
        _close(state["sub1_in"], st.sub[0], f"sub1 {what}")
        _close(state["sub2_in"], st.sub[1], f"sub2 {what}")
    else:
        assert not {"sub1_in", "sub2_in"} & set(state), list(state)


def test_encoder_graph_matches_step(conformer_exported):
    _check_encoder_graph(conformer_exported.model, conformer_exported.folder)


@pytest.mark.parametrize(
    "conformer",
    [
        {
            "chunk_size": 1,
            "left_chunks": 0,
            "subsampling": "conv2d",
        },  # an empty fixed cache
        {"chunk_size": 3, "left_chunks": 2, "subsampling": "stack"},
        {"chunk_size": 2, "left_chunks": -1, "subsampling": "stack", "subsampling_factor": 8},
    ],
    ids=["chunk1_left0", "chunk3_left2", "stack8"],
)
def test_encoder_graph_matches_step_at_the_edges(conformer, tmp_path):
    tok = CharTokenizer("abc ")
    torch.manual_seed(2)
    model = TwoPassASR(
        tiny_config(tok.vocab_size, las=False, conformer=conformer),
        specaug=None,
        gain=None,
    )
    export_model(model.eval(), tok, tmp_path)
    _check_encoder_graph(model, tmp_path)
    enc = json.loads((tmp_path / "metadata.json").read_text())["encoder"]
    r = conformer.get("subsampling_factor", 4)
    assert (enc["reduction"], enc["chunk_frames"]) == (r, r * conformer["chunk_size"])


def test_metadata_describes_chunks_and_caches(conformer_exported):
    meta = json.loads((conformer_exported.folder / "metadata.json").read_text())
    cfg = conformer_exported.model.cfg.encoder.conformer
    enc, state = meta["encoder"], meta["state"]["encoder"]
    assert (
        enc["kind"],
        enc["chunk_size"],
        enc["chunk_frames"],
        enc["left_chunks"],
    ) == (
        "conformer",
        cfg.chunk_size,
        4 * cfg.chunk_size,
        cfg.left_chunks,
    )
    past = "past" if cfg.left_chunks < 0 else cfg.left_chunks * cfg.chunk_size
    assert enc["cache"] == ("growing" if cfg.left_chunks < 0 else "fixed")
    assert (
        state["k_in"]
        == state["v_in"]
        == [cfg.layers, "batch", cfg.heads, past, cfg.d_model // cfg.heads]
    )
    assert state["conv_in"] == [cfg.layers, "batch", cfg.d_model, cfg.conv_kernel - 1]
    assert state["offset_in"] == []
    assert meta["graphs"]["encoder"]["inputs"]["offset_in"]["dtype"] == "int64"
    has_sub = cfg.subsampling == "conv2d"
    assert ("sub1_in" in state and "sub2_in" in state) == has_sub, list(state)
    assert set(meta["graphs"]["encoder"]["outputs"]) == {"enc"} | {
        k.removesuffix("_in") + "_out" for k in state
    }
