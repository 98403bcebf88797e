"""LibriMix folders: their layout, and a dataset that reads one (the real LibriMix, or one written
by :func:`sonus.data.recipes.librimix.prepare_librimix`).

Layout (LibriMix's own names)::

    ROOT/wav{8k,16k}/{min,max}/SPLIT/{mix_clean,mix_both,mix_single,s1,s2,...,noise}/ID.wav
    ROOT/wav{8k,16k}/{min,max}/metadata/mixture_SPLIT_MIXTYPE.csv
        mixture_ID, mixture_path, source_1_path, ..., [noise_path], length
    ROOT/wav{8k,16k}/{min,max}/metadata/metrics_SPLIT_MIXTYPE.csv
        mixture_ID, source_1_SNR, ..., [noise_SNR]

Paths in the CSVs are absolute (LibriMix) or relative to ROOT (sonus). Shapes: C sources,
T samples.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from torch.utils.data import Dataset

from sonus.audio.io import AudioError, load_audio
from sonus.data.librimix import MixType, Mode
from sonus.data.recipes._split import CorpusError
from sonus.data.separation import SeparationExample


def rate_folder(sample_rate: int) -> str:
    """``wav8k`` / ``wav16k``."""
    if sample_rate % 1000:
        raise ValueError(f"LibriMix folders name rates in kHz; {sample_rate} Hz is not a whole number of kHz")
    return f"wav{sample_rate // 1000}k"


def metadata_dir(root: str | os.PathLike, sample_rate: int, mode: Mode) -> Path:
    """``ROOT/wav8k/min/metadata``: where the mixture and metrics CSVs are."""
    return Path(root) / rate_folder(sample_rate) / mode / "metadata"


def mixture_csv(root: str | os.PathLike, sample_rate: int, mode: Mode, split: str, mixture: MixType) -> Path:
    """``ROOT/wav8k/min/metadata/mixture_SPLIT_MIXTYPE.csv``."""
    return metadata_dir(root, sample_rate, mode) / f"mixture_{split}_{mixture}.csv"


@dataclass(frozen=True)
class LibriMixRow:
    """One CSV row: ``line`` in the file (header = 1), absolute paths, ``length`` in samples."""

    id: str
    line: int
    mix: Path
    sources: tuple[Path, ...]
    length: int


class LibriMixDataset(Dataset):
    """Mixtures of a LibriMix folder (the real one, or one written by ``prepare_librimix``).

    Args:
        root: the ``Libri2Mix``-like folder holding ``wav8k/`` or ``wav16k/``.
        split: the split folder's name (``train``, ``dev``, ``test``; real LibriMix also
            ``train-100``, ``train-360``).
        sample_rate, mode: which ``wav{8k,16k}/{min,max}`` tree to read.
        mixture: ``mix_clean``, ``mix_both`` (targets: all sources) or ``mix_single``
            (target: source 1).
        n_src: sources per mixture (Libri2Mix: 2, Libri3Mix: 3); the CSV must name that many
            (one for ``mix_single``).

    Raises:
        FileNotFoundError: the CSV is missing.
        CorpusError: a column is missing, a row is malformed or repeats an id, or a file it
            names is missing -- naming the CSV and its line.
        AudioError: (when an item is read) a file cannot be decoded or has the wrong length,
            naming the file and the CSV line.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, sample_rate: int = 8000,
                 mode: Mode = "min", mixture: MixType = "mix_clean", n_src: int = 2) -> None:  # fmt: skip
        if mixture not in get_args(MixType):
            raise ValueError(f"LibriMixDataset: mixture must be one of {list(get_args(MixType))}, got {mixture!r}")
        if mode not in get_args(Mode):
            raise ValueError(f"LibriMixDataset: mode must be one of {list(get_args(Mode))}, got {mode!r}")
        self.root = Path(root)
        self.sample_rate, self.mixture = sample_rate, mixture
        self.n_src = 1 if mixture == "mix_single" else n_src
        self.csv_path = mixture_csv(root, sample_rate, mode, split, mixture)
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"LibriMix metadata not found: {self.csv_path}")
        self.rows = self._read_csv()
        if not self.rows:
            raise CorpusError(f"{self.csv_path}: no mixtures")

    def _read_csv(self) -> list[LibriMixRow]:
        where = self.csv_path
        with open(where, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            need = ["mixture_ID", "mixture_path", *(f"source_{i + 1}_path" for i in range(self.n_src)), "length"]
            missing = [c for c in need if c not in header]
            if missing:
                raise CorpusError(f"{where}: missing column(s) {missing} for {self.n_src} source(s); columns are {header}")
            rows: list[LibriMixRow] = []
            seen: dict[str, int] = {}
            for fields in reader:
                line = reader.line_num
                if None in fields or any(fields[c] is None for c in need):
                    raise CorpusError(f"{where}:{line}: expected {len(header)} cells as the header has")
                text = {c: fields[c].strip() for c in need}
                empty = [c for c in need if not text[c]]
                if empty:
                    raise CorpusError(f"{where}:{line}: empty cell(s) {empty}")
                try:
                    length = int(float(text["length"]))
                except ValueError:
                    raise CorpusError(f"{where}:{line}: length {text['length']!r} is not a number") from None
                if length <= 0:
                    raise CorpusError(f"{where}:{line}: length must be > 0, got {length}")
                mix_id = text["mixture_ID"]
                if mix_id in seen:
                    raise CorpusError(f"{where}:{line}: mixture {mix_id!r} repeats line {seen[mix_id]}")
                seen[mix_id] = line
                paths = [self._resolve(text[c]) for c in need[1:-1]]
                for column, path in zip(need[1:-1], paths):
                    if not path.is_file():
                        raise CorpusError(f"{where}:{line}: {column} file not found: {path}")
                rows.append(LibriMixRow(mix_id, line, paths[0], tuple(paths[1:]), length))
        return rows

    def _resolve(self, text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() else self.root / path

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, path: Path, row: LibriMixRow) -> torch.Tensor:
        try:
            wave = load_audio(path, self.sample_rate)
        except AudioError as e:
            raise AudioError(e.path, f"{e.reason} (mixture {row.id!r}, {self.csv_path}:{row.line})") from None
        if wave.shape[0] != row.length:
            raise AudioError(path, f"{wave.shape[0]} samples, {self.csv_path}:{row.line} says length {row.length}")
        return wave

    def __getitem__(self, index: int) -> SeparationExample:
        row = self.rows[index]
        mix = self._load(row.mix, row)  # (T,)
        sources = torch.stack([self._load(p, row) for p in row.sources])  # (C, T)
        return SeparationExample(row.id, mix, sources)
