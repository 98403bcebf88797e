"""LibriMix-style mixing: levels, lengths, clipping, determinism, splits, the recipe and the reader."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sonus.audio.augment import speed_perturb
from sonus.audio.io import AudioError, load_audio, save_audio
from sonus.audio.loudness import integrated_loudness
from sonus.audio.room import RoomConfig
from sonus.data.dynamic_mix import DynamicMixDataset
from sonus.data.librimix import (
    MixConfig,
    librispeech_utterances,
    mix_sources,
    speaker_split,
)
from sonus.data.librimix_folder import LibriMixDataset, mixture_csv
from sonus.data.manifest import Utterance, write_manifest
from sonus.data.recipes._split import CorpusError
from sonus.data.recipes.librimix import prepare_librimix
from sonus.data.separation import collate_separation
from tests.conftest import SHARED_DATA

SPEAKERS = ["103", "1034", "1040", "1069", "1081", "1088"]
SR = 8000
FAST_ROOMS = RoomConfig(rt60=(0.2, 0.3), max_order=12)  # short simulations keep the tests quick


def babble(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Speech-like test signal: a voiced harmonic tone under a syllable-rate envelope, with pauses."""
    t = np.arange(n) / sr
    f0 = rng.uniform(100, 220)
    voiced = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0, None) ** 2
    return (0.2 * voiced * envelope + 0.002 * rng.standard_normal(n)).astype(np.float32)


def make_librispeech(root: Path, speakers=SPEAKERS, per_speaker: int = 3, sr: int = 16000) -> Path:
    """A tiny LibriSpeech subset: SPK/CHAPTER/SPK-CHAPTER-NNNN.flac and SPK-CHAPTER.trans.txt."""
    rng = np.random.default_rng(0)
    subset = root / "train-clean-tiny"
    for spk in speakers:
        chapter = subset / spk / "100"
        chapter.mkdir(parents=True)
        lines = []
        for k in range(per_speaker):
            utt = f"{spk}-100-{k:04d}"
            sf.write(chapter / f"{utt}.flac", babble(rng, int(sr * rng.uniform(0.6, 1.0)), sr), sr)
            lines.append(f"{utt} SOME WORDS {k}\n")
        (chapter / f"{spk}-100.trans.txt").write_text("".join(lines))
    return subset


def make_noise(folder: Path, n_files: int = 3, sr: int = 16000) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for k in range(n_files):
        sf.write(folder / f"noise{k}.wav", (0.05 * rng.standard_normal(int(0.7 * sr))).astype(np.float32), sr)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_librispeech(tmp_path_factory.mktemp("librispeech"))


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory) -> Path:
    return make_noise(tmp_path_factory.mktemp("noise") / "noise")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus, noise_dir) -> Path:
    """The recipe's output, with noise and reverberation, max mode."""
    out = tmp_path_factory.mktemp("librimix") / "Libri2Mix"
    return prepare_librimix(corpus, out, mode="max", train_mixtures=4, dev_mixtures=2, test_mixtures=2,
                            noise_dir=noise_dir, reverb=True, seed=3, progress=False)  # fmt: skip


# --- loudness and mixing on arrays -------------------------------------------------------


@pytest.mark.parametrize("sr", [8000, 16000, 48000])
def test_loudness_meter_matches_bs1770_reference_tone(sr):
    t = np.arange(5 * sr) / sr
    tone = np.sin(2 * np.pi * 997 * t)
    assert integrated_loudness(tone, sr) == pytest.approx(-3.01, abs=0.05)  # BS.1770's calibration
    assert integrated_loudness(0.1 * tone, sr) == pytest.approx(-23.01, abs=0.05)
    assert integrated_loudness(np.zeros(sr), sr) == float("-inf")


def test_mixture_is_the_exact_sum_and_levels_are_in_range():
    cfg = MixConfig(mode="max")
    for seed in range(4):
        rng = np.random.default_rng(seed)
        sources = [babble(rng, 12000), babble(rng, 9000)]
        noise = (0.1 * rng.standard_normal(5000)).astype(np.float32)  # shorter than the mixture: loops
        m = mix_sources(sources, noise, cfg, np.random.default_rng(100 + seed))
        assert m.scale == 1.0  # levels this low never reach the 0.9 peak
        np.testing.assert_array_equal(m.mix("mix_clean"), m.images[0] + m.images[1])
        np.testing.assert_array_equal(m.mix("mix_both"), m.images[0] + m.images[1] + m.noise)
        np.testing.assert_array_equal(m.mix("mix_single"), m.images[0] + m.noise)
        np.testing.assert_array_equal(m.sources, m.images)  # dry: the targets are what is mixed
        for i, (x, n) in enumerate(zip(m.sources, m.lengths)):
            measured = integrated_loudness(x[:n], SR)
            assert -33.0 - 0.01 <= measured <= -25.0 + 0.01, (i, measured)
            assert measured == pytest.approx(m.lufs[i], abs=0.01)
            np.testing.assert_allclose(x[:n], m.gains[i] * sources[i], rtol=1e-5, atol=1e-7)
        assert -38.0 - 0.01 <= integrated_loudness(m.noise, SR) <= -30.0 + 0.01
        # the noise is the file's stretch from noise_start on, looped
        idx = (m.noise_start + np.arange(12000)) % 5000
        np.testing.assert_allclose(m.noise, m.noise_gain * noise[idx], rtol=1e-5, atol=1e-7)
        example = m.example("a_b")
        assert example.mix.shape == (12000,) and example.sources.shape == (2, 12000)
        assert torch.equal(example.mix, torch.from_numpy(m.mix("mix_both")))


def test_min_and_max_modes_set_the_length():
    rng = np.random.default_rng(0)
    sources = [babble(rng, 8000), babble(rng, 12000), babble(rng, 10000)]
    short = mix_sources(sources, None, MixConfig(n_src=3, mode="min"), np.random.default_rng(1))
    long = mix_sources(sources, None, MixConfig(n_src=3, mode="max"), np.random.default_rng(1))
    assert short.sources.shape == (3, 8000) and short.lengths == (8000, 8000, 8000)
    assert long.sources.shape == (3, 12000) and long.lengths == (8000, 12000, 10000)
    assert np.all(long.sources[0, 8000:] == 0) and np.all(long.sources[2, 10000:] == 0)
    assert short.noise is None
    with pytest.raises(ValueError, match="needs noise"):
        short.mix("mix_both")
    cut = mix_sources(sources, None, MixConfig(n_src=3, mode="max", segment=0.5), np.random.default_rng(1))
    assert cut.sources.shape == (3, 4000)


def test_loud_mixtures_are_scaled_below_the_clipping_peak():
    cfg = MixConfig(speech_lufs=(-8.0, -6.0), noise_lufs=(-10.0, -8.0))
    rng = np.random.default_rng(0)
    sources = [babble(rng, 8000), babble(rng, 8000)]
    noise = (0.3 * rng.standard_normal(8000)).astype(np.float32)
    m = mix_sources(sources, noise, cfg, np.random.default_rng(0))
    assert m.scale < 1.0
    assert np.max(np.abs(m.mix("mix_both"))) == pytest.approx(0.9, abs=1e-4)
    # everything was scaled alike, so the parts still add up
    np.testing.assert_array_equal(m.mix("mix_both"), m.images[0] + m.images[1] + m.noise)
    for x, lufs in zip(m.sources, m.lufs):
        assert integrated_loudness(x, SR) == pytest.approx(lufs, abs=0.01)
        assert lufs < -8.0  # below the range: the clipping rule wins over the drawn level


def test_reverberant_mixtures():
    rng = np.random.default_rng(0)
    sources = [babble(rng, 8000), babble(rng, 9000)]
    cfg = MixConfig(reverb=FAST_ROOMS)
    m = mix_sources(sources, None, cfg, np.random.default_rng(5))
    assert m.room is not None and m.sources.shape == m.images.shape == (2, 8000)
    np.testing.assert_array_equal(m.mix("mix_clean"), m.images[0] + m.images[1])
    assert not np.allclose(m.sources, m.images)  # targets are the direct sound
    for x, n in zip(m.images, m.lengths):
        assert -33.01 <= integrated_loudness(x[:n], SR) <= -24.99
    wet = mix_sources(sources, None, MixConfig(reverb=FAST_ROOMS, reverberant_targets=True), np.random.default_rng(5))
    np.testing.assert_array_equal(wet.sources, wet.images)
    np.testing.assert_array_equal(wet.images, m.images)
    assert MixConfig(reverb={"rt60": [0.3, 0.4]}).reverb == RoomConfig(rt60=(0.3, 0.4))  # as Hydra passes it


def test_same_seed_same_mixture():
    rng = np.random.default_rng(0)
    sources = [babble(rng, 9000), babble(rng, 7000)]
    noise = (0.1 * rng.standard_normal(20000)).astype(np.float32)
    cfg = MixConfig(reverb=FAST_ROOMS, segment=0.8)
    a = mix_sources(sources, noise, cfg, np.random.default_rng(42))
    b = mix_sources(sources, noise, cfg, np.random.default_rng(42))
    c = mix_sources(sources, noise, cfg, np.random.default_rng(43))
    for name in ("sources", "images", "noise"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.gains == b.gains and a.gains != c.gains


def test_config_is_checked():
    with pytest.raises(ValueError, match="sample_rate"):
        MixConfig(sample_rate=22050)
    with pytest.raises(ValueError, match="mode"):
        MixConfig(mode="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="speech_lufs"):
        MixConfig(speech_lufs=(-20.0, -30.0))
    with pytest.raises(ValueError, match="n_src = 2, got 3"):
        mix_sources([np.ones(100)] * 3, None, MixConfig(), np.random.default_rng(0))


# --- speakers and dynamic mixing ---------------------------------------------------------


def test_speaker_split_is_disjoint_and_deterministic(corpus):
    split = speaker_split(corpus, dev_speakers=2, test_speakers=2, seed=1)
    assert sorted(split.train + split.dev + split.test) == sorted(SPEAKERS)
    assert len(split.dev) == 2 and len(split.test) == 2 and len(split.train) == 2
    assert speaker_split(corpus, 2, 2, seed=1) == split
    # from utterances (any order) it is the same split
    assert speaker_split(reversed(librispeech_utterances(corpus)), 2, 2, seed=1) == split
    named = speaker_split(corpus, dev_speakers=1, test_speakers=["103", "1034"])
    assert named.test == ("103", "1034") and len(named.dev) == 1 and not set(named.dev) & {"103", "1034"}
    with pytest.raises(ValueError, match="unknown"):
        speaker_split(corpus, test_speakers=["999"])
    with pytest.raises(ValueError, match="training"):
        speaker_split(corpus, dev_speakers=3, test_speakers=3)


def test_fewer_training_speakers_leave_dev_and_test_alone(corpus):
    from sonus.separation.config import build_dataset

    split = speaker_split(corpus, dev_speakers=1, test_speakers=1, seed=1)  # 4 training speakers
    three = split.with_train(3, seed=1)
    assert len(three.train) == 3 and set(three.train) < set(split.train)
    assert (three.dev, three.test) == (split.dev, split.test)
    assert split.with_train(3, seed=1) == three and split.with_train(None) is split
    assert split.with_train(4).train == split.train
    assert split.with_train([split.train[2]]).train == (split.train[2],)
    with pytest.raises(ValueError, match=r"need 1\.\.4"):
        split.with_train(5)
    with pytest.raises(ValueError, match=r"\['999'\] are not training speakers"):
        split.with_train(["999"])
    with pytest.raises(ValueError, match=r"\[.*\] are not training speakers"):
        split.with_train([split.test[0]])
    # the config key reaches dynamic mixing: only those voices are drawn
    d = {"kind": "librimix", "sample_rate": 8000, "mode": "min",
         "dynamic_mixing": {"enabled": True, "source": str(corpus), "dev_speakers": 1, "test_speakers": 1, "split_seed": 1,
                            "num_items": 50, "train_speakers": 2}}  # fmt: skip
    data = build_dataset(d, "train")
    assert data.speakers == list(split.with_train(2, seed=1).train)
    assert {u.speaker for i in range(50) for u in data.draw(i).utterances} == set(data.speakers)
    d["dynamic_mixing"]["train_speakers"] = [int(split.train[0]), int(split.train[3])]  # as Hydra parses a list of ids
    assert build_dataset(d, "train").speakers == [split.train[0], split.train[3]]


def test_dynamic_mixing_holds_out_dev_speakers_named_by_id(corpus):
    """A dev set picked by hand (e.g. to hold both sexes) must leave training the same way
    `sonus prepare librimix` does with those ids: the named voices are never mixed."""
    from sonus.separation.config import build_dataset

    by_count = speaker_split(corpus, dev_speakers=1, test_speakers=1, seed=1)
    dev = [by_count.train[0], by_count.dev[0]]  # one of the counted split's training speakers moves to dev
    named = speaker_split(corpus, dev_speakers=dev, test_speakers=1, seed=1)
    assert named.test == by_count.test and set(named.dev) == set(dev) and by_count.train[0] not in named.train
    d = {"kind": "librimix", "sample_rate": 8000, "mode": "min",
         "dynamic_mixing": {"enabled": True, "source": str(corpus), "dev_speakers": [int(s) for s in dev],  # as Hydra parses ids
                            "test_speakers": 1, "split_seed": 1, "num_items": 40}}  # fmt: skip
    data = build_dataset(d, "train")
    assert data.speakers == list(named.train)
    assert not {u.speaker for i in range(40) for u in data.draw(i).utterances} & (set(dev) | set(named.test))
    d["dynamic_mixing"]["dev_speakers"] = "two"
    with pytest.raises(ValueError, match=r"data\.dynamic_mixing\.dev_speakers: expected a number of speakers or a list"):
        build_dataset(d, "train")


def test_dynamic_mixing_draws_different_speakers_and_follows_the_epoch(corpus, noise_dir):
    cfg = MixConfig(noise=str(noise_dir))
    data = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=6, seed=5)
    assert len(data) == 6
    for i in range(6):
        draw = data.draw(i)
        speakers = [u.speaker for u in draw.utterances]
        assert len(set(speakers)) == 2, speakers
        assert draw.noise is not None and draw.noise.parent == noise_dir
    first = data[0]
    assert first.id == data.draw(0).id and first.sources.shape[0] == 2 and first.variant == ""
    again = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=6, seed=5)[0]
    assert torch.equal(first.mix, again.mix) and torch.equal(first.sources, again.sources)
    epoch0 = [data.draw(i).id for i in range(6)]
    data.set_epoch(1)
    assert [data.draw(i).id for i in range(6)] != epoch0
    data.set_epoch(0)
    assert torch.equal(data[0].mix, first.mix)
    assert len(data.cache._items) > 0  # loaded once, then kept
    batch = collate_separation([data[i] for i in range(3)])
    assert batch.sources.shape[:2] == (3, 2) and batch.mix.shape[1] == int(batch.lengths.max())
    with pytest.raises(IndexError):
        data[6]


def test_dynamic_mixing_speed_perturbs_each_source(corpus):
    cfg = MixConfig(sample_rate=16000, mode="max")  # max mode, whole utterances: the mixture is as long as its longest source
    plain = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=8, seed=2)
    fast = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=8, seed=2, speed_factors=[1.25])
    either = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=8, seed=2, speed_factors=[0.8, 1.25])
    picked = set()
    for i in range(8):
        assert fast.draw(i) == plain.draw(i) == either.draw(i)  # the same utterances, played at another speed
        waves = [torch.from_numpy(plain.cache.get(u.audio_filepath)) for u in plain.draw(i).utterances]
        length = {f: [len(speed_perturb(w, f, 16000)) for w in waves] for f in (0.8, 1.0, 1.25)}
        assert plain[i].mix.shape[0] == max(length[1.0])
        assert fast[i].mix.shape[0] == max(length[1.25]) < max(length[1.0])
        combos = {(f1, f2): max(length[f1][0], length[f2][1]) for f1 in (0.8, 1.25) for f2 in (0.8, 1.25)}
        n = either[i].mix.shape[0]
        assert n in combos.values(), (n, combos)
        picked |= {k for k, v in combos.items() if v == n}
    assert {f for k in picked for f in k} == {0.8, 1.25}, "both factors drawn"
    again = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=8, seed=2, speed_factors=[0.8, 1.25])
    assert all(torch.equal(again[i].mix, either[i].mix) for i in range(8))  # deterministic
    with pytest.raises(ValueError, match="speed_factors"):
        DynamicMixDataset.from_librispeech(corpus, cfg, num_items=8, speed_factors=[0.0])


def test_dynamic_mixing_from_a_manifest(corpus, tmp_path):
    utts = librispeech_utterances(corpus)
    split = speaker_split(utts, 2, 2, seed=0)
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, utts)
    data = DynamicMixDataset.from_manifest(manifest, MixConfig(sample_rate=16000), 3, speakers=split.train)
    assert {u.speaker for i in range(3) for u in data.draw(i).utterances} <= set(split.train)
    assert data[1].mix.shape[0] > 0
    anonymous = [Utterance(u.id, u.audio_filepath, u.duration, u.text) for u in utts]
    with pytest.raises(ValueError, match="needs a speaker"):
        DynamicMixDataset(anonymous, MixConfig(), 3)


def test_dynamic_mixing_pools_draw_speakers_by_share(corpus, tmp_path):
    """A big extra corpus (4 speakers x 12 utterances) at share 0.2 beside the small one (6 x 3):
    by utterance counts it would give 73% of the speakers, by share about 20%."""
    from sonus.separation.config import build_dataset

    extra = make_librispeech(tmp_path / "extra", speakers=["x1", "x2", "x3", "x4"], per_speaker=12)
    manifest = tmp_path / "extra.jsonl"
    write_manifest(manifest, librispeech_utterances(extra))
    d = {"kind": "librimix", "sample_rate": 8000, "mode": "min",
         "dynamic_mixing": {"enabled": True, "source": str(corpus), "dev_speakers": 0, "test_speakers": 0, "num_items": 600,
                            "extra": [{"manifest": str(manifest), "share": 0.2}]}}  # fmt: skip
    data = build_dataset(d, "train")
    drawn = [u.speaker for i in range(600) for u in data.draw(i).utterances]
    share = sum(s.startswith("x") for s in drawn) / len(drawn)
    assert 0.13 < share < 0.28, share
    assert {s for s in drawn if s.startswith("x")} == {"x1", "x2", "x3", "x4"}
    assert data[0].mix.shape[0] > 0
    d["dynamic_mixing"]["extra"][0]["share"] = 1.0
    with pytest.raises(ValueError, match="shares add up to 1"):
        build_dataset(d, "train")
    del d["dynamic_mixing"]["extra"][0]["manifest"]
    with pytest.raises(ValueError, match=r"extra\[0\]\.manifest"):
        build_dataset(d, "train")
    utts = librispeech_utterances(corpus)
    with pytest.raises(ValueError, match="in pool 1 and an earlier one"):
        DynamicMixDataset.from_pools([(utts, 0.5), (utts[:3], 0.5)], MixConfig(), 3)
    with pytest.raises(ValueError, match="no weight for speakers"):
        DynamicMixDataset(utts, MixConfig(), 3, speaker_weights={"103": 1.0})


# --- the recipe and the reader -----------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_recipe_writes_librimix_layout_with_disjoint_speakers(prepared, noise_dir):
    meta = prepared / "wav8k" / "max" / "metadata"
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        for kind in ("mix_clean", "mix_both", "mix_single"):
            rows = read_csv(meta / f"mixture_{split}_{kind}.csv")
            assert len(rows) == n and len(read_csv(meta / f"metrics_{split}_{kind}.csv")) == n
            for row in rows:
                assert (prepared / row["mixture_path"]).is_file()
                assert Path(row["mixture_path"]).parts[:4] == ("wav8k", "max", split, kind)
        assert list(read_csv(meta / f"mixture_{split}_mix_both.csv")[0]) == [
            "mixture_ID", "mixture_path", "source_1_path", "source_2_path", "noise_path", "length"]  # fmt: skip
    speakers, noises = {}, {}
    for split in ("train", "dev", "test"):
        info = read_csv(meta / f"info_{split}.csv")
        for row in info:
            assert row["speaker_1_ID"] != row["speaker_2_ID"]
            assert row["mixture_ID"].split("_")[0].split("-")[0] == row["speaker_1_ID"]
        speakers[split] = {row[f"speaker_{i}_ID"] for row in info for i in (1, 2)}
        noises[split] = {row["noise_origin"] for row in info}
        assert len({row["mixture_ID"] for row in info}) == len(info)  # no utterance pair twice
    assert not speakers["train"] & speakers["dev"] and not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]
    assert not noises["train"] & noises["test"] and not noises["dev"] & noises["test"]


def test_recipe_is_byte_identical_for_a_seed(prepared, corpus, noise_dir, tmp_path):
    again = prepare_librimix(corpus, tmp_path / "again", mode="max", train_mixtures=4, dev_mixtures=2,
                             test_mixtures=2, noise_dir=noise_dir, reverb=True, seed=3, progress=False)  # fmt: skip
    files = sorted(p.relative_to(prepared) for p in prepared.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 8 * 6 + 3 * 7  # 6 wavs per mixture; 7 CSVs per split
    for rel in files:
        assert (prepared / rel).read_bytes() == (again / rel).read_bytes(), rel
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_librimix(corpus, again, mode="max", train_mixtures=1, dev_mixtures=0, test_mixtures=0, progress=False)


def test_reader_returns_what_the_recipe_wrote(prepared):
    both = LibriMixDataset(prepared, "train", mode="max", mixture="mix_both")
    clean = LibriMixDataset(prepared, "train", mode="max", mixture="mix_clean")
    single = LibriMixDataset(prepared, "train", mode="max", mixture="mix_single")
    assert len(both) == 4
    lsb = 1 / 32768  # files are 16-bit: each part is rounded on its own
    for i in range(len(both)):
        ex = both[i]
        assert ex.mix.shape[0] == int(read_csv(both.csv_path)[i]["length"]) and ex.sources.shape[0] == 2
        assert ex.id == clean[i].id == single[i].id
        noise = load_audio(prepared / read_csv(both.csv_path)[i]["noise_path"], SR)
        single_ex = single[i]
        assert single_ex.sources.shape[0] == 1 and torch.equal(single_ex.sources[0], ex.sources[0])
        assert torch.allclose(both[i].mix, clean[i].mix + noise, atol=3 * lsb)
        assert float(ex.mix.abs().max()) <= 0.9 + lsb
    dry = LibriMixDataset(prepared, "test", mode="max")
    assert all(dry[i].sources.shape[0] == 2 for i in range(len(dry)))


def test_reader_takes_librimix_csvs_with_absolute_paths(prepared, tmp_path):
    """The real LibriMix scripts write absolute paths (and newer ones an original_mixture_ID)."""
    rows = read_csv(mixture_csv(prepared, SR, "max", "dev", "mix_clean"))
    target = mixture_csv(tmp_path, SR, "max", "dev", "mix_clean")
    target.parent.mkdir(parents=True)
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["mixture_ID", "original_mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"])
        for r in rows:
            paths = [str((prepared / r[c]).resolve()) for c in ("mixture_path", "source_1_path", "source_2_path")]
            writer.writerow([r["mixture_ID"], r["mixture_ID"], *paths, r["length"]])
    ours, theirs = LibriMixDataset(prepared, "dev", mode="max"), LibriMixDataset(tmp_path, "dev", mode="max")
    assert len(theirs) == len(ours) == 2
    assert torch.equal(theirs[1].sources, ours[1].sources) and theirs[1].id == ours[1].id


def test_recipe_without_noise_min_mode_sums_exactly(corpus, tmp_path):
    root = prepare_librimix(corpus, tmp_path / "m", train_mixtures=3, dev_mixtures=0, test_mixtures=1,
                            sample_rate=16000, progress=False)  # fmt: skip
    assert not (root / "wav16k" / "min" / "train" / "noise").exists()
    assert not (root / "wav16k" / "min" / "dev").exists()
    data = LibriMixDataset(root, "train", sample_rate=16000)
    for i in range(len(data)):
        ex = data[i]
        assert torch.allclose(ex.mix, ex.sources.sum(0), atol=2 / 32768)
        utts = [f"{u}.flac" for u in ex.id.split("_")]
        shortest = min(sf.info(next(corpus.rglob(u))).frames for u in utts)
        assert ex.mix.shape[0] == shortest  # min mode at the source rate


def test_reader_errors_name_the_file_and_row(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    csv_path = mixture_csv(root, SR, "max", "dev", "mix_clean")
    lines = csv_path.read_text().splitlines(keepends=True)
    where = re.escape(str(csv_path))

    csv_path.write_text(lines[0] + lines[1] + lines[2].replace(lines[2].rsplit(",", 1)[1], "abc\n"))
    with pytest.raises(CorpusError, match=rf"{where}:3: length 'abc'"):
        LibriMixDataset(root, "dev", mode="max")

    csv_path.write_text(lines[0] + lines[1] + lines[1])
    with pytest.raises(CorpusError, match=rf"{where}:3: .* repeats line 2"):
        LibriMixDataset(root, "dev", mode="max")

    csv_path.write_text(lines[0].replace("source_2_path", "src2") + lines[1])
    with pytest.raises(CorpusError, match="missing column"):
        LibriMixDataset(root, "dev", mode="max")

    csv_path.write_text("".join(lines))
    missing = root / read_csv(csv_path)[1]["source_2_path"]
    missing.unlink()
    with pytest.raises(CorpusError, match=rf"{where}:3: source_2_path file not found: {re.escape(str(missing))}"):
        LibriMixDataset(root, "dev", mode="max")

    save_audio(missing, np.zeros(100, np.float32), SR)  # there again, but too short
    (root / read_csv(csv_path)[0]["source_1_path"]).write_bytes(b"RIFF junk")
    data = LibriMixDataset(root, "dev", mode="max")
    with pytest.raises(AudioError, match=rf"{where}:2\)"):
        data[0]
    with pytest.raises(AudioError, match=rf"{re.escape(str(missing))}: 100 samples, {where}:3 says length"):
        data[1]
    with pytest.raises(FileNotFoundError, match="mixture_dev_mix_clean"):
        LibriMixDataset(root, "dev", mode="min")


@pytest.mark.skipif(not (SHARED_DATA / "librispeech-mini").is_dir(), reason="needs ../shared/data/librispeech-mini")
def test_real_librispeech_mini_with_noise_and_reverb():
    source = SHARED_DATA / "librispeech-mini" / "train-clean-5"
    split = speaker_split(source, dev_speakers=2, test_speakers=2)
    assert len(split.train) == 14
    cfg = MixConfig(noise=str(SHARED_DATA / "noise"), reverb=RoomConfig(max_order=20), segment=3.0)
    data = DynamicMixDataset.from_librispeech(source, cfg, num_items=2, speakers=split.test)
    for i in range(2):
        draw, m = data.mixture(i)
        assert {u.speaker for u in draw.utterances} == set(split.test)
        assert m.sources.shape[1] <= 3 * SR and np.max(np.abs(m.mix("mix_both"))) <= 0.9 + 1e-6
        for x, n, lufs in zip(m.images, m.lengths, m.lufs):
            assert integrated_loudness(x[:n], SR) == pytest.approx(lufs, abs=0.01)
            assert lufs <= -25.0 + 0.01
