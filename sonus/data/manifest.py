"""JSON-lines manifests: one utterance a line.

Fields: ``id``, ``audio_filepath`` (relative to the manifest's folder, or absolute),
``duration`` (seconds), ``text``; optional ``offset`` (seconds) and ``speaker``.
Instead of audio a line may give ``feature_filepath``: a ``.npy`` array (T, D) of any
feature sequence (the model then has no audio front end, ``model.feat_in = D``); its
``duration`` is the sequence's length in seconds (T x frame period), which batching uses.
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
    """One manifest record; its file path (audio or features, exactly one) is absolute after loading."""

    id: str
    audio_filepath: str | None
    duration: float
    text: str
    offset: float = 0.0
    speaker: str | None = None
    feature_filepath: str | None = None

    @property
    def path(self) -> str:
        """The file this utterance is read from."""
        return self.feature_filepath or self.audio_filepath or ""


_REQUIRED = {"id": str, "duration": (int, float), "text": str}
_PATHS = ("audio_filepath", "feature_filepath")


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
    given = [k for k in _PATHS if k in obj]
    if not given:
        raise ManifestError(f"{where}: missing field 'audio_filepath' (or 'feature_filepath' for a feature sequence)")
    if len(given) > 1:
        raise ManifestError(f"{where}: give either 'audio_filepath' or 'feature_filepath', not both")
    key = given[0]
    if not isinstance(obj[key], str) or not obj[key]:
        raise ManifestError(f"{where}: field '{key}' must be a non-empty string, got {obj[key]!r}")
    file = Path(obj[key])
    if not file.is_absolute():
        file = root / file
    return Utterance(
        id=obj["id"],
        audio_filepath=str(file) if key == "audio_filepath" else None,
        duration=duration,
        text=text,
        offset=float(offset),
        speaker=None if speaker is None else str(speaker),
        feature_filepath=str(file) if key == "feature_filepath" else None,
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
            if check_files and not os.path.isfile(utt.path):
                kind = "feature" if utt.feature_filepath else "audio"
                raise ManifestError(f"{where}: {kind} file not found: {utt.path}")
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
            key = "feature_filepath" if utt.feature_filepath else "audio_filepath"
            del rec[_PATHS[1 - _PATHS.index(key)]]
            file = Path(rec[key])
            if relative and file.is_absolute() and file.resolve().is_relative_to(root):
                rec[key] = str(file.resolve().relative_to(root))
            if rec["offset"] == 0.0:
                del rec["offset"]
            if rec["speaker"] is None:
                del rec["speaker"]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
