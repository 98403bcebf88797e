"""The built-in synthetic corpus: eSpeak NG reading generated sentences.

``prepare_synth`` writes ``wavs/{split}/*.wav`` (16 kHz mono 16-bit), the manifests
``{train,dev,test}.jsonl`` (``speaker`` is the eSpeak voice, e.g. ``"en-us+f2"``),
``vocab.txt`` (the generator's word list) and ``summary.json``. Voices are every English
accent of the shipped eSpeak data, each with its default and many variants; rate, pitch,
pitch range and volume are drawn per utterance. No sentence occurs twice in the corpus.

* train: every accent x every variant except ``test_variants`` and ``dev_variants``;
* dev:   every accent x ``dev_variants``: like test, voices never heard in training and
  sentences unseen in train, so what is tuned or selected on dev (the two-pass weight,
  the best checkpoint) is tuned for new voices;
* test:  every accent x ``test_variants`` only: voices (and variants) never heard in
  training, while every accent is; sentences unseen in train.

``extra_train`` adds training utterances after all of these, so a larger training set keeps
the dev and test splits of ``num_utterances`` byte for byte (``make demo`` uses 96k more).

Determinism: everything random (text, voice, jitter, noise, eSpeak's noise seed) is drawn
up front from ``seed``. libespeak-ng also keeps state between utterances in C function
statics (e.g. the pitch flutter phase) that ``espeak_Initialize`` does not reset, so an
utterance's samples depend on what the same process synthesised before it. Utterances
are therefore cut into fixed shards of ``_SHARD_SIZE``, and every shard runs in a fresh
worker process (``maxtasksperchild=1``) forked from a parent that never synthesised: the
same seed gives byte-identical audio whatever ``num_workers`` is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sonus.audio import espeak
from sonus.audio.augment import mix_at_snr, noise_crop, noise_files
from sonus.audio.espeak import (
    EspeakEngine,
    VoiceSettings,
    espeak_paths,
    get_engine,
    load_library,
)
from sonus.audio.io import load_audio, resample, save_audio
from sonus.data.manifest import Utterance, write_manifest
from sonus.data.recipes._split import summarize
from sonus.data.recipes.text_gen import SentenceGenerator, build_vocabulary

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
FORMAT_VERSION = 4  # bump when the output for the same arguments changes
# Variants in voices/!v that sound like a person; "" is the accent's default voice. Left out,
# by their files: the robotic ones (long echoes: robosoft*, RicishayMax*, UniRobot, anikaRobot),
# whispers and breath-only voices (whisper*, caleb), croak, Demonic, Tweaky (a doubled third
# formant), fast, and names with a space. A variant changes the voice, not the language rules,
# so the Spanish and Portuguese speakers' variants (pablo, Diogo, ...) read English too.
ENGLISH_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "adam", "Alex", "Andrea", "Annie", "antonio",
    "belinda", "benjamin", "david", "edward", "linda", "max", "Mike", "robert",
    "Alicia", "Andy", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee",
    "Marco", "Mario", "Michael", "Nguyen", "Reed", "Storm", "announcer", "aunty", "boris", "ed",
    "edward2", "grandma", "grandpa", "gustave", "ian", "iven", "iven2", "iven3", "iven4", "john",
    "kaukovalta", "klatt5", "klatt6", "marcelo", "michel", "miguel", "mike2", "norbert", "pablo",
    "paul", "pedro", "quincy", "rob", "sandro", "shelby", "steph", "steph2", "steph3", "travis",
    "victor", "zac",
)  # fmt: skip
TEST_VARIANTS = ("m3", "f4", "klatt3", "belinda")
DEV_VARIANTS = ("m2", "f2", "klatt2", "Annie")  # dev, like test, hears voices training never does
RATE_WPM = (130, 180)  # eSpeak default 175
PITCH = (30, 70)  # 0..100, default 50
PITCH_RANGE = (30, 80)  # 0..100, default 50
VOLUME = (70, 120)  # 0..200, default 100
KEEP_SILENCE_S = 0.075  # silence framing the speech after trimming

_SHARD_SIZE = 100
_STALL_TIMEOUT_S = 300.0  # no shard done for this long: a worker died; the rest counts as failed
_NOISE_CACHE: dict[str, np.ndarray] = {}


def list_voices(
    data_path: str, test_variants: tuple[str, ...] = TEST_VARIANTS, dev_variants: tuple[str, ...] = DEV_VARIANTS
) -> tuple[list[str], list[str], list[str]]:
    """(training, dev, test voices) of an eSpeak data folder, named like ``"en-us+f2"``.

    Accents are the folder's ``lang/gmw/en*`` files but ``en-Shaw`` (it reads the Shavian
    alphabet); variants are those of :data:`ENGLISH_VARIANTS` it has (``""``: the
    accent's default voice). Test voices are every accent with a variant of
    ``test_variants``, dev voices every accent with one of ``dev_variants`` (empty: dev
    speaks with the training voices), training voices every accent with any other variant.

    Raises:
        ValueError: a test or dev variant is missing from the data, the two overlap, or
            training is left without voices.
    """
    files = sorted((Path(data_path) / "lang" / "gmw").glob("en*"))
    accents = [f.name.lower() for f in files if f.is_file() and f.name.lower() != "en-shaw"]
    variants = [v for v in ENGLISH_VARIANTS if v == "" or (Path(data_path) / "voices" / "!v" / v).is_file()]
    missing = sorted((set(test_variants) | set(dev_variants)) - set(variants))
    train_variants = [v for v in variants if v not in test_variants and v not in dev_variants]
    if missing or not accents or not test_variants or not train_variants or set(test_variants) & set(dev_variants):
        raise ValueError(f"test_variants {test_variants} and dev_variants {dev_variants} must be disjoint subsets of the "
                         f"eSpeak variants {variants} in {data_path}, leaving some for training "
                         f"(missing: {missing}, accents: {accents})")  # fmt: skip

    def name(accent: str, variant: str) -> str:
        return f"{accent}+{variant}" if variant else accent

    def voices(vs) -> list[str]:
        return [name(a, v) for a in accents for v in vs]

    return voices(train_variants), voices(dev_variants), voices(test_variants)


def fit_silence(wave: np.ndarray, sample_rate: int, keep_s: float = KEEP_SILENCE_S,
                threshold_db: float = -40.0) -> np.ndarray:  # fmt: skip
    """Cut or zero-pad both ends of a (T,) signal so ``keep_s`` seconds of silence frame the speech.

    A 10 ms frame is speech when its RMS is within ``threshold_db`` of the loudest frame's.
    Returns (T',) float32; a signal shorter than one frame is returned unchanged.
    """
    hop = sample_rate // 100
    n = len(wave) // hop
    if n == 0:
        return wave
    rms = np.sqrt(np.mean(wave[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)  # (n,)
    active = np.flatnonzero(rms > rms.max() * 10 ** (threshold_db / 20))
    keep = int(keep_s * sample_rate)
    start, end = active[0] * hop - keep, (active[-1] + 1) * hop + keep  # may lie outside the signal
    speech = wave[max(0, start) : min(len(wave), end)]
    return np.pad(speech, (max(0, -start), max(0, end - len(wave)))).astype(np.float32)


@dataclass(frozen=True)
class _UttSpec:
    id: str
    split: str
    text: str
    settings: VoiceSettings
    seed: int  # for eSpeak's noise generator
    wav_path: str
    noise_path: str | None = None
    noise_offset: float = 0.0  # where in the noise file the noise starts, as a fraction of it
    snr_db: float = 0.0


def _render(spec: _UttSpec, engine: EspeakEngine) -> np.ndarray:
    """Synthesise, resample to 16 kHz, trim, add noise: (T,) float32 in [-1, 1]."""
    pcm = engine.synthesize(spec.text, spec.settings, spec.seed)  # (T22,) int16
    wave = fit_silence(resample(pcm.astype(np.float32) / 32768.0, engine.sample_rate, SAMPLE_RATE), SAMPLE_RATE)
    if spec.noise_path is not None:
        if spec.noise_path not in _NOISE_CACHE:
            _NOISE_CACHE[spec.noise_path] = load_audio(spec.noise_path, SAMPLE_RATE).numpy()
        noise = _NOISE_CACHE[spec.noise_path]
        start = int(spec.noise_offset * len(noise))
        noise = noise_crop(noise, start, len(wave))
        wave = mix_at_snr(wave, noise, spec.snr_db)
    peak = float(np.max(np.abs(wave)))
    return (wave * (0.99 / peak) if peak > 0.99 else wave).astype(np.float32)


def _synth_shard(specs: list[_UttSpec]) -> list[tuple[str, int, str]]:
    """Worker: render and save a shard; rows are (id, num_samples, error or "")."""
    rows = []
    for spec in specs:
        try:
            wave = _render(spec, get_engine())
            save_audio(spec.wav_path, wave, SAMPLE_RATE)
            rows.append((spec.id, len(wave), ""))
        except Exception as e:  # noqa: BLE001 (one bad utterance is reported, not fatal)
            rows.append((spec.id, 0, f"{type(e).__name__}: {e}"))
    return rows


@dataclass(frozen=True)
class SplitSummary:
    """Figures for one split of the corpus."""

    num_utterances: int
    hours: float
    mean_duration: float  # seconds
    num_voices: int
    num_words: int  # distinct words in its text


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`prepare_synth` wrote (also saved, with the arguments, as ``summary.json``)."""

    output_dir: str
    splits: dict[str, SplitSummary]
    distinct_words: int  # over all splits
    num_failed: int  # utterances that could not be synthesised (left out of the manifests)
    failed_ids: tuple[str, ...]
    wall_seconds: float  # of the run that generated the corpus
    reused: bool = False  # True: the folder was already complete for these arguments

    @property
    def hours(self) -> float:
        return sum(s.hours for s in self.splits.values())


def _plan(out: Path, sizes: dict[str, int], seed: int, gen: SentenceGenerator, voices: dict[str, list[str]],
          noise: list[Path], snr_db: tuple[float, float], noise_prob: float, extra_train: int = 0) -> list[_UttSpec]:  # fmt: skip
    """Every utterance's text, voice, jitter and noise, drawn from ``seed`` alone.

    Text, voice and noise draw from separate streams, so switching noise on or off
    leaves text and voices unchanged. Training and dev draw a voice from ``voices["pool"]``
    (the training voices of format 3, before dev had its own), so every draw from the voice
    stream, and hence the test split, is what it was: a dev utterance then takes the dev
    voice at that index (modulo), a training utterance that drew a dev voice another
    training voice from a stream of its own. ``extra_train`` training utterances come last,
    each stream going on where the test split left it: the other splits stay as they are.
    """
    rng_text, rng_voice, rng_noise, rng_redraw = (np.random.default_rng([seed, k]) for k in range(4))
    texts = gen.sample_unique(sum(sizes.values()), rng_text)  # all distinct: dev/test text unseen in train
    if extra_train:
        texts += gen.sample_unique(extra_train, rng_text, exclude=set(texts))
    specs: list[_UttSpec] = []

    def add(split: str, i: int, voice: str) -> None:
        settings = VoiceSettings(
            voice=voice,
            rate=int(rng_voice.integers(RATE_WPM[0], RATE_WPM[1] + 1)),
            pitch=int(rng_voice.integers(PITCH[0], PITCH[1] + 1)),
            pitch_range=int(rng_voice.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            volume=int(rng_voice.integers(VOLUME[0], VOLUME[1] + 1)),
        )
        draw, offset, snr = rng_noise.random(3)  # drawn even without noise: streams stay aligned
        noise_path = str(noise[int(rng_noise.integers(len(noise)))]) if noise and draw < noise_prob else None
        uid = f"synth-{split}-{i:06d}"
        specs.append(_UttSpec(
            id=uid, split=split, text=texts[len(specs)], settings=settings,
            seed=int(rng_voice.integers(2**31)), wav_path=str(out / "wavs" / split / f"{uid}.wav"),
            noise_path=noise_path, noise_offset=float(offset), snr_db=snr_db[0] + snr * (snr_db[1] - snr_db[0]),
        ))  # fmt: skip

    for split in SPLITS:
        for i in range(sizes[split]):
            own = voices[split]
            drawn = voices["pool"] if split != "test" else own
            voice = drawn[int(rng_voice.integers(len(drawn)))]
            if split == "dev" and voice not in own:
                voice = own[drawn.index(voice) % len(own)]
            elif split == "train" and voice not in own:
                voice = own[int(rng_redraw.integers(len(own)))]
            add(split, i, voice)
    for i in range(sizes["train"], sizes["train"] + extra_train):
        add("train", i, voices["train"][int(rng_voice.integers(len(voices["train"])))])
    return specs


def _run_pool(specs: list[_UttSpec], num_workers: int, progress: bool) -> dict[str, tuple[int, str]]:
    """Synthesise in fresh worker processes, one per shard; returns id -> (num_samples, error)."""
    method = "fork" if "fork" in mp.get_all_start_methods() and not espeak.synthesized_here() else "spawn"
    shards = [specs[s : s + _SHARD_SIZE] for s in range(0, len(specs), _SHARD_SIZE)]
    results: dict[str, tuple[int, str]] = {}
    with mp.get_context(method).Pool(num_workers, maxtasksperchild=1) as pool, tqdm(
        total=len(specs), desc="synth", unit="utt", disable=not progress
    ) as bar:
        it = pool.imap_unordered(_synth_shard, shards)
        for _ in shards:
            try:
                rows = it.next(timeout=_STALL_TIMEOUT_S)
            except mp.TimeoutError:
                log.error("no synthesis progress for %.0f s (a worker died?); giving up on the rest", _STALL_TIMEOUT_S)
                break
            results.update((uid, (n, err)) for uid, n, err in rows)
            bar.update(len(rows))
    return {spec.id: results.get(spec.id, (0, "lost: its worker process did not return")) for spec in specs}


def _summarize(out: Path, by_split: dict[str, list[Utterance]], failed: list[str], wall: float) -> SynthSummary:
    splits = {}
    for split, utts in by_split.items():
        total = sum(u.duration for u in utts)
        splits[split] = SplitSummary(
            num_utterances=len(utts), hours=round(total / 3600, 4), mean_duration=round(total / max(1, len(utts)), 4),
            num_voices=len({u.speaker for u in utts}), num_words=len({w for u in utts for w in u.text.split()}),
        )  # fmt: skip
    words = {w for utts in by_split.values() for u in utts for w in u.text.split()}
    return SynthSummary(str(out), splits, len(words), len(failed), tuple(failed), round(wall, 2))


def _load_summary(path: Path, args: dict) -> SynthSummary | None:
    """The saved summary if ``path`` exists and was written for ``args``; else None."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["args"] != args or not all((path.parent / f"{s}.jsonl").is_file() for s in saved["splits"]):
            return None
        splits = {name: SplitSummary(**fields) for name, fields in saved["splits"].items()}
        return SynthSummary(str(path.parent), splits, saved["distinct_words"], saved["num_failed"],
                            tuple(saved["failed_ids"]), saved["wall_seconds"], reused=True)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as e:
        if path.exists():
            log.warning("%s: unreadable (%s); generating the corpus again", path, e)
        return None


def prepare_synth(
    output_dir: str | os.PathLike,
    num_utterances: int = 12000,
    seed: int = 42,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.05,
    noise_dir: str | os.PathLike | None = None,
    snr_db: tuple[float, float] = (10.0, 30.0),
    noise_prob: float = 0.0,
    num_workers: int = 2,
    extra_train: int = 0,
    min_words: int = 2,
    max_words: int = 6,
    vocab_size: int = 4000,
    test_variants: tuple[str, ...] = TEST_VARIANTS,
    dev_variants: tuple[str, ...] = DEV_VARIANTS,
    progress: bool = True,
    force: bool = False,
) -> SynthSummary:
    """Generate the synthetic speech corpus in ``output_dir`` (see the module docstring).

    Args:
        num_utterances: over all splits; dev and test get their fractions of it (at
            least one utterance each when the fraction is > 0; no manifest when it is 0).
        noise_dir: folder of wav/flac noise; each utterance gets noise from it with
            probability ``noise_prob``, at an SNR drawn uniformly from ``snr_db``.
        num_workers: worker processes; the output does not depend on it.
        extra_train: training utterances beyond ``num_utterances``, drawn after all the
            others: a larger training set whose dev and test splits are those of
            ``num_utterances`` alone.
        min_words, max_words, vocab_size: see :class:`SentenceGenerator`, :func:`build_vocabulary`.
        test_variants: eSpeak variants heard only in the test split.
        dev_variants: eSpeak variants heard only in the dev split (empty: dev speaks with
            the training voices, as in format 3).
        force: generate again even if ``summary.json`` says the folder is complete
            for these arguments (otherwise that is returned at once, ``reused=True``).

    Returns:
        The summary; utterances that failed to synthesise are logged, counted and left out.

    Raises:
        RuntimeError: the eSpeak NG library or its data cannot be loaded.
        ValueError, FileNotFoundError: an argument is out of range or names a missing folder.
    """
    snr_db = (float(snr_db[0]), float(snr_db[1]))
    test_variants, dev_variants = tuple(str(v) for v in test_variants), tuple(str(v) for v in dev_variants)  # e.g. from YAML
    dev = max(1, round(num_utterances * dev_fraction)) if dev_fraction > 0 else 0
    test = max(1, round(num_utterances * test_fraction)) if test_fraction > 0 else 0
    sizes = {"train": num_utterances - dev - test, "dev": dev, "test": test}
    if sizes["train"] < 1 or num_workers < 1 or extra_train < 0 or not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError(f"need num_workers >= 1 (got {num_workers}), extra_train >= 0 (got {extra_train}), fractions in "
                         f"[0, 1) and a training split; got split sizes {sizes} from num_utterances={num_utterances}")  # fmt: skip
    if not 0 <= noise_prob <= 1 or snr_db[0] > snr_db[1] or (noise_prob > 0 and noise_dir is None):
        raise ValueError(f"need 0 <= noise_prob <= 1 with a noise_dir when > 0, and snr_db as (low, high); "
                         f"got noise_prob={noise_prob}, noise_dir={noise_dir}, snr_db={snr_db}")  # fmt: skip
    t0 = time.perf_counter()
    out = Path(output_dir).resolve()
    noise = noise_files(noise_dir) if noise_prob > 0 and noise_dir is not None else []
    lib_path, data_path = espeak_paths()
    version = load_library(lib_path).espeak_Info(None).decode()  # a clear error before any work
    train_voices, dev_voices, test_voices = list_voices(data_path, test_variants, dev_variants)
    args = {
        "format_version": FORMAT_VERSION, "num_utterances": num_utterances, "seed": seed,
        "dev_fraction": dev_fraction, "test_fraction": test_fraction, "min_words": min_words,
        "max_words": max_words, "vocab_size": vocab_size, "noise_prob": noise_prob, "snr_db": snr_db,
        "espeak": version, "test_voices": test_voices, "dev_voices": dev_voices,
        "train_voices_sha1": hashlib.sha1(" ".join(train_voices).encode()).hexdigest(),
        "noise_sha1": hashlib.sha1(" ".join(f"{p}:{p.stat().st_size}" for p in noise).encode()).hexdigest(),
        "recipe": [RATE_WPM, PITCH, PITCH_RANGE, VOLUME, KEEP_SILENCE_S, _SHARD_SIZE],
        **({"extra_train": extra_train} if extra_train else {}),  # absent when 0: corpora made before it stay valid
    }  # fmt: skip
    args = json.loads(json.dumps(args))  # tuples -> lists, as read back from summary.json
    if not force and (done := _load_summary(out / "summary.json", args)) is not None:
        log.info("%s is already complete for these arguments; reusing it", out)
        return done

    vocab = build_vocabulary(vocab_size)
    gen = SentenceGenerator(vocab, min_words, max_words)
    voices = {"train": train_voices, "dev": dev_voices or train_voices, "test": test_voices,
              "pool": list_voices(data_path, test_variants, ())[0]}  # fmt: skip
    specs = _plan(out, sizes, seed, gen, voices, noise, snr_db, noise_prob, extra_train)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # an interrupted run must not look complete
    results = _run_pool(specs, num_workers, progress)

    by_split: dict[str, list[Utterance]] = {s: [] for s in SPLITS if sizes[s] > 0}
    failed = []
    for spec in specs:
        n, err = results[spec.id]
        if err:
            failed.append(spec.id)
            log.warning("%s: synthesis failed, left out: %s", spec.id, err)
        else:
            by_split[spec.split].append(Utterance(spec.id, spec.wav_path, n / SAMPLE_RATE, spec.text,
                                                  speaker=spec.settings.voice))  # fmt: skip
    by_split = {split: utts for split, utts in by_split.items() if utts}
    if not by_split:
        raise RuntimeError(f"every one of {len(specs)} utterances failed to synthesise; the first: {results[specs[0].id][1]}")
    if failed:
        log.warning("%d of %d utterances failed and are left out: %s", len(failed), len(specs), summarize(failed))
    keep = {spec.wav_path for spec in specs if not results[spec.id][1]}
    for stale in (out / "wavs").glob("*/*.wav"):  # from an earlier run with other arguments
        if str(stale) not in keep:
            stale.unlink()
    for split in SPLITS:
        if split in by_split:
            write_manifest(out / f"{split}.jsonl", by_split[split])
        else:
            (out / f"{split}.jsonl").unlink(missing_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    summary = _summarize(out, by_split, failed, time.perf_counter() - t0)
    record = {"args": args, **{k: v for k, v in asdict(summary).items() if k not in ("output_dir", "reused")}}
    (out / "summary.json.tmp").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(out / "summary.json.tmp", out / "summary.json")
    return summary
