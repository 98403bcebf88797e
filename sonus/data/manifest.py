"""JSON-lines manifests: one utterance a line.

Fields: ``id``, ``audio_filepath`` (relative to the manifest's folder, or absolute),
``duration`` (seconds), ``text``; optional ``offset`` (seconds) and ``speaker``.
Every line is validated on load and an error names the file and the line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable


class ManifestError(ValueError):
    """A manifest line is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    """One manifest record; ``audio_filepath`` is always absolute after loading."""

    id: str
    audio_filepath: str
    duration: float
    text: str
    offset: float = 0.0
    speaker: str | None = None


_REQUIRED = {"id": str, "audio_filepath": str, "duration": (int, float), "text": str}


def _parse_line(line: str, where: str, root: Path) -> Utterance:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in obj:
            raise ManifestError(f"{where}: missing field '{key}'")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise ManifestError(f"{where}: field '{key}' has type {type(obj[key]).__name__}")
    text = obj["text"].strip()
    if not text:
        raise ManifestError(f"{where}: field 'text' is empty (utterance '{obj['id']}')")
    duration = float(obj["duration"])
    if not duration > 0:
        raise ManifestError(f"{where}: field 'duration' must be > 0, got {duration}")
    offset = obj.get("offset", 0.0)
    if not isinstance(offset, (int, float)) or offset < 0:
        raise ManifestError(f"{where}: field 'offset' must be a number >= 0, got {offset!r}")
    speaker = obj.get("speaker")
    audio = Path(obj["audio_filepath"])
    if not audio.is_absolute():
        audio = root / audio
    return Utterance(
        id=obj["id"],
        audio_filepath=str(audio),
        duration=duration,
        text=text,
        offset=float(offset),
        speaker=None if speaker is None else str(speaker),
    )


def read_manifest(path: str | os.PathLike, check_files: bool = False) -> list[Utterance]:
    """Load and validate a manifest.

    Args:
        path: the ``.jsonl`` file.
        check_files: also check that every audio file exists (one ``stat`` each).

    Raises:
        ManifestError: naming ``path:line`` and the field at fault.
        FileNotFoundError: the manifest itself does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    root = path.resolve().parent
    utterances: list[Utterance] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            utt = _parse_line(line, where, root)
            if utt.id in seen:
                raise ManifestError(f"{where}: duplicate id '{utt.id}' (first on line {seen[utt.id]})")
            seen[utt.id] = lineno
            if check_files and not os.path.isfile(utt.audio_filepath):
                raise ManifestError(f"{where}: audio file not found: {utt.audio_filepath}")
            utterances.append(utt)
    if not utterances:
        raise ManifestError(f"{path}: manifest holds no utterances")
    return utterances


def write_manifest(path: str | os.PathLike, utterances: Iterable[Utterance], relative: bool = True) -> None:
    """Write utterances as JSON lines (atomically: temp file, then rename).

    With ``relative``, audio paths under the manifest's folder are written relative to it,
    so a corpus folder can be moved as a whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for utt in utterances:
            rec = asdict(utt)
            audio = Path(rec["audio_filepath"])
            if relative and audio.is_absolute() and audio.resolve().is_relative_to(root):
                rec["audio_filepath"] = str(audio.resolve().relative_to(root))
            if rec["offset"] == 0.0:
                del rec["offset"]
            if rec["speaker"] is None:
                del rec["speaker"]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
