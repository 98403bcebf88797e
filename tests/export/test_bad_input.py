"""Bad export requests fail at once with an error that names the field or the file."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sonus.asr.model import TwoPassASR, save_model
from sonus.cli import compose
from sonus.export import run_export
from sonus.export.onnx import export_model
from sonus.export.ort_decoder import OnnxRecognizer
from sonus.text.tokenizer import CharTokenizer

from .conftest import tiny_config

TOK = CharTokenizer("abc ")


def _cfg(*overrides: str):
    return compose("export", list(overrides))


def test_wrong_format_names_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"format=.*'tflite'"):
        run_export(_cfg("checkpoint=x.ckpt", "format=tflite", f"output_dir={tmp_path}"))


def test_missing_keys_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="checkpoint="):
        run_export(_cfg(f"output_dir={tmp_path}"))
    with pytest.raises(ValueError, match="output_dir="):
        run_export(_cfg("checkpoint=x.ckpt"))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        run_export(
            _cfg(
                f"checkpoint={tmp_path / 'nowhere.ckpt'}",
                f"output_dir={tmp_path / 'out'}",
            )
        )
    assert not (tmp_path / "out").exists()


def test_non_asr_checkpoint_names_the_file(tmp_path):
    ckpt = tmp_path / "separator.ckpt"
    torch.save(
        {
            "state_dict": {"w": torch.zeros(2)},
            "separation_config": {"kind": "convtasnet"},
        },
        ckpt,
    )
    with pytest.raises(
        RuntimeError, match=r"separator\.ckpt.*not a sonus ASR checkpoint"
    ):
        run_export(_cfg(f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}"))


def test_full_attention_conformer_is_refused_by_name(tmp_path):
    """A Conformer without chunks (chunk_size=0) has no streaming step: the error names the
    checkpoint and the field, and nothing is written."""
    cfg = tiny_config(TOK.vocab_size, conformer={"chunk_size": 0})
    ckpt = tmp_path / "conformer.ckpt"
    save_model(ckpt, TwoPassASR(cfg, specaug=None, gain=None), TOK)
    with pytest.raises(
        ValueError, match=r"conformer\.ckpt.*model\.conformer\.chunk_size=0"
    ):
        run_export(_cfg(f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out").exists()


def test_ctc_model_and_feature_model_are_refused(tmp_path):
    ctc = TwoPassASR(
        replace(tiny_config(TOK.vocab_size), transducer=False, ctc_head=True),
        specaug=None,
        gain=None,
    )
    with pytest.raises(ValueError, match="transducer"):
        export_model(ctc, TOK, tmp_path)
    feat = TwoPassASR(
        replace(tiny_config(TOK.vocab_size), feat_in=20), specaug=None, gain=None
    )
    with pytest.raises(ValueError, match="feat_in"):
        export_model(feat, TOK, tmp_path)


def test_bad_opset_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        run_export(_cfg("checkpoint=x.ckpt", f"output_dir={tmp_path}", "opset=9"))


def test_recognizer_on_a_folder_without_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        OnnxRecognizer(tmp_path)
