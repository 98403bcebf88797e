"""Export an ASR checkpoint to ONNX graphs plus ``metadata.json`` and the tokenizer.

The folder :func:`export_onnx` writes is everything :class:`~sonus.export.ort_decoder.OnnxRecognizer`
needs, without PyTorch::

    frontend.onnx    audio (B, context + n*hop)              -> feats (B, n, F)       log-mel + CMVN
    encoder.onnx     LSTM:      feats (B, m*r, F), h_in, c_in (L, B, H) -> enc (B, m, H), h_out, c_out
                     Conformer: feats (B, 4*m, F), offset_in, k_in, v_in, conv_in[, sub1_in, sub2_in]
                                -> enc (B, m, H), offset_out, k_out, v_out, conv_out[, sub1_out, sub2_out]
    predictor.onnx   tokens (N,), h_in[, c_in] (Lp, N, Hp)   -> pred (N, Hp), h_out[, c_out]
    joiner.onnx      enc (N, H), pred (M, Hp)                -> logits (max(N, M), V)
    las_listen.onnx  enc (1, T, H)                           -> values (1, T, D), keys (1, T, A)
    las_step.onnx    tokens, h_in, c_in, context_in, prev_in, values, keys, mask
                                                             -> log_probs (N, V), h_out, c_out, context_out, prev_out
    metadata.json    sizes, state shapes, ids, tokenizer, graph inputs/outputs, and ``decoding``:
                     the LAS rescoring weight, length bonus and LM weight OnnxRecognizer defaults to
    tokenizer.model  (SentencePiece) or tokenizer.chars (characters)
    lexicon.npz      with ``lm_text``: the lexicon LM's step tables (``Lexicon.tables``), for shallow fusion

The LAS graphs exist only for a model with LAS. The Conformer's encoder graph is one streaming
chunk step (:class:`~sonus.export.graphs.ConformerEncoderGraph`): it needs
``model.conformer.chunk_size > 0``; with a finite ``left_chunks`` its key/value cache has a fixed
size (left_chunks * chunk_size frames), with ``left_chunks=-1`` (all the past) the cache grows by
every call's frames (its "past" axis is dynamic; metadata ``encoder.cache`` says which).
Every state input ``X_in`` of the encoder and predictor has its output ``X_out``; their shapes are
in ``metadata.json`` (``state``), their dtypes in ``graphs``. Exporter: the TorchScript-based one
(``torch.onnx.export(..., dynamo=False)``), pinned because it maps ``nn.LSTM``/``nn.GRU`` onto the
ONNX ``LSTM``/``GRU`` operators with explicit initial states and needs no ``onnxscript``.

Shapes: as in :mod:`sonus.export.graphs`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sonus.asr.encoder import LSTMEncoder
from sonus.asr.model import TwoPassASR, load_checkpoint
from sonus.export.graphs import (
    ConformerEncoderGraph,
    FrontendGraph,
    JoinerGraph,
    LASListenGraph,
    LASStepGraph,
    LSTMEncoderGraph,
    PredictorGraph,
)
from sonus.export.metadata import (
    FORMAT_VERSION,
    decoding_defaults,
    encoder_entry,
    sonus_version,
    tokenizer_entry,
    write_lexicon,
)
from sonus.nn.conformer import CausalSubsampling, ConformerEncoder
from sonus.text.tokenizer import (
    BLANK,
    EOS,
    UNK,
    Tokenizer,
)


@dataclass(frozen=True)
class ExportOptions:
    """``opset``: ONNX opset of every graph; ``chunk_ms``: the default streaming chunk written
    to the metadata (the graphs take any length); ``las_weight``, ``length_bonus``: the LAS
    rescoring defaults written to the metadata (None: see :func:`decoding_defaults`). ``lm_text``:
    transcripts (as ``decoding.lm.text``) whose lexicon LM is written as ``lexicon.npz``, with
    ``lm_oov_logprob`` and ``lm_word_bonus``; ``lm_weight`` is the recognizer's default weight."""

    opset: int = 17
    chunk_ms: float = 160.0
    las_weight: float | None = None
    length_bonus: float | None = None
    lm_text: str | None = None
    lm_weight: float = 0.0
    lm_oov_logprob: float = -20.0
    lm_word_bonus: float = 0.0

    def __post_init__(self) -> None:
        if self.las_weight is not None and not 0.0 <= self.las_weight <= 1.0:
            raise ValueError(f"export las_weight must be in [0, 1], got {self.las_weight}")
        if not 14 <= self.opset <= 20:
            raise ValueError(
                f"export opset must be in 14..20 (the TorchScript exporter's range), got {self.opset}"
            )
        if self.chunk_ms <= 0:
            raise ValueError(f"export chunk_ms must be > 0, got {self.chunk_ms}")
        if self.lm_weight < 0 or (self.lm_weight and not self.lm_text):
            raise ValueError(f"export lm.weight must be >= 0, and > 0 only with lm.text: got {self.lm_weight}, text {self.lm_text!r}")


@dataclass
class ExportResult:
    output_dir: Path
    # every file written, metadata.json last
    files: list[Path] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Graph:
    """One graph to export: its module, example inputs, names and dynamic axes."""

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]


def check_exportable(model: TwoPassASR, where: str = "model") -> None:
    """Raise a clear error when the model has parts this exporter does not cover."""
    if model.frontend is None:
        raise ValueError(
            f"{where}: reads feature sequences (model.feat_in={model.cfg.feat_in}); only audio models export"
        )
    if model.predictor is None or model.joiner is None:
        raise ValueError(
            f"{where}: has no transducer (model.transducer=false, a CTC model); the ONNX export needs the RNN-T predictor and joiner"
        )
    if isinstance(model.encoder, ConformerEncoder):
        if model.encoder.cfg.chunk_size <= 0:
            raise ValueError(
                f"{where}: its Conformer attends to the whole utterance (model.conformer.chunk_size="
                f"{model.encoder.cfg.chunk_size}), so it has no streaming step to export; "
                "only a chunk-wise Conformer (chunk_size > 0) exports"
            )
    elif not isinstance(model.encoder, LSTMEncoder):
        raise NotImplementedError(
            f"{where}: ONNX export of encoder kind {model.cfg.encoder.kind!r} is not implemented; "
            "only model.encoder=lstm and model.encoder=conformer export"
        )


def _encoder_graph(model: TwoPassASR, g: torch.Generator) -> _Graph:
    """The encoder's streaming step, its example inputs a non-empty state (B = 1 stream)."""
    enc, F = model.encoder, model.cfg.n_mels  # audio models only (check_exportable)
    if isinstance(enc, LSTMEncoder):
        r, L, H, m = enc.reduce.factor, model.cfg.encoder.layers, enc.out_dim, 3
        return _Graph("encoder", LSTMEncoderGraph(enc), (torch.randn(1, m * r, F, generator=g), torch.zeros(L, 1, H), torch.zeros(L, 1, H)),
                      ["feats", "h_in", "c_in"], ["enc", "h_out", "c_out"],
                      {"feats": {0: "batch", 1: "frames"}, "enc": {0: "batch", 1: "enc_frames"},
                       **{k: {1: "batch"} for k in ("h_in", "c_in", "h_out", "c_out")}})  # fmt: skip
    graph, cfg = ConformerEncoderGraph(enc), enc.cfg
    C, L, Hh, H = cfg.chunk_size, cfg.layers, cfg.heads, enc.out_dim
    # two chunks in, after three; a growing cache holds those three
    m, offset = 2 * C, 3 * C
    P = graph.cache_frames if graph.cache_frames is not None else offset
    past = {} if graph.cache_frames is not None else {3: "past"}
    inputs = [torch.randn(1, enc.reduction * m, F, generator=g), torch.tensor(offset),
              torch.randn(L, 1, Hh, P, H // Hh, generator=g), torch.randn(L, 1, Hh, P, H // Hh, generator=g),
              torch.randn(L, 1, H, cfg.conv_kernel - 1, generator=g)]  # fmt: skip
    states = ["offset", "k", "v", "conv"]
    dynamic = {"feats": {0: "batch", 1: "frames"}, "enc": {0: "batch", 1: "enc_frames"}}
    dynamic |= {
        f"{s}_{d}": {1: "batch"} | past for s in ("k", "v") for d in ("in", "out")
    }
    dynamic |= {f"conv_{d}": {1: "batch"} for d in ("in", "out")}
    if isinstance(enc.subsample, CausalSubsampling):
        c, F2 = enc.subsample.conv1.out_channels, (F + 1) // 2
        inputs += [
            torch.randn(1, 1, 1, F, generator=g),
            torch.randn(1, c, 1, F2, generator=g),
        ]
        states += ["sub1", "sub2"]
        dynamic |= {f"sub{i}_{d}": {0: "batch"} for i in (1, 2) for d in ("in", "out")}
    return _Graph("encoder", graph, tuple(inputs), ["feats", *[f"{s}_in" for s in states]],
                  ["enc", *[f"{s}_out" for s in states]], dynamic)  # fmt: skip


def _graphs(model: TwoPassASR) -> list[_Graph]:
    """The graphs of ``model`` with example inputs (B = 1 stream, small sizes)."""
    cfg, enc, pred = model.cfg, model.encoder, model.predictor
    fe = FrontendGraph(model)
    H = enc.out_dim
    n, N, T = 5, 2, 7
    g = torch.Generator().manual_seed(0)
    state_names = ["h", "c"] if cfg.predictor.kind == "lstm" else ["h"]
    pl, ph = cfg.predictor.layers, pred.out_dim
    graphs = [
        _Graph("frontend", fe, (torch.randn(1, fe.context + n * fe.hop, generator=g) * 0.1,), ["audio"], ["feats"],
               {"audio": {0: "batch", 1: "samples"}, "feats": {0: "batch", 1: "frames"}}),
        _encoder_graph(model, g),
        _Graph("predictor", PredictorGraph(pred), (torch.tensor([BLANK, 3]), *[torch.zeros(pl, N, ph) for _ in state_names]),
               ["tokens", *[f"{s}_in" for s in state_names]], ["pred", *[f"{s}_out" for s in state_names]],
               {"tokens": {0: "rows"}, "pred": {0: "rows"}, **{f"{s}_{d}": {1: "rows"} for s in state_names for d in ("in", "out")}}),
        _Graph("joiner", JoinerGraph(model.joiner), (torch.randn(3, H, generator=g), torch.randn(1, ph, generator=g)),
               ["enc", "pred"], ["logits"], {"enc": {0: "enc_rows"}, "pred": {0: "pred_rows"}, "logits": {0: "rows"}}),
    ]  # fmt: skip
    if model.las is not None:
        las = model.las
        D, A, Hd = las.enc_dim, las.cfg.attention_dim, las.cfg.dec_hidden
        values, keys = (
            torch.randn(N, T, D, generator=g),
            torch.randn(N, T, A, generator=g),
        )
        prev = torch.full((N, T), 1.0 / T)
        step_in = (
            torch.tensor([EOS, 3]),
            torch.zeros(N, Hd),
            torch.zeros(N, Hd),
            torch.zeros(N, D),
            prev,
            values,
            keys,
            torch.ones(N, T, dtype=torch.bool),
        )
        rows = {"tokens": {0: "rows"}, "log_probs": {0: "rows"}} | {
            f"{k}_{d}": {0: "rows"}
            for k in ("h", "c", "context")
            for d in ("in", "out")
        }
        graphs += [
            _Graph("las_listen", LASListenGraph(las), (torch.randn(1, T, H, generator=g),), ["enc"], ["values", "keys"],
                   {"enc": {1: "frames"}, "values": {1: "frames"}, "keys": {1: "frames"}}),
            _Graph("las_step", LASStepGraph(las), step_in,
                   ["tokens", "h_in", "c_in", "context_in", "prev_in", "values", "keys", "mask"],
                   ["log_probs", "h_out", "c_out", "context_out", "prev_out"],
                   rows | {k: {0: "rows", 1: "frames"} for k in ("prev_in", "prev_out", "values", "keys", "mask")}),
        ]  # fmt: skip
    return graphs


def _export_graph(gr: _Graph, path: Path, opset: int) -> None:
    gr.module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter's deprecation notice, and its batch-size hint for LSTMs without given states
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        # nn.LSTM's size checks, constant per graph
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            gr.module, gr.inputs, str(path), dynamo=False, opset_version=opset, input_names=gr.input_names,
            output_names=gr.output_names, dynamic_axes=gr.dynamic, do_constant_folding=True,
        )  # fmt: skip


def _io_spec(gr: _Graph) -> dict[str, Any]:
    """Names -> shapes (symbolic dims by name) and dtypes, for the metadata."""

    def shape(name: str, t: torch.Tensor) -> list[int | str]:
        dyn = gr.dynamic.get(name, {})
        return [dyn.get(i, s) for i, s in enumerate(t.shape)]

    with torch.no_grad():
        outs = gr.module(*gr.inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {
        "file": f"{gr.name}.onnx",
        "inputs": {
            n: {"shape": shape(n, t), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(gr.input_names, gr.inputs)
        },
        "outputs": {
            n: {"shape": shape(n, t), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(gr.output_names, outs)
        },
    }


def export_model(
    model: TwoPassASR,
    tokenizer: Tokenizer,
    output_dir: str | Path,
    options: ExportOptions = ExportOptions(),
    normalize: dict | None = None,
    source: str = "",
) -> ExportResult:
    """Write the graphs, the tokenizer and ``metadata.json`` of ``model`` (eval mode) into ``output_dir``.

    ``source``: the checkpoint's path, recorded in the metadata; its folder's ``config.yaml``
    (a training run's) supplies the rescoring defaults (:func:`decoding_defaults`)."""
    check_exportable(model, source or "model")
    model = model.eval()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    res = ExportResult(out)
    graphs = _graphs(model)
    specs = {}
    for gr in graphs:
        path = out / f"{gr.name}.onnx"
        _export_graph(gr, path, options.opset)
        specs[gr.name] = _io_spec(gr)
        res.files.append(path)
    tok_entry, tok_file, vocab = tokenizer_entry(tokenizer)
    if len(vocab) != cfg.vocab_size:
        raise ValueError(
            f"{source or 'model'}: tokenizer has {len(vocab)} ids, model.vocab_size is {cfg.vocab_size}"
        )
    (out / tok_file).write_bytes(tokenizer.to_bytes())
    res.files.append(out / tok_file)
    lexicon = write_lexicon(options, tokenizer, dict(normalize or {}), out)
    if lexicon is not None:
        res.files.append(out / lexicon["file"])
    fe = model.frontend.cfg
    enc_spec = specs["encoder"]["inputs"]
    pred_spec = specs["predictor"]["inputs"]
    chunk_samples = max(1, round(options.chunk_ms * fe.sample_rate / 1000))
    meta: dict[str, Any] = {
        "format": "sonus-onnx",
        "format_version": FORMAT_VERSION,
        "sonus_version": sonus_version(),
        "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=False)",
        "opset": options.opset,
        "source_checkpoint": source,
        "sample_rate": fe.sample_rate,
        "frontend": {"n_fft": fe.n_fft, "hop_length": fe.hop_length, "n_mels": fe.n_mels, "context_samples": graphs[0].module.context},
        "chunk_ms": options.chunk_ms,
        "chunk_samples": chunk_samples,
        "encoder": encoder_entry(model),
        "predictor": {"kind": cfg.predictor.kind, "layers": cfg.predictor.layers, "out_dim": model.predictor.out_dim},
        "las": None if model.las is None else {"enc_dim": model.las.enc_dim, "dec_hidden": cfg.las.dec_hidden, "attention_dim": cfg.las.attention_dim},
        "state": {
            "encoder": {k: v["shape"] for k, v in enc_spec.items() if k != "feats"},
            "predictor": {k: v["shape"] for k, v in pred_spec.items() if k != "tokens"},
        },
        "vocab_size": cfg.vocab_size,
        "blank_id": BLANK,
        "unk_id": UNK,
        "eos_id": EOS,
        "tokenizer": tok_entry,
        "vocabulary": vocab,
        "normalize": dict(normalize or {}),
        "decoding": decoding_defaults(options, source) | {"lm_weight": options.lm_weight},
        "lexicon": lexicon,
        "graphs": specs,
    }  # fmt: skip
    (out / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    res.files.append(out / "metadata.json")
    res.metadata = meta
    return res


def export_onnx(
    checkpoint: str | Path,
    output_dir: str | Path,
    options: ExportOptions = ExportOptions(),
) -> ExportResult:
    """Export the ASR checkpoint ``checkpoint`` (see :func:`~sonus.asr.model.load_checkpoint`) into ``output_dir``."""
    ck = load_checkpoint(checkpoint)
    return export_model(
        ck.model, ck.tokenizer, output_dir, options, ck.normalize, str(checkpoint)
    )
