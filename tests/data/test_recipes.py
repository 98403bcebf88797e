"""Corpus recipes on tiny generated corpora, and on the shared real data when present."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sonus.audio.io import load_audio
from sonus.cli import compose
from sonus.data.manifest import Utterance, read_manifest
from sonus.data.recipes._split import CorpusError
from sonus.data.recipes.fsdd import DIGIT_WORDS, prepare_fsdd
from sonus.data.recipes.librispeech import prepare_librispeech

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[2]


def _noise(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    shape = (int(sr * seconds), channels) if channels > 1 else (int(sr * seconds),)
    return np.random.default_rng(seed).normal(0.0, 0.1, shape).astype(np.float32)


def _ids(path: Path) -> list[str]:
    return [u.id for u in read_manifest(path)]


# ---------------------------------------------------------------- LibriSpeech

LS_SPEAKERS = {"train-clean-5": ["19", "26", "32", "40"], "dev-clean": ["84", "174"]}


@pytest.fixture
def libri(tmp_path: Path) -> Path:
    """``LibriSpeech/{train-clean-5,dev-clean}/SPK/CHAP/`` with 3 utterances per chapter."""
    root = tmp_path / "LibriSpeech"
    for subset, speakers in LS_SPEAKERS.items():
        for s, spk in enumerate(speakers):
            chap = str(100 + s)
            folder = root / subset / spk / chap
            folder.mkdir(parents=True)
            lines = []
            for n in range(3):
                utt = f"{spk}-{chap}-{n:04d}"
                sf.write(folder / f"{utt}.flac", _noise(16000, 0.1 * (n + 1), seed=n), 16000)
                lines.append(f"{utt} HELLO WORLD NUMBER {n} DON'T\n")
            (folder / f"{spk}-{chap}.trans.txt").write_text("".join(lines))
    return root


def test_librispeech_finds_every_subset(libri: Path, tmp_path: Path) -> None:
    out = prepare_librispeech(libri, tmp_path / "out", progress=False)
    assert set(out) == {"train-clean-5", "dev-clean"}
    utts = read_manifest(out["train-clean-5"], check_files=True)
    assert len(utts) == 12 and [u.id for u in utts] == sorted(u.id for u in utts)
    first = utts[0]
    assert first.id == "19-100-0000" and first.speaker == "19"
    assert first.text == "hello world number 0 don't"
    assert first.audio_filepath == str(libri / "train-clean-5" / "19" / "100" / "19-100-0000.flac")
    assert first.duration == pytest.approx(0.1)
    assert Counter(u.speaker for u in utts) == {spk: 3 for spk in LS_SPEAKERS["train-clean-5"]}
    # absolute paths even though the flacs could be written relative to output_dir's parent
    assert '"audio_filepath": "/' in out["dev-clean"].read_text()


def test_librispeech_accepts_a_subset_folder(libri: Path, tmp_path: Path) -> None:
    out = prepare_librispeech(libri / "dev-clean", tmp_path / "out", progress=False)
    assert list(out) == ["dev-clean"]
    assert len(_ids(out["dev-clean"])) == 6


def test_librispeech_dev_speakers_are_held_out(libri: Path, tmp_path: Path) -> None:
    out = prepare_librispeech(libri / "train-clean-5", tmp_path / "a", dev_speakers=1, seed=3, progress=False)
    assert set(out) == {"train-clean-5", "train-clean-5_train", "train-clean-5_dev"}
    train, dev = read_manifest(out["train-clean-5_train"]), read_manifest(out["train-clean-5_dev"])
    dev_speakers = {u.speaker for u in dev}
    assert len(dev_speakers) == 1 and len(dev) == 3
    assert dev_speakers.isdisjoint(u.speaker for u in train)
    assert sorted(u.id for u in train + dev) == _ids(out["train-clean-5"])
    again = prepare_librispeech(libri / "train-clean-5", tmp_path / "b", dev_speakers=1, seed=3, progress=False)
    assert _ids(again["train-clean-5_dev"]) == [u.id for u in dev]
    chosen = {
        read_manifest(
            prepare_librispeech(libri / "train-clean-5", tmp_path / f"s{s}", dev_speakers=1, seed=s, progress=False)[
                "train-clean-5_dev"
            ]
        )[0].speaker
        for s in range(12)
    }
    assert len(chosen) > 1, "the seed does not change the held-out speaker"
    with pytest.raises(ValueError, match="cannot hold out 4 of 4 speakers"):
        prepare_librispeech(libri / "train-clean-5", tmp_path / "c", dev_speakers=4, progress=False)


def test_librispeech_test_speakers_are_held_out_too(libri: Path, tmp_path: Path) -> None:
    """dev and test: whole speakers in neither training nor each other, at the paths the
    librispeech_mini experiment reads."""
    subset = libri / "train-clean-5"
    out = prepare_librispeech(subset, tmp_path / "a", dev_speakers=1, test_speakers=1, seed=3, progress=False)
    parts = {p: read_manifest(out[f"train-clean-5_{p}"]) for p in ("train", "dev", "test")}
    speakers = {p: {u.speaker for u in utts} for p, utts in parts.items()}
    assert [len(speakers[p]) for p in ("train", "dev", "test")] == [2, 1, 1]
    assert speakers["train"] | speakers["dev"] | speakers["test"] == set(LS_SPEAKERS["train-clean-5"])  # 4: disjoint
    assert sorted(u.id for utts in parts.values() for u in utts) == _ids(out["train-clean-5"])
    dev_only = prepare_librispeech(subset, tmp_path / "b", dev_speakers=1, seed=3, progress=False)
    assert _ids(dev_only["train-clean-5_dev"]) == [u.id for u in parts["dev"]]  # the same dev with or without a test part
    test_only = prepare_librispeech(subset, tmp_path / "c", test_speakers=1, seed=3, progress=False)
    assert set(test_only) == {"train-clean-5", "train-clean-5_train", "train-clean-5_test"}
    with pytest.raises(ValueError, match="cannot hold out 4 of 4 speakers"):
        prepare_librispeech(subset, tmp_path / "d", dev_speakers=2, test_speakers=2, progress=False)
    with pytest.raises(ValueError, match="must be >= 0"):
        prepare_librispeech(subset, tmp_path / "d", test_speakers=-1, progress=False)

    cfg = compose("train", ["experiment=librispeech_mini", f"data.root={tmp_path / 'a'}"])
    assert [Path(cfg.data[f"{p}_manifest"]) for p in ("train", "dev", "test")] == [out[f"train-clean-5_{p}"] for p in ("train", "dev", "test")]


def test_librispeech_missing_flac_is_an_error_naming_it(libri: Path, tmp_path: Path) -> None:
    missing = libri / "train-clean-5" / "26" / "101" / "26-101-0001.flac"
    missing.unlink()
    with pytest.raises(CorpusError, match=r"26-101\.trans\.txt:2: transcript of '26-101-0001' but .*26-101-0001\.flac"):
        prepare_librispeech(libri, tmp_path / "out", progress=False)
    with pytest.warns(UserWarning, match="skipped 1 bad entries"):
        out = prepare_librispeech(libri, tmp_path / "out", skip_bad=True, progress=False)
    ids = _ids(out["train-clean-5"])
    assert len(ids) == 11 and "26-101-0001" not in ids


def test_librispeech_flac_without_transcript_is_an_error(libri: Path, tmp_path: Path) -> None:
    extra = libri / "dev-clean" / "84" / "100" / "84-100-0009.flac"
    sf.write(extra, _noise(16000, 0.1), 16000)
    with pytest.raises(CorpusError, match=r"84-100-0009\.flac: flac without a line"):
        prepare_librispeech(libri, tmp_path / "out", progress=False)


def test_librispeech_bad_transcript_line_and_bad_audio(libri: Path, tmp_path: Path) -> None:
    chapter = libri / "dev-clean" / "174" / "101"
    trans = chapter / "174-101.trans.txt"
    trans.write_text(trans.read_text() + "174-101-0003\n")
    (chapter / "174-101-0002.flac").write_bytes(b"not a flac")
    with pytest.raises(CorpusError, match="2 problem") as info:
        prepare_librispeech(libri / "dev-clean", tmp_path / "out", progress=False)
    assert "174-101.trans.txt:4: expected 'UTTID TEXT'" in str(info.value)
    assert "174-101-0002.flac: cannot read audio header" in str(info.value)


def test_librispeech_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CorpusError, match="no LibriSpeech subset found"):
        prepare_librispeech(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError):
        prepare_librispeech(tmp_path / "absent", tmp_path / "out", progress=False)


@pytest.mark.skipif(not (SHARED_DATA / "librispeech-mini").is_dir(), reason="no ../shared/data/librispeech-mini")
def test_librispeech_mini_real(tmp_path: Path) -> None:
    out = prepare_librispeech(SHARED_DATA / "librispeech-mini", tmp_path, dev_speakers=2, test_speakers=2, progress=False)
    utts = read_manifest(out["train-clean-5"], check_files=True)
    assert len(utts) == 922 and len({u.speaker for u in utts}) == 18
    assert sum(u.duration for u in utts) / 3600 == pytest.approx(3.15, abs=0.01)
    parts = {p: read_manifest(out[f"train-clean-5_{p}"]) for p in ("train", "dev", "test")}
    speakers = {p: {u.speaker for u in utts} for p, utts in parts.items()}
    assert [len(speakers[p]) for p in ("train", "dev", "test")] == [14, 2, 2]
    assert len(speakers["train"] | speakers["dev"] | speakers["test"]) == 18
    assert sum(len(utts) for utts in parts.values()) == 922


# ----------------------------------------------------------------------- FSDD


@pytest.fixture
def fsdd(tmp_path: Path) -> Path:
    """``recordings/`` with 3 speakers x 10 digits x 2 takes at 8 kHz, plus two stray files."""
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for spk in ("alice", "bob", "theo"):
        for digit in range(10):
            for take in range(2):
                sf.write(rec / f"{digit}_{spk}_{take}.wav", _noise(8000, 0.05 + 0.01 * digit), 8000, subtype="PCM_16")
    (rec / "notes.txt").write_text("not a recording")
    sf.write(rec / "hello_alice.wav", _noise(8000, 0.1), 8000)
    return tmp_path / "fsdd"


def _check_fsdd_split(out: dict[str, Path], test_speakers: set[str]) -> dict[str, list[Utterance]]:
    splits = {name: read_manifest(path, check_files=True) for name, path in out.items()}
    assert {u.speaker for u in splits["test"]} == test_speakers
    for name in ("train", "dev"):
        assert not {u.speaker for u in splits[name]} & test_speakers, name
    assert not {u.id for u in splits["train"]} & {u.id for u in splits["dev"]}
    for utts in splits.values():
        for u in utts:
            digit, speaker, _ = u.id.split("_")
            assert u.text == DIGIT_WORDS[int(digit)] and u.speaker == speaker, u
    return splits


def test_fsdd_holds_out_test_speaker(fsdd: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\).*hello_alice\.wav, notes\.txt"):
        out = prepare_fsdd(fsdd, tmp_path / "out", test_speakers=("theo",), dev_fraction=0.1)
    splits = _check_fsdd_split(out, {"theo"})
    assert [len(splits[n]) for n in ("train", "dev", "test")] == [36, 4, 20]
    assert Counter(u.speaker for u in splits["dev"]) == {"alice": 2, "bob": 2}  # stratified by speaker
    # 8 kHz files, paths to the originals; load_audio brings them to 16 kHz
    u = splits["train"][0]
    assert u.audio_filepath.startswith(str(fsdd / "recordings"))
    assert load_audio(u.audio_filepath).shape[0] == pytest.approx(u.duration * 16000, abs=2)


def test_fsdd_is_deterministic_and_seeded(fsdd: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stray files, tested above
        a = prepare_fsdd(fsdd / "recordings", tmp_path / "a", test_speakers="bob", dev_fraction=0.25, seed=1)
        b = prepare_fsdd(fsdd, tmp_path / "b", test_speakers=["bob"], dev_fraction=0.25, seed=1)
        c = prepare_fsdd(fsdd, tmp_path / "c", test_speakers=["bob"], dev_fraction=0.25, seed=2)
    _check_fsdd_split(a, {"bob"})
    assert _ids(a["dev"]) == _ids(b["dev"]) and len(_ids(a["dev"])) == 10
    assert _ids(a["dev"]) != _ids(c["dev"])


def test_fsdd_errors(fsdd: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"\['zoe'\] have no recordings.*'alice'"):
        prepare_fsdd(fsdd, tmp_path / "out", test_speakers=("zoe",))
    with pytest.raises(ValueError, match="dev_fraction"):
        prepare_fsdd(fsdd, tmp_path / "out", dev_fraction=1.0)
    with pytest.raises(FileNotFoundError):
        prepare_fsdd(tmp_path / "absent", tmp_path / "out")


@pytest.mark.skipif(not (SHARED_DATA / "fsdd").is_dir(), reason="no ../shared/data/fsdd")
def test_fsdd_real(tmp_path: Path) -> None:
    out = prepare_fsdd(SHARED_DATA / "fsdd", tmp_path)
    splits = _check_fsdd_split(out, {"theo"})
    assert [len(splits[n]) for n in ("train", "dev", "test")] == [1800, 200, 500]
    assert {u.speaker for u in splits["train"]} == {"george", "jackson", "lucas", "nicolas"}


# ------------------------------------------------------------------------ SSI

SSI_SPLITS = {"train": 20, "validation": 6, "test": 4}
CORRUPT, EMPTY, NONE_TEXT = 5, 7, 21  # global row numbers of the bad rows


def _ssi_rows() -> dict[str, list[dict]]:
    """30 rows of the SSI schema; audio at 22.05/44.1 kHz, every 4th stereo, three bad rows."""
    rows: dict[str, list[dict]] = {}
    i = 0
    for split, n in SSI_SPLITS.items():
        rows[split] = []
        for _ in range(n):
            sr = 22050 if i % 2 else 44100
            seconds = 0.2 + 0.01 * i
            t = np.arange(int(sr * seconds)) / sr
            wave = (0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t)).astype(np.float32)
            if i % 4 == 0:
                wave = np.stack([wave, wave], axis=1)
            buf = io.BytesIO()
            sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
            audio = buf.getvalue() if i != CORRUPT else b"RIFF\x00\x00garbage" * 10
            text = {EMPTY: "   ", NONE_TEXT: None}.get(i, f" Sentence number {i} ")
            rows[split].append(
                {
                    "file_path": {"bytes": audio, "path": f"clip_{i:02d}.wav"},
                    "text": text,
                    "speaker_id": str(1000 + i % 5),
                    "emotion": "ANG",
                    "dataset": "CREMA-D" if i % 3 else "TESS",
                }
            )
            i += 1
    return rows


def _ssi_table(rows: list[dict]):  # -> pyarrow.Table with the HF Audio feature in its metadata
    pa = pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "file_path": datasets.Audio(),
            "text": datasets.Value("string"),
            "speaker_id": datasets.Value("string"),
            "emotion": datasets.Value("string"),
            "dataset": datasets.Value("string"),
        }
    )
    return pa.Table.from_pylist(rows).cast(features.arrow_schema)


@pytest.fixture(scope="module")
def ssi_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 30 rows as hub-style parquet shards and as a ``save_to_disk`` folder."""
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    from datasets.table import InMemoryTable

    root = tmp_path_factory.mktemp("ssi")
    tables = {split: _ssi_table(rows) for split, rows in _ssi_rows().items()}
    (root / "hub" / "data").mkdir(parents=True)
    for split, table in tables.items():
        pq.write_table(table, root / "hub" / "data" / f"{split}-00000-of-00001.parquet")
    (root / "hub" / "README.md").write_text("dataset card")
    dd = datasets.DatasetDict({split: datasets.Dataset(InMemoryTable(t)) for split, t in tables.items()})
    dd.save_to_disk(str(root / "disk"))
    return {"parquet": root / "hub", "disk": root / "disk"}


@pytest.mark.parametrize("kind", ["parquet", "disk"])
def test_ssi_decodes_filters_and_splits(ssi_sources: dict[str, Path], tmp_path: Path, kind: str) -> None:
    from sonus.data.recipes.ssi import prepare_ssi

    out_dir = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        out = prepare_ssi(out_dir, train_size=16, dev_size=5, test_size=5, source=ssi_sources[kind], progress=False)
    messages = "\n".join(str(w.message) for w in record)
    assert "dropped 2 row(s) with empty text: CREMA-D_clip_07, TESS_clip_21" in messages
    assert "dropped 1 row(s) with undecodable audio: CREMA-D_clip_05 (" in messages
    assert "downmixed 8 multi-channel clip(s)" in messages  # rows 0, 4, ..., 28
    assert "scaled down" not in messages

    splits = {name: read_manifest(path, check_files=True) for name, path in out.items()}
    assert {name: len(u) for name, u in splits.items()} == {"train": 16, "dev": 5, "test": 5}
    ids = [u.id for utts in splits.values() for u in utts]
    assert len(set(ids)) == 26
    assert not {"CREMA-D_clip_05", "CREMA-D_clip_07", "TESS_clip_21"} & set(ids)
    # 27 usable rows, 26 requested: the unused one's wav is removed, wavs/ matches the manifests
    assert sorted(p.stem for p in (out_dir / "wavs").glob("*.wav")) == sorted(ids)
    assert '"audio_filepath": "wavs/' in out["train"].read_text()  # relative: the folder moves as one

    by_id = {u.id: u for utts in splits.values() for u in utts}
    u = by_id.get("TESS_clip_12") or by_id["CREMA-D_clip_13"]
    i = int(u.id.rsplit("_", 1)[1])
    assert u.text == f"Sentence number {i}" and u.speaker == str(1000 + i % 5)
    info = sf.info(u.audio_filepath)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert u.duration == pytest.approx(0.2 + 0.01 * i, abs=1e-3)
    wave = load_audio(u.audio_filepath).numpy()
    peak = np.fft.rfftfreq(len(wave), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(wave)))]
    assert abs(peak - (200 + 20 * i)) < 8  # resampled, not just relabelled


def test_ssi_sources_agree_and_split_is_seeded(ssi_sources: dict[str, Path], tmp_path: Path) -> None:
    from sonus.data.recipes.ssi import prepare_ssi

    def run(kind: str, seed: int) -> dict[str, list[str]]:
        with pytest.warns(UserWarning):
            out = prepare_ssi(tmp_path / f"{kind}{seed}", 10, 4, 4, seed=seed, source=ssi_sources[kind], progress=False)
        return {name: _ids(path) for name, path in out.items()}

    assert run("parquet", 0) == run("disk", 0)
    assert run("parquet", 0) != run("parquet", 1)


def test_ssi_scales_sizes_down(ssi_sources: dict[str, Path], tmp_path: Path) -> None:
    from sonus.data.recipes.ssi import prepare_ssi

    with pytest.warns(UserWarning) as record:
        out = prepare_ssi(tmp_path / "out", source=ssi_sources["parquet"] / "data", progress=False)
    assert any(
        "only 27 usable items for the requested {'train': 8000, 'dev': 1500, 'test': 1500}" in str(w.message)
        and "scaled down to {'train': 21, 'dev': 3, 'test': 3}" in str(w.message)
        for w in record
    ), [str(w.message) for w in record]
    assert [len(_ids(out[n])) for n in ("train", "dev", "test")] == [21, 3, 3]


def test_ssi_bad_sources(ssi_sources: dict[str, Path], tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from sonus.data.recipes.ssi import prepare_ssi

    (tmp_path / "nothing").mkdir()
    with pytest.raises(CorpusError, match="neither parquet files"):
        prepare_ssi(tmp_path / "out", source=tmp_path / "nothing", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "train-0.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CorpusError, match=r"train-0\.parquet: not a readable parquet file"):
        prepare_ssi(tmp_path / "out", source=tmp_path / "junk", progress=False)
    table = pq.read_table(ssi_sources["parquet"] / "data" / "test-00000-of-00001.parquet").drop(["text"])
    pq.write_table(table, tmp_path / "notext.parquet")
    with pytest.raises(CorpusError, match=r"missing column\(s\) \['text'\]"):
        prepare_ssi(tmp_path / "out", source=tmp_path / "notext.parquet", progress=False)
    with pytest.raises(ValueError, match="split sizes"):
        prepare_ssi(tmp_path / "out", 0, 0, 0, source=ssi_sources["parquet"], progress=False)


def test_ssi_without_hub_raises_one_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    code = f"from sonus.data.recipes.ssi import prepare_ssi\nprepare_ssi({str(tmp_path / 'out')!r}, progress=False)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "CorpusError: could not load 'stapesai/ssi-speech-emotion-recognition'" in last, proc.stderr
    assert "save_to_disk(DIR)" in last and "source=DIR" in last
