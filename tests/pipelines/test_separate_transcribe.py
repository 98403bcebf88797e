"""`sonus transcribe`: separate each file, transcribe every stream; or transcribe as is."""

from __future__ import annotations

import json

import numpy as np

from sonus.asr.model import TwoPassASR, save_model
from sonus.audio.io import load_audio, save_audio
from sonus.cli import main
from sonus.separation.infer import save_separator
from sonus.separation.models import build_model
from sonus.text.tokenizer import train_tokenizer
from tests.asr.test_model import small_config


def test_transcribe_each_separated_stream(tmp_path):
    tok = train_tokenizer(["one two three", "four five"], kind="char")
    asr = tmp_path / "asr.pt"
    save_model(asr, TwoPassASR(small_config(tok.vocab_size)).eval(), tok)
    sep = tmp_path / "sep.ckpt"
    save_separator(build_model("convtasnet", {"n_filters": 16, "bn_channels": 16, "hidden_channels": 16, "skip_channels": 16, "n_blocks": 2, "n_repeats": 1}), sep, 8000)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save_audio(tmp_path / "in" / f"{name}.wav", 0.1 * rng.standard_normal(8000).astype(np.float32), 8000)
    out = tmp_path / "out.jsonl"
    streams = tmp_path / "streams"
    args = [f"checkpoint={asr}", f"input={tmp_path / 'in'}", f"output_path={out}", "decoding.beam_size=2"]
    assert main(["transcribe", *args, f"separation_checkpoint={sep}", f"streams_dir={streams}"]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert [(r["file"].rsplit("/", 1)[1], r["stream"]) for r in rows] == [("a.wav", 1), ("a.wav", 2), ("b.wav", 1), ("b.wav", 2)]
    assert all(isinstance(r["text"], str) and r["nbest"] and r["nbest"][0]["text"] == r["text"] for r in rows)
    assert sorted(p.name for p in streams.iterdir()) == ["a_s1.wav", "a_s2.wav", "b_s1.wav", "b_s2.wav"]
    assert load_audio(streams / "a_s1.wav", 8000).shape[0] == 8000
    # without a separator: one stream per file, the input itself
    assert main(["transcribe", *args]) == 0
    assert [r["stream"] for r in map(json.loads, open(out))] == [0, 0]
