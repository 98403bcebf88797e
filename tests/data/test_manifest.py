"""Promises of sonus.data.manifest: validation naming file and line, paths, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sonus.data.manifest import ManifestError, Utterance, read_manifest, write_manifest


def _record(**overrides: object) -> dict:
    rec: dict = {"id": "u1", "audio_filepath": "wavs/u1.wav", "duration": 1.5, "text": "hello world"}
    rec.update(overrides)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


def _write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return path


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "corpus" / "train.jsonl",
        [_record(), "", _record(id="u2", audio_filepath="wavs/u2.wav", text="  padded  ", speaker=7, offset=0.5)],
    )
    utts = read_manifest(path)
    assert [u.id for u in utts] == ["u1", "u2"]  # the blank line is skipped
    assert utts[0].audio_filepath == str((tmp_path / "corpus" / "wavs" / "u1.wav").resolve())
    assert utts[0].offset == 0.0 and utts[0].speaker is None
    assert utts[1].text == "padded" and utts[1].speaker == "7" and utts[1].offset == 0.5


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    audio = tmp_path / "elsewhere" / "a.flac"
    path = _write_lines(tmp_path / "m.jsonl", [_record(audio_filepath=str(audio), duration=2)])
    (utt,) = read_manifest(path)
    assert utt.audio_filepath == str(audio)
    assert utt.duration == 2.0 and isinstance(utt.duration, float)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [_record(), _record(id="u2"), '{"id": "u3", "audio_filepath": '])
    with pytest.raises(ManifestError, match=r"bad\.jsonl:3: not valid JSON"):
        read_manifest(path)


def test_non_object_line_is_rejected(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", ['["u1", "a.wav", 1.0, "x"]'])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: expected a JSON object, got list"):
        read_manifest(path)


@pytest.mark.parametrize("field", ["id", "audio_filepath", "duration", "text"])
def test_missing_field_names_line_and_field(tmp_path: Path, field: str) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [_record(), _record(**{"id": "u2", field: _DROP})])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:2: missing field '{field}'"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"duration": "1.5"}, "field 'duration' has type str"),
        ({"duration": True}, "field 'duration' has type bool"),
        ({"text": None}, "field 'text' has type NoneType"),
        ({"text": "   "}, "field 'text' is empty"),
        ({"duration": -1.0}, "field 'duration' must be > 0"),
        ({"duration": 0}, "field 'duration' must be > 0"),
        ({"offset": -0.1}, "field 'offset' must be a number >= 0"),
    ],
)
def test_bad_values_name_the_line(tmp_path: Path, overrides: dict, message: str) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [_record(id="a"), _record(id="b"), _record(id="c", **overrides)])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:3: {message}"):
        read_manifest(path)


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "m.jsonl", [_record(id="x"), _record(id="y"), _record(id="x")])
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: duplicate id 'x' \(first on line 1\)"):
        read_manifest(path)


def test_check_files_reports_missing_audio(tmp_path: Path) -> None:
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "u1.wav").write_bytes(b"RIFF")
    path = _write_lines(tmp_path / "m.jsonl", [_record(), _record(id="u2", audio_filepath="wavs/u2.wav")])
    assert len(read_manifest(path)) == 2  # not checked by default
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: audio file not found: .*u2\.wav"):
        read_manifest(path, check_files=True)


def test_missing_and_empty_manifests(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_manifest(tmp_path / "nothing.jsonl")
    empty = _write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ManifestError, match="holds no utterances"):
        read_manifest(empty)


def test_write_read_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inside = str((out / "wavs" / "a.wav").resolve())
    outside = str((tmp_path / "corpus" / "b.flac").resolve())
    utts = [
        Utterance(id="a", audio_filepath=inside, duration=1.25, text="ünïcode text", speaker="spk1"),
        Utterance(id="b", audio_filepath=outside, duration=3.0, text="b", offset=0.5),
    ]
    path = out / "m.jsonl"
    write_manifest(path, utts)
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert raw[0]["audio_filepath"] == "wavs/a.wav"  # under the manifest folder: written relative
    assert raw[1]["audio_filepath"] == outside  # elsewhere: stays absolute
    assert "offset" not in raw[0] and "speaker" not in raw[1]  # defaults are omitted
    assert read_manifest(path) == utts

    write_manifest(path, utts, relative=False)
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["audio_filepath"] == inside
    assert read_manifest(path) == utts
    assert not path.with_name("m.jsonl.tmp").exists()
