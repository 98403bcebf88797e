"""Free Spoken Digit Dataset (FSDD) manifests.

FSDD (https://github.com/Jakobovski/free-spoken-digit-dataset) is a folder of 8 kHz
mono wav files named ``{digit}_{speaker}_{index}.wav``, 50 takes of each digit per
speaker. The text of an utterance is the digit's English word. Manifests point at
the original files; :func:`sonus.audio.io.load_audio` resamples them on load.

Splits are by speaker for the test set (held-out voices) and by utterance for the
dev set. Upstream's own convention (indices 0-4 of every speaker as test) is not
used: it tests on voices seen in training.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf

from sonus.data.manifest import Utterance, write_manifest
from sonus.data.recipes._split import CorpusError, stratified_pick, summarize

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z0-9]+)_(?P<index>[0-9]+)\.wav$")


def _recordings_dir(source: Path) -> Path:
    if not source.is_dir():
        raise FileNotFoundError(f"FSDD source folder not found: {source}")
    nested = source / "recordings"
    return nested if nested.is_dir() else source


def scan_fsdd(source: str | os.PathLike) -> list[Utterance]:
    """All recordings under ``source`` (or ``source/recordings``), sorted by id.

    Files whose names do not match ``{digit}_{speaker}_{index}.wav`` are skipped with
    one warning listing them (hidden files are ignored silently).

    Raises:
        FileNotFoundError: ``source`` is not a folder.
        CorpusError: a matching file is unreadable or empty, or no file matches.
    """
    folder = _recordings_dir(Path(source).resolve())
    utterances: list[Utterance] = []
    skipped: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        match = _NAME.match(path.name)
        if match is None or not path.is_file():
            skipped.append(path.name)
            continue
        try:
            duration = sf.info(str(path)).duration
        except Exception as e:  # libsndfile raises several types
            raise CorpusError(f"{path}: cannot read audio header ({type(e).__name__}: {e})") from e
        if not duration > 0:
            raise CorpusError(f"{path}: no audio samples")
        utterances.append(
            Utterance(
                id=path.stem,
                audio_filepath=str(path),
                duration=duration,
                text=DIGIT_WORDS[int(match["digit"])],
                speaker=match["speaker"],
            )
        )
    if skipped:
        warnings.warn(
            f"{folder}: skipped {len(skipped)} file(s) not named {{digit}}_{{speaker}}_{{index}}.wav: "
            f"{summarize(skipped)}",
            stacklevel=2,
        )
    if not utterances:
        raise CorpusError(f"{folder}: no FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav")
    return utterances


def prepare_fsdd(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    test_speakers: Sequence[str] = ("theo",),
    dev_fraction: float = 0.1,
    seed: int = 42,
) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` for FSDD.

    Args:
        source: the folder of ``{digit}_{speaker}_{index}.wav`` files, or one holding
            ``recordings/``.
        output_dir: where the manifests go (created if needed).
        test_speakers: every utterance of these speakers goes to test, none elsewhere.
            Empty: no test manifest is written.
        dev_fraction: share of the other speakers' utterances that goes to dev
            (rounded, at least one), spread evenly over speakers and digits; chosen
            by ``seed``, independent of listing order.
        seed: fixes the dev selection.

    Returns:
        ``{"train": path, "dev": path, "test": path}`` (``"test"`` only if there are test speakers).

    Raises:
        ValueError: ``dev_fraction`` not in (0, 1), or a test speaker has no recordings.
        CorpusError: see :func:`scan_fsdd`; or no speakers are left for training.
    """
    if isinstance(test_speakers, str):  # ("theo") instead of ("theo",) would hold out t, h, e, o
        test_speakers = (test_speakers,)
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    utterances = scan_fsdd(source)
    speakers = sorted({u.speaker for u in utterances if u.speaker is not None})
    unknown = sorted(set(test_speakers) - set(speakers))
    if unknown:
        raise ValueError(f"test speaker(s) {unknown} have no recordings in {source}; speakers found: {speakers}")
    test = [u for u in utterances if u.speaker in test_speakers]
    rest = [u for u in utterances if u.speaker not in test_speakers]
    if not rest:
        raise CorpusError(f"{source}: every speaker {speakers} is a test speaker; nothing left to train on")
    n_dev = max(1, round(dev_fraction * len(rest)))
    if n_dev >= len(rest):
        raise CorpusError(f"{source}: {len(rest)} non-test utterances are too few for dev_fraction={dev_fraction}")
    groups: dict[str, list[str]] = {}
    for u in rest:  # stratified: dev holds every (speaker, digit) pair in proportion
        groups.setdefault(f"{u.speaker}/{u.text}", []).append(u.id)
    dev_ids = stratified_pick(groups, n_dev, seed)
    splits = {
        "train": [u for u in rest if u.id not in dev_ids],
        "dev": [u for u in rest if u.id in dev_ids],
        "test": test,
    }
    output_dir = Path(output_dir)
    manifests: dict[str, Path] = {}
    for name, items in splits.items():
        if not items:
            continue
        manifests[name] = output_dir / f"{name}.jsonl"
        write_manifest(manifests[name], items, relative=False)
    return manifests
