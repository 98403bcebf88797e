"""LibriSpeech (and Mini LibriSpeech) manifests.

Layout (https://www.openslr.org/12)::

    SUBSET/SPK/CHAPTER/SPK-CHAPTER-NNNN.flac
    SUBSET/SPK/CHAPTER/SPK-CHAPTER.trans.txt     lines "SPK-CHAPTER-NNNN UPPER CASE TEXT"

Manifests point at the original flac files (absolute paths); nothing is copied or
converted. Text is lowercased; the speaker is the ``SPK`` folder name.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from sonus.data.manifest import Utterance, write_manifest
from sonus.data.recipes._split import CorpusError, hash_rank, pick_held_out, summarize

log = logging.getLogger(__name__)


def _is_subset(folder: Path) -> bool:
    """A subset folder holds ``SPK/CHAPTER/*.trans.txt`` or ``SPK/CHAPTER/*.flac``."""
    return any(folder.glob("*/*/*.trans.txt")) or any(folder.glob("*/*/*.flac"))


def find_subsets(source: str | os.PathLike) -> list[Path]:
    """The LibriSpeech subset folders at ``source``: itself, or its sub-folders.

    Raises:
        FileNotFoundError: ``source`` is not a folder.
        CorpusError: neither ``source`` nor any folder in it has the LibriSpeech layout.
    """
    source = Path(source).resolve()
    if not source.is_dir():
        raise FileNotFoundError(f"LibriSpeech source folder not found: {source}")
    if _is_subset(source):
        return [source]
    subsets = sorted(d for d in source.iterdir() if d.is_dir() and _is_subset(d))
    if not subsets:
        raise CorpusError(
            f"{source}: no LibriSpeech subset found; expected SUBSET/SPK/CHAPTER/SPK-CHAPTER.trans.txt "
            "with SPK-CHAPTER-NNNN.flac files, either in this folder or in its sub-folders (e.g. train-clean-5/)"
        )
    return subsets


def _scan_chapter(chapter: Path, speaker: str, problems: list[str]) -> list[Utterance]:
    """Utterances of one ``SPK/CHAPTER`` folder; every inconsistency goes to ``problems``."""
    flacs = {p.stem: p for p in chapter.glob("*.flac")}
    transcripts = sorted(chapter.glob("*.trans.txt"))
    if not transcripts and flacs:
        problems.append(f"{chapter}: {len(flacs)} flac files but no *.trans.txt transcript")
        return []
    utterances: list[Utterance] = []
    for trans in transcripts:
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{trans}:{lineno}"
                parts = line.split(maxsplit=1)
                if len(parts) < 2:
                    problems.append(f"{where}: expected 'UTTID TEXT', got {line.strip()!r}")
                    continue
                utt_id, text = parts[0], parts[1].strip()
                flac = flacs.pop(utt_id, None)
                if flac is None:
                    problems.append(
                        f"{where}: transcript of '{utt_id}' but {chapter / (utt_id + '.flac')} does not exist"
                    )
                    continue
                try:
                    duration = sf.info(str(flac)).duration
                except Exception as e:  # libsndfile raises several types
                    problems.append(f"{flac}: cannot read audio header ({type(e).__name__}: {e})")
                    continue
                if not duration > 0:
                    problems.append(f"{flac}: no audio samples")
                    continue
                utterances.append(
                    Utterance(
                        id=utt_id, audio_filepath=str(flac), duration=duration, text=text.lower(), speaker=speaker
                    )
                )
    for stem in sorted(flacs):
        problems.append(f"{flacs[stem]}: flac without a line in {chapter}/*.trans.txt")
    return utterances


def scan_subset(subset: str | os.PathLike, skip_bad: bool = False, progress: bool = True) -> list[Utterance]:
    """All utterances of one subset folder, sorted by id.

    Raises:
        CorpusError: a transcript line names a missing flac, a flac has no transcript line,
            a transcript line is malformed, a flac is unreadable, or an id repeats. All
            problems of the subset are listed (the first ten), each naming its file. With
            ``skip_bad`` the problems are warned about and the affected utterances skipped.
    """
    subset = Path(subset)
    chapters = sorted(c for c in subset.glob("*/*") if c.is_dir())
    problems: list[str] = []
    utterances: list[Utterance] = []
    for chapter in tqdm(chapters, desc=f"scan {subset.name}", unit="chapter", disable=not progress):
        utterances.extend(_scan_chapter(chapter, chapter.parent.name, problems))
    seen: dict[str, Utterance] = {}
    unique: list[Utterance] = []
    for utt in utterances:
        if utt.id in seen:
            problems.append(f"{utt.audio_filepath}: id '{utt.id}' also used by {seen[utt.id].audio_filepath}")
            continue
        seen[utt.id] = utt
        unique.append(utt)
    if problems:
        message = f"{subset}: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:10])
        if len(problems) > 10:
            message += f"\n  ... and {len(problems) - 10} more"
        if not skip_bad:
            raise CorpusError(message + "\n(pass skip_bad=True to skip these and go on)")
        warnings.warn(f"skipped {len(problems)} bad entries in {message}", stacklevel=3)
    if not unique:
        raise CorpusError(f"{subset}: no usable utterances")
    return sorted(unique, key=lambda u: u.id)


def prepare_librispeech(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    dev_speakers: int = 0,
    test_speakers: int = 0,
    seed: int = 42,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Write a JSON-lines manifest for every LibriSpeech subset found at ``source``.

    Args:
        source: a subset folder (holding speaker folders) or a folder holding subset
            folders (e.g. ``LibriSpeech/`` with ``train-clean-100/``, ``dev-clean/``).
        output_dir: where ``<subset>.jsonl`` files go (created if needed).
        dev_speakers: if > 0, also write ``<subset>_train.jsonl`` and ``<subset>_dev.jsonl``;
            the dev part holds this many whole speakers, chosen by ``seed``, so it
            measures generalisation to unseen voices.
        test_speakers: likewise for ``<subset>_test.jsonl``: this many further whole
            speakers, in neither train nor dev. The dev speakers are the same with or
            without a test part (both come from one ranking of the speakers by ``seed``).
        seed: fixes which speakers are held out (independent of file listing order).
        skip_bad: warn about and skip inconsistent entries instead of raising.
        progress: show a progress bar while reading audio headers.

    Returns:
        manifest name (``"train-clean-5"``, ``"train-clean-5_train"``, ...) -> path.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        CorpusError: no subset found, or a subset is inconsistent (see :func:`scan_subset`).
        ValueError: ``dev_speakers`` or ``test_speakers`` is negative, or together they leave
            a subset no training speaker.
    """
    output_dir = Path(output_dir)
    if dev_speakers < 0 or test_speakers < 0:
        raise ValueError(f"dev_speakers and test_speakers must be >= 0, got {dev_speakers} and {test_speakers}")
    manifests: dict[str, Path] = {}
    for subset in find_subsets(source):
        utterances = scan_subset(subset, skip_bad=skip_bad, progress=progress)
        name = subset.name
        manifests[name] = output_dir / f"{name}.jsonl"
        # relative=False: the flacs live outside output_dir and must stay reachable.
        write_manifest(manifests[name], utterances, relative=False)
        if dev_speakers + test_speakers == 0:
            continue
        speakers = {u.speaker for u in utterances if u.speaker is not None}
        held_out = pick_held_out(speakers, dev_speakers + test_speakers, seed, what=f"speakers of {name}")
        ranked = hash_rank(held_out, seed)  # the order pick_held_out took them in
        parts = {"train": speakers - held_out, "dev": set(ranked[:dev_speakers]), "test": set(ranked[dev_speakers:])}
        for part, part_speakers in parts.items():
            if not part_speakers:
                continue
            part_utts = [u for u in utterances if u.speaker in part_speakers]
            manifests[f"{name}_{part}"] = output_dir / f"{name}_{part}.jsonl"
            write_manifest(manifests[f"{name}_{part}"], part_utts, relative=False)
            n_spk, shown = len(part_speakers), summarize(sorted(part_speakers))
            log.info("%s_%s: %d speakers (%s), %d utterances", name, part, n_spk, shown, len(part_utts))
    return manifests
