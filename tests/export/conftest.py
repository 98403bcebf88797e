"""A tiny exported recognizer: random weights made decisive, CMVN fitted on tone audio, saved as
a checkpoint and exported once per session. Four variants cover the exporter's branches: two LSTM
encoders, two Conformers (a fixed and a growing key/value cache)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sonus.asr.config import (
    ASRModelConfig,
    EncoderConfig,
    JoinerConfig,
    LASConfig,
    PredictorConfig,
)
from sonus.asr.model import TwoPassASR, save_model
from sonus.audio.io import load_audio
from sonus.export.onnx import export_onnx
from sonus.nn.conformer import ConformerConfig
from sonus.text.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer

VARIANTS = {
    # LSTM predictor, stacked reduction, LAS, character tokenizer
    "lstm_stack_las": {
        "pred": "lstm",
        "reduction_type": "stack",
        "las": True,
        "sp": False,
    },
    # GRU predictor, pooled reduction, no LAS, SentencePiece tokenizer
    "gru_pool_sp": {"pred": "gru", "reduction_type": "pool", "las": False, "sp": True},
    # Conformer, conv2d subsampling, one chunk of left context (a fixed cache), LAS with dot
    # attention and no input feeding, characters
    "conformer_conv2d_left1_las": {
        "conformer": {"subsampling": "conv2d", "chunk_size": 4, "left_chunks": 1},
        "las": True,
        "las_plain": True,
        "sp": False,
    },
    # Conformer, stacked subsampling, all the past (a growing cache), GRU predictor, SentencePiece
    "conformer_stack_all_sp": {
        "conformer": {"subsampling": "stack", "chunk_size": 2, "left_chunks": -1},
        "pred": "gru",
        "las": False,
        "sp": True,
    },
}
CONFORMER_VARIANTS = [k for k, v in VARIANTS.items() if "conformer" in v]


@dataclass
class Exported:
    model: TwoPassASR
    tokenizer: Tokenizer
    checkpoint: Path
    folder: Path
    waves: list[np.ndarray]  # (S,) float32 test utterances


def tiny_conformer(**kw) -> ConformerConfig:
    """Two layers of width 32, no dropout; ``kw`` overrides (chunk_size, left_chunks, subsampling)."""
    base = {
        "d_model": 32,
        "layers": 2,
        "heads": 4,
        "ff_mult": 2,
        "conv_kernel": 5,
        "subsampling_channels": 8,
    }
    return ConformerConfig(**(base | {"dropout": 0.0} | kw))


def tiny_config(
    vocab: int,
    pred: str = "lstm",
    reduction_type: str = "stack",
    las: bool = True,
    conformer: dict | None = None,
    las_plain: bool = False,
) -> ASRModelConfig:
    """The LSTM encoder, or with ``conformer`` (:func:`tiny_conformer`'s overrides) a Conformer.
    ``las_plain``: LAS with dot attention and no input feeding (else location, input feeding)."""
    return ASRModelConfig(
        vocab_size=vocab,
        n_mels=40,
        encoder=EncoderConfig(
            hidden=32,
            layers=2,
            reduction=4,
            reduction_type=reduction_type,
            **(
                {}
                if conformer is None
                else {"kind": "conformer", "conformer": tiny_conformer(**conformer)}
            ),
        ),
        predictor=PredictorConfig(
            kind=pred, hidden=24, embed=16, layers=2 if pred == "gru" else 1
        ),
        joiner=JoinerConfig(hidden=32),
        las=LASConfig(
            enabled=las,
            enc2_hidden=16,
            dec_hidden=24,
            embedding_dim=8,
            attention_dim=16,
            attention="dot" if las_plain else "location",
            input_feeding=not las_plain,
        ),
    )


def build_model(tok: Tokenizer, waves: list[np.ndarray], seed: int, **kw) -> TwoPassASR:
    """Random weights with sharp joiner posteriors (so greedy emits labels) and CMVN fitted on ``waves``."""
    torch.manual_seed(seed)
    model = TwoPassASR(
        tiny_config(tok.vocab_size, **kw), specaug=None, gain=None
    ).eval()
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for b, w in enumerate(waves):
        batch[b, : len(w)] = torch.from_numpy(w)
    with torch.no_grad():
        feats, flen = model.raw_features(batch, lengths)
        model.cmvn.fit(feats, flen)
        model.joiner.enc_proj.weight.mul_(30.0)
        model.joiner.out.weight.mul_(3.0)
        model.joiner.out.bias[0] += 2.0
    return model


@pytest.fixture(scope="session")
def export_variant(tone_corpus, tmp_path_factory) -> Callable[[str], Exported]:
    """Variant name -> its model, saved and exported (once a session)."""
    done: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in done:
            done[name] = _export(name, tone_corpus, tmp_path_factory)
        return done[name]

    return get


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, export_variant) -> Exported:
    return export_variant(request.param)


@pytest.fixture(scope="module", params=CONFORMER_VARIANTS)
def conformer_exported(request, export_variant) -> Exported:
    return export_variant(request.param)


def _export(name: str, tone_corpus, tmp_path_factory) -> Exported:
    kw = dict(VARIANTS[name])
    sp = kw.pop("sp")
    wav_dir = tone_corpus["dev"].parent / "wavs"
    waves = [load_audio(p).numpy() for p in sorted(wav_dir.glob("dev-*.wav"))[:4]]
    texts = ["abc fed bad", "cab dec face", "face bad", "dec abc cab"]
    tok = (
        SentencePieceTokenizer.train(texts * 4, vocab_size=12)
        if sp
        else CharTokenizer("abcdef ")
    )
    model = build_model(
        tok,
        [load_audio(p).numpy() for p in sorted(wav_dir.glob("train-*.wav"))[:16]],
        seed=1,
        **kw,
    )
    tmp = tmp_path_factory.mktemp(name)
    ckpt = tmp / "model.ckpt"
    save_model(ckpt, model, tok)
    folder = tmp / "onnx"
    export_onnx(ckpt, folder)
    return Exported(model, tok, ckpt, folder, waves)
