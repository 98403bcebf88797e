"""Bad input stops training early with an error that names the file, line or utterance;
with data.skip_bad=true an unreadable file is skipped and reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sonus.asr.train import train
from sonus.audio.io import AudioError
from sonus.cli import compose
from sonus.data.manifest import ManifestError
from sonus.text.tokenizer import TokenizerError

from .test_train import TINY


def _copy(corpus: dict[str, Path], tmp: Path) -> tuple[Path, Path, list[dict]]:
    train_m, dev_m = tmp / "train.jsonl", tmp / "dev.jsonl"
    rows = [json.loads(x) for x in corpus["train"].read_text().splitlines()]
    for r in rows:
        r["audio_filepath"] = str(corpus["train"].parent / r["audio_filepath"])
    shutil.copy(corpus["dev"], dev_m)
    dev_rows = [json.loads(x) for x in corpus["dev"].read_text().splitlines()]
    for r in dev_rows:
        r["audio_filepath"] = str(corpus["dev"].parent / r["audio_filepath"])
    dev_m.write_text("".join(json.dumps(r) + "\n" for r in dev_rows))
    return train_m, dev_m, rows


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _cfg(train_m: Path, dev_m: Path, out: Path, *extra: str):
    return compose("train", [f"data.train_manifest={train_m}", f"data.dev_manifest={dev_m}", f"training.output_dir={out}", "training.num_epochs=1", "tensorboard.enabled=false", *TINY, *extra])


def test_manifest_line_not_json(tone_corpus, tmp_path):
    train_m, dev_m, rows = _copy(tone_corpus, tmp_path)
    _write(train_m, rows[:5])
    with open(train_m, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ManifestError, match=r"train.jsonl:6: not valid JSON"):
        train(_cfg(train_m, dev_m, tmp_path / "exp"))


def test_empty_text(tone_corpus, tmp_path):
    train_m, dev_m, rows = _copy(tone_corpus, tmp_path)
    rows[3]["text"] = "  "
    _write(train_m, rows)
    with pytest.raises(ManifestError, match=r"train.jsonl:4: field 'text' is empty"):
        train(_cfg(train_m, dev_m, tmp_path / "exp"))


def test_text_the_tokenizer_cannot_represent(tone_corpus, tmp_path):
    train_m, dev_m, rows = _copy(tone_corpus, tmp_path)
    _write(train_m, rows)
    dev_rows = [json.loads(x) for x in dev_m.read_text().splitlines()]
    dev_rows[2]["text"] = "abc zzz"  # 'z' never occurs in training text
    _write(dev_m, dev_rows)
    with pytest.raises(TokenizerError, match=r"dev.jsonl: utterance 'dev-0002'.*'z'"):
        train(_cfg(train_m, dev_m, tmp_path / "exp"))


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_unreadable_audio_named_or_skipped(tone_corpus, tmp_path, damage, caplog):
    train_m, dev_m, rows = _copy(tone_corpus, tmp_path)
    bad = tmp_path / "bad.wav"
    if damage == "truncated":
        data = Path(rows[0]["audio_filepath"]).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"RIFF\x00\x00not really a wav file" * 10)
    rows[0]["audio_filepath"] = str(bad)
    rows = rows[:40]
    _write(train_m, rows)
    with pytest.raises(AudioError, match=r"bad.wav.*utterance 'train-0000'.*skip_bad"):
        train(_cfg(train_m, dev_m, tmp_path / "exp"))
    # Loaded in a DataLoader worker process, the skip must still be reported by the main process.
    with caplog.at_level("WARNING", logger="sonus.asr.train"):
        out = train(_cfg(train_m, dev_m, tmp_path / "exp2", "data.skip_bad=true", "data.num_workers=1"))
    assert (out / "last.ckpt").is_file()
    assert "1 unreadable utterances were skipped: ['train-0000']" in caplog.text
