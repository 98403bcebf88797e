"""Tests of the synthetic corpus recipe (eSpeak NG through espeakng-loader)."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sonus.audio import espeak
from sonus.audio.augment import mix_at_snr
from sonus.data.manifest import read_manifest
from sonus.data.recipes import synth
from sonus.data.recipes.synth import fit_silence, list_voices, prepare_synth
from sonus.data.recipes.text_gen import (
    TEXT_RE,
    SentenceGenerator,
    build_vocabulary,
    is_vocabulary_word,
)

SMALL = {"num_utterances": 24, "dev_fraction": 0.25, "test_fraction": 0.25, "progress": False}


def _load(root: Path) -> dict[str, list]:
    return {s: read_manifest(root / f"{s}.jsonl", check_files=True) for s in synth.SPLITS}


def _wav_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("wavs/*/*.wav"))}


@pytest.fixture(scope="module", autouse=True)
def small_shards():
    """Several shards even for 24 utterances, so that worker scheduling could matter."""
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(synth, "_SHARD_SIZE", 5)
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthSummary]:
    root = tmp_path_factory.mktemp("synth_a")
    return root, prepare_synth(root, seed=7, num_workers=2, **SMALL)


def test_manifests_load_and_match_the_wavs(corpus):
    root, summary = corpus
    manifests = _load(root)
    assert {s: len(u) for s, u in manifests.items()} == {"train": 12, "dev": 6, "test": 6}
    assert summary.num_failed == 0 and summary.splits["test"].num_utterances == 6
    for utts in manifests.values():
        for u in utts:
            info = sf.info(u.audio_filepath)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), (u.id, info)
            assert abs(info.frames / info.samplerate - u.duration) < 1e-9, (u.id, info.frames, u.duration)
            wave, _ = sf.read(u.audio_filepath)
            assert np.sqrt(np.mean(wave**2)) > 0.01, f"{u.id} is (nearly) silent"
    total = sum(u.duration for utts in manifests.values() for u in utts)
    assert abs(summary.hours - total / 3600) < 1e-3


def test_silence_at_the_ends_is_short(corpus):
    root, _ = corpus
    for u in _load(root)["train"]:
        wave, sr = sf.read(u.audio_filepath)
        sound = np.flatnonzero(np.abs(wave) > 0.01 * np.abs(wave).max())  # above -40 dB of the peak
        # ~75 ms of silence frame the speech (a decaying tail may reach into it): sound within 120 ms of both ends
        assert 0.02 * sr < sound[0] < 0.12 * sr, (u.id, sound[0] / sr)
        assert 0.02 * sr < len(wave) - sound[-1] < 0.12 * sr, (u.id, (len(wave) - sound[-1]) / sr)


def test_test_split_holds_out_voices_and_sentences(corpus):
    root, summary = corpus
    m = _load(root)
    speakers = {s: {u.speaker for u in utts} for s, utts in m.items()}
    texts = {s: {u.text for u in utts} for s, utts in m.items()}
    assert not speakers["test"] & (speakers["train"] | speakers["dev"]), speakers
    assert not speakers["dev"] & speakers["train"], speakers  # dev too hears only new voices
    assert not texts["test"] & texts["train"] and not texts["dev"] & texts["train"]
    variants = {s: {v.partition("+")[2] for v in vs} for s, vs in speakers.items()}
    assert variants["test"] <= set(synth.TEST_VARIANTS) and not variants["train"] & set(synth.TEST_VARIANTS)
    assert variants["dev"] <= set(synth.DEV_VARIANTS) and not variants["train"] & set(synth.DEV_VARIANTS)
    assert summary.splits["test"].num_voices == len(speakers["test"])


def test_voice_inventory_holds_out_variants_not_accents():
    train, dev, test = list_voices(synth.espeak_paths()[1])
    accents = {v.partition("+")[0] for v in train}
    assert len(accents) >= 8 and len(train) >= 100, train
    assert {v.partition("+")[0] for v in test} == {v.partition("+")[0] for v in dev} == accents  # every accent is heard in training
    assert not set(train) & set(test) and not set(train) & set(dev) and not set(dev) & set(test)
    assert "en-us+f1" in train and "en-us+f2" in dev and "en-us+m3" in test and "en-gb-scotland" in train
    pool, none, _ = list_voices(synth.espeak_paths()[1], dev_variants=())
    assert none == [] and set(pool) == set(train) | set(dev)  # format 3's training voices
    with pytest.raises(ValueError, match="nosuchvariant"):
        list_voices(synth.espeak_paths()[1], ("nosuchvariant",))
    with pytest.raises(ValueError, match="disjoint"):
        list_voices(synth.espeak_paths()[1], ("m3",), ("m3",))


def test_text_is_lowercase_words(corpus):
    root, _ = corpus
    for utts in _load(root).values():
        for u in utts:
            assert TEXT_RE.fullmatch(u.text), u.text
            assert 2 <= len(u.text.split()) <= 6, u.text
    assert (root / "vocab.txt").read_text().split() == build_vocabulary(4000)


def test_same_seed_same_bytes_other_seed_other_corpus(corpus, tmp_path):
    root, _ = corpus
    again = prepare_synth(tmp_path / "b", seed=7, num_workers=1, **SMALL)  # other worker count, too
    assert not again.reused
    for split in synth.SPLITS:
        assert (root / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert _wav_bytes(root) == _wav_bytes(tmp_path / "b")
    prepare_synth(tmp_path / "c", seed=8, num_workers=2, **SMALL)
    assert (root / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    assert set(_wav_bytes(root).values()).isdisjoint(_wav_bytes(tmp_path / "c").values())


def test_extra_train_adds_training_utterances_and_keeps_the_rest(corpus, tmp_path):
    root, _ = corpus
    bigger = prepare_synth(tmp_path, seed=7, num_workers=2, extra_train=6, **SMALL)
    for split in ("dev", "test"):
        assert (root / f"{split}.jsonl").read_bytes() == (tmp_path / f"{split}.jsonl").read_bytes()
    base, more = _load(root), _load(tmp_path)
    fields = [[(u.id, u.text, u.speaker, u.duration) for u in m["train"]] for m in (base, more)]
    assert fields[1][: len(fields[0])] == fields[0]
    extra = more["train"][len(base["train"]) :]
    assert len(extra) == 6 and bigger.splits["train"].num_utterances == len(base["train"]) + 6
    held_out = {u.text for s in ("dev", "test") for u in base[s]} | {u.text for u in base["train"]}
    assert not held_out & {u.text for u in extra}
    assert {u.speaker for u in extra} <= set(list_voices(espeak.espeak_paths()[1])[0])
    wavs = _wav_bytes(tmp_path)
    assert {k: v for k, v in wavs.items() if k in _wav_bytes(root)} == _wav_bytes(root)


def test_workers_are_spawned_when_this_process_has_synthesised(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    monkeypatch.setattr(espeak, "_SYNTHESIZED_HERE", True)  # as after get_engine().synthesize(...) here
    prepare_synth(tmp_path, seed=7, num_workers=2, **SMALL)
    assert (root / "test.jsonl").read_bytes() == (tmp_path / "test.jsonl").read_bytes()
    assert _wav_bytes(root) == _wav_bytes(tmp_path)


def test_rerun_on_a_complete_folder_is_skipped(corpus):
    root, first = corpus
    stamp = (root / "train.jsonl").stat().st_mtime_ns
    second = prepare_synth(root, seed=7, num_workers=2, **SMALL)
    assert second.reused and second.splits == first.splits
    assert (root / "train.jsonl").stat().st_mtime_ns == stamp


def test_vocabulary_is_large_clean_and_plain():
    vocab = build_vocabulary(4000)
    assert len(vocab) == len(set(vocab)) == 4000
    assert all(is_vocabulary_word(w) and TEXT_RE.fullmatch(w) for w in vocab)
    assert {"the", "don't", "house"} <= set(vocab)
    assert not {"fuck", "tv", "bbc", "mr", "x", "dont"} & set(vocab)


def test_sentence_generator_favours_common_words_and_never_repeats():
    vocab = build_vocabulary(4000)
    gen = SentenceGenerator(vocab, 2, 6)
    rng = np.random.default_rng(0)
    sentences = gen.sample_unique(5000, rng)
    assert len(set(sentences)) == 5000
    counts = Counter(w for s in sentences for w in s.split())
    top, bottom = sum(counts[w] for w in vocab[:100]), sum(counts[w] for w in vocab[-100:])
    assert 3 * bottom < top < 30 * bottom, (top, bottom)  # Zipf-like but mild
    assert len(counts) > 3000
    tiny = SentenceGenerator(vocab[:20], 1, 2).sample_unique(300, rng)  # 420 possible: repeats if not refused
    assert len(set(tiny)) == 300
    extra = gen.sample_unique(100, rng, exclude=set(sentences))
    assert not set(extra) & set(sentences)
    with pytest.raises(RuntimeError, match="distinct sentences"):
        SentenceGenerator(["a", "b"], 1, 1).sample_unique(3, rng)


def test_fit_silence_trims_and_pads_to_the_margin():
    sr = 16000
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(sr // 2) / sr)
    padded = np.concatenate([np.zeros(sr // 2), tone, np.zeros(sr // 4)])
    for wave in (padded, tone):  # too much silence, then none at all
        out = fit_silence(wave, sr, keep_s=0.075)
        assert abs(len(out) - (len(tone) + 2 * 1200)) <= sr // 100, len(out)
        assert np.abs(out[:1100]).max() < 1e-3 and np.abs(out[-1100:]).max() < 1e-3


def test_mix_at_snr_hits_the_requested_ratio():
    rng = np.random.default_rng(0)
    speech, noise = rng.standard_normal(16000), 3.0 * rng.standard_normal(16000)
    mixed = mix_at_snr(speech, noise, 12.0)
    assert abs(10 * np.log10(np.mean(speech**2) / np.mean((mixed - speech) ** 2)) - 12.0) < 1e-6


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="the patch reaches workers only by fork")
def test_a_failing_utterance_is_skipped_and_reported(tmp_path, monkeypatch):
    render = synth._render

    def flaky(spec, engine):
        if spec.id == "synth-train-000002":
            raise RuntimeError("boom")
        return render(spec, engine)

    monkeypatch.setattr(synth, "_render", flaky)
    summary = prepare_synth(tmp_path, num_utterances=5, dev_fraction=0, test_fraction=0, progress=False)
    assert (summary.num_failed, summary.failed_ids) == (1, ("synth-train-000002",))
    ids = [u.id for u in read_manifest(tmp_path / "train.jsonl", check_files=True)]
    assert ids == ["synth-train-000000", "synth-train-000001", "synth-train-000003", "synth-train-000004"]
    assert not (tmp_path / "dev.jsonl").exists() and not (tmp_path / "wavs/train/synth-train-000002.wav").exists()


def test_noise_is_mixed_at_an_snr_in_range(tmp_path):
    (tmp_path / "noise").mkdir()
    sf.write(tmp_path / "noise" / "white.wav", 0.1 * np.random.default_rng(0).standard_normal(8000), 16000)
    common = {"num_utterances": 4, "dev_fraction": 0, "test_fraction": 0, "seed": 3, "progress": False}
    prepare_synth(tmp_path / "clean", **common)
    prepare_synth(tmp_path / "noisy", noise_dir=tmp_path / "noise", noise_prob=1.0, snr_db=(5.0, 15.0), **common)
    clean, noisy = (read_manifest(tmp_path / d / "train.jsonl") for d in ("clean", "noisy"))
    for c, n in zip(clean, noisy):
        assert (c.text, c.speaker, c.duration) == (n.text, n.speaker, n.duration)
        x, y = sf.read(c.audio_filepath)[0], sf.read(n.audio_filepath)[0]
        gain = np.dot(x, y) / np.dot(x, x)  # the mix may have been scaled down to avoid clipping
        snr = 10 * np.log10(np.mean((gain * x) ** 2) / np.mean((y - gain * x) ** 2))
        assert 4.0 < snr < 16.0, (c.id, snr)


def test_missing_library_raises_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        espeak.EspeakEngine(library_path=str(tmp_path / "libespeak-ng.so"), data_path=str(tmp_path))
    monkeypatch.setattr(synth, "espeak_paths", lambda: (str(tmp_path / "libespeak-ng.so"), str(tmp_path)))
    with pytest.raises(RuntimeError, match="pip install espeakng-loader"):
        prepare_synth(tmp_path / "out", **SMALL)
    assert not (tmp_path / "out").exists()
