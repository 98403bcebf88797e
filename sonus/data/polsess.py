"""PolSESS: Polish speech separation/enhancement in complex acoustic environments.

Kleć, Szklanny, Wieczorkowska, "A Solution for Developing Corpora for Polish Speech
Enhancement in Complex Acoustic Environments" (2024). Every mixture is stored as the
layers it was summed from, so a dataset can leave layers out and rebuild easier
mixtures (MM-IPC, "mix modification by inverted phase cancellation").

Layout (``ROOT`` from the ``root`` argument, else the ``POLSESS_DATA_ROOT`` variable)::

    ROOT/<split>/corpus_PolSESS_C_in_<split>_final.csv     split: train | val | test
    ROOT/<split>/clean/        dry speech of speaker 1 and of speaker 2
    ROOT/<split>/scene/        acoustic scene (background)
    ROOT/<split>/event/        dry sound event
    ROOT/<split>/sp1_reverb/   reverberation of speaker 1    (indoor rows only)
    ROOT/<split>/sp2_reverb/   reverberation of speaker 2    (indoor rows only)
    ROOT/<split>/ev_reverb/    reverberation of the event    (indoor rows only)
    ROOT/<split>/mix/          the full mixture (not read: mixtures are rebuilt from layers)

CSV schema: one row per mixture, file names relative to the layer's folder. The column
names (:data:`COLUMNS`) are the corpus's own: the corpus generator by Kleć et al.
(``generatePolSESSInit.m``, github.com/s17060/PolSESS) writes them with MATLAB
``writetable``, and the reference training code (``datasets/polsess_dataset.py``,
github.com/traktorex/polsess_separation) reads the same names. A row whose three reverb
columns are empty is an outdoor mixture; a row with all three filled is indoor. Other
columns (``sceneClass``, ``eventClass``, ``SSR``, ...) are kept in :attr:`PolSESSRow.fields`.

Layers add up: the generator stores the *fully wet* reverberation (no direct sound), so
indoor ``mix = sp1 + sp1_reverb + sp2 + sp2_reverb + scene + event + ev_reverb`` and
outdoor ``mix = sp1 + sp2 + scene + event``.

MM-IPC variants (letters name what the mixture keeps: S scene, E event, R reverberation;
C clean, nothing but speech). The mixture of a variant is the sum of::

    speakers                                  always (speaker 1 only for task ES)
    speaker reverb (sp1_reverb, sp2_reverb)   if R   (sp1_reverb only for task ES)
    scene                                     if S
    event                                     if E
    event reverb (ev_reverb)                  if E and R

    indoor rows:  SER, SR, ER, R, C           outdoor rows: SE, S, E, C

C applies to both kinds of row (an indoor row with its reverberation left out), as in the
reference code; an outdoor row has no reverberation to give R variants. Only the layers a
variant sums (and the targets) are read from disk.

Tasks (targets are always *dry* speech, so R variants also ask for dereverberation):

    SB  separate both: the mixture holds both speakers; 2 targets, (speaker 1, speaker 2)
    EB  enhance both:  the mixture holds both speakers; 1 target, speaker 1 + speaker 2
    ES  enhance single: speaker 2 (and its reverberation) is left out of the mixture;
        1 target, speaker 1

Variant choice: in ``train``, drawn uniformly among the row's allowed variants by a
generator seeded with ``(seed, epoch, row)``, so it changes with :meth:`set_epoch` and is
reproducible; in ``val``/``test``, drawn by a generator seeded with the row alone, so
every run (any seed, any epoch) evaluates each mixture in the same condition. ``row`` is
the mixture's position in the CSV, not in the dataset, so a mixture keeps its variant
when ``max_samples`` or a skipped row changes the dataset's length.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from sonus.audio.io import AudioError, load_audio
from sonus.data.recipes._split import CorpusError
from sonus.data.separation import SeparationExample, crop, crop_samples

log = logging.getLogger(__name__)

Task = Literal["SB", "EB", "ES"]
Split = Literal["train", "val", "test"]

ENV_ROOT = "POLSESS_DATA_ROOT"
NATIVE_SAMPLE_RATE = 8000  # the generator's default output rate; it can also render 16000
DEFAULT_CORPUS = "PolSESS_C_in"

# layer -> CSV column holding its file name. Adapt here (or pass ``columns=``) for a re-export.
COLUMNS: dict[str, str] = {
    "mix": "mixFile",
    "speaker1": "speaker1File",
    "speaker2": "speaker2File",
    "scene": "sceneFile",
    "event": "eventFile",
    "speaker1_reverb": "reverbForSpeaker1",
    "speaker2_reverb": "reverbForSpeaker2",
    "event_reverb": "reverbForEvent",
}
# layer -> folder under ROOT/<split> holding its files.
FOLDERS: dict[str, str] = {
    "mix": "mix",
    "speaker1": "clean",
    "speaker2": "clean",
    "scene": "scene",
    "event": "event",
    "speaker1_reverb": "sp1_reverb",
    "speaker2_reverb": "sp2_reverb",
    "event_reverb": "ev_reverb",
}
REVERB_LAYERS = ("speaker1_reverb", "speaker2_reverb", "event_reverb")
# summation order of a mixture's layers (fixed, so results do not depend on set order)
_LAYER_ORDER = ("speaker1", "speaker1_reverb", "speaker2", "speaker2_reverb", "scene", "event", "event_reverb")

INDOOR_VARIANTS = ("SER", "SR", "ER", "R", "C")
OUTDOOR_VARIANTS = ("SE", "S", "E", "C")
VARIANTS = ("SER", "SR", "ER", "R", "SE", "S", "E", "C")


def mix_layers(variant: str, task: Task) -> tuple[str, ...]:
    """The layers summed into the mixture of ``variant`` for ``task``, in summation order."""
    _check_variant(variant)
    keep = {"speaker1"}
    if task != "ES":
        keep.add("speaker2")
    if "R" in variant:
        keep.update({"speaker1_reverb"} if task == "ES" else {"speaker1_reverb", "speaker2_reverb"})
    if "S" in variant:
        keep.add("scene")
    if "E" in variant:
        keep.add("event")
        if "R" in variant:
            keep.add("event_reverb")
    return tuple(name for name in _LAYER_ORDER if name in keep)


def target_layers(task: Task) -> tuple[tuple[str, ...], ...]:
    """For each target of ``task`` (C of them), the layers summed into it."""
    _check_task(task)
    return {"SB": (("speaker1",), ("speaker2",)), "EB": (("speaker1", "speaker2"),), "ES": (("speaker1",),)}[task]


def _check_task(task: str) -> None:
    if task not in get_args(Task):
        raise ValueError(f"PolSESS: unknown task {task!r}; expected one of {list(get_args(Task))}")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(
            f"PolSESS: unknown MM-IPC variant {variant!r}; expected one of {list(VARIANTS)} "
            f"(indoor {list(INDOOR_VARIANTS)}, outdoor {list(OUTDOOR_VARIANTS)})"
        )


@dataclass(frozen=True)
class PolSESSRow:
    """One mixture of the CSV.

    Attributes:
        id: the mix file's name without extension.
        line: its line in the CSV (the header is line 1).
        position: its data-row number in the CSV, from 0 (seeds its variant choice).
        indoor: whether it has reverberation layers.
        files: layer -> absolute path (reverb layers only for indoor rows).
        variants: the variants it may be given, in :data:`VARIANTS` order.
        fields: the whole CSV row, column -> text.
    """

    id: str
    line: int
    position: int
    indoor: bool
    files: Mapping[str, Path]
    variants: tuple[str, ...]
    fields: Mapping[str, str]


class PolSESSDataset(Dataset):
    """PolSESS mixtures with MM-IPC variants; yields :class:`SeparationExample`.

    Args:
        root: corpus root holding ``train/``, ``val/``, ``test/``; ``None`` reads the
            ``POLSESS_DATA_ROOT`` environment variable.
        split: ``train`` (random variants and crops) or ``val``/``test`` (fixed per row).
        task: ``SB``, ``EB`` or ``ES`` (see the module docstring).
        allowed_variants: the variants to draw from (default all); rows that cannot take
            any of them (an outdoor row when only R variants are allowed) are left out.
        variant: one fixed variant, for evaluating a condition; not with ``allowed_variants``.
        sample_rate: rate of the returned signals; files at another rate are resampled.
        segment_seconds: cut examples to this length: a random window in ``train``, the
            start in ``val``/``test``; shorter examples stay short (the batch's lengths say so).
        max_samples: keep only the first rows (after leaving out rows as above).
        seed: seeds training variant and crop choices (with the epoch and the row).
        skip_missing: leave out rows whose files are missing, with one warning listing
            them (also in :attr:`skipped`); by default such a row is an error.
        corpus_name: the CSV is ``corpus_<corpus_name>_<split>_final.csv``.
        columns: layer -> CSV column, overriding entries of :data:`COLUMNS`.

    Raises:
        CorpusError: no root given, a column missing, a malformed row, a row's file missing
            (naming the CSV, line and path), or no row left.
        FileNotFoundError: the root, split folder or CSV does not exist.
        ValueError, TypeError: an unknown split, task or variant name, or another bad argument.

    Examples give mix (T,) and sources (C, T), C = 2 for SB and 1 for EB/ES, float32 at
    ``sample_rate``; ``example.variant`` is the variant used. Call :meth:`set_epoch` at the
    start of each epoch; DataLoader workers copy the dataset when an iterator starts, so
    with ``persistent_workers=True`` they would keep the first epoch's variants.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: Split = "train",
        task: Task = "SB",
        *,
        allowed_variants: Sequence[str] | None = None,
        variant: str | None = None,
        sample_rate: int = NATIVE_SAMPLE_RATE,
        segment_seconds: float | None = None,
        max_samples: int | None = None,
        seed: int = 0,
        skip_missing: bool = False,
        corpus_name: str = DEFAULT_CORPUS,
        columns: Mapping[str, str] | None = None,
    ) -> None:
        if split not in get_args(Split):
            raise ValueError(f"PolSESS: unknown split {split!r}; expected one of {list(get_args(Split))}")
        _check_task(task)
        self.split = split
        self.task: Task = task
        self.variants = _resolve_variants(allowed_variants, variant)
        if sample_rate <= 0:
            raise ValueError(f"PolSESS: sample_rate must be > 0, got {sample_rate}")
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f"PolSESS: segment_seconds must be > 0 or None, got {segment_seconds}")
        if max_samples is not None and max_samples <= 0:
            raise ValueError(f"PolSESS: max_samples must be > 0 or None, got {max_samples}")
        if seed < 0:
            raise ValueError(f"PolSESS: seed must be >= 0, got {seed}")
        self.sample_rate = sample_rate
        self.segment_samples = crop_samples(segment_seconds, sample_rate)
        self.seed = seed
        self.epoch = 0
        self.stage: tuple[str, ...] | None = None  # a curriculum's current variants (set_curriculum)
        unknown = set(columns or {}) - set(COLUMNS)
        if unknown:
            raise ValueError(f"PolSESS: columns= names unknown layers {sorted(unknown)}; layers are {list(COLUMNS)}")
        self.columns = {**COLUMNS, **(columns or {})}

        self.root = _resolve_root(root)
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"PolSESS: split folder not found: {split_dir} (corpus root {self.root})")
        self.csv_path = split_dir / f"corpus_{corpus_name}_{split}_final.csv"
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"PolSESS: CSV not found: {self.csv_path}")

        rows = self._read_csv(split_dir)
        kept = [r for r in rows if r.variants]
        if len(kept) < len(rows):
            log.info("%s: %d of %d rows take none of the variants %s and are left out",
                     self.csv_path, len(rows) - len(kept), len(rows), list(self.variants))  # fmt: skip
        self.rows, self.skipped = self._check_files(kept, max_samples, skip_missing)
        if not self.rows:
            raise CorpusError(f"{self.csv_path}: no usable rows for split {split!r}, variants {list(self.variants)}")

    @property
    def num_sources(self) -> int:
        """C, the number of targets of each example."""
        return len(target_layers(self.task))

    def set_epoch(self, epoch: int) -> None:
        """Draw training variants and crops for ``epoch`` (no effect on ``val``/``test``)."""
        if epoch < 0:
            raise ValueError(f"PolSESS: epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_curriculum(self, variants: Sequence[str] | None) -> None:
        """Draw training variants from ``variants`` only (a curriculum stage), or from all again (None).

        Rows keep their place, so an epoch's length does not change: a row that can take none
        of the stage's variants (an outdoor row in an R-only stage) keeps drawing from its own.

        Raises:
            ValueError: a variant outside the dataset's ``allowed_variants``.
        """
        if variants is not None:
            bad = [v for v in variants if v not in self.variants]
            if bad or not variants:
                raise ValueError(f"PolSESS: curriculum variants {list(variants)} must be a non-empty subset of the allowed {list(self.variants)}")
            variants = tuple(variants)
        self.stage = variants

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> SeparationExample:
        row = self.rows[index]
        training = self.split == "train"
        rng = np.random.default_rng([self.seed, self.epoch, row.position] if training else [row.position])
        choices = row.variants
        if training and self.stage is not None:
            choices = tuple(v for v in row.variants if v in self.stage) or row.variants
        variant = choices[int(rng.integers(len(choices)))]
        in_mix = mix_layers(variant, self.task)
        targets = target_layers(self.task)
        needed = [name for name in _LAYER_ORDER if name in in_mix or any(name in t for t in targets)]
        audio = {name: self._load(row, name) for name in needed}
        lengths = {name: int(x.shape[0]) for name, x in audio.items()}
        if len(set(lengths.values())) > 1:
            raise CorpusError(f"{self.csv_path}:{row.line}: layers of mixture {row.id!r} differ in length (samples): {lengths}")
        mix = torch.stack([audio[name] for name in in_mix]).sum(0)  # (T,)
        sources = torch.stack([torch.stack([audio[n] for n in t]).sum(0) for t in targets])  # (C, T)
        example = SeparationExample(row.id, mix, sources, variant)
        if self.segment_samples is not None:
            example = crop(example, self.segment_samples, rng if training else None, pad=False)
        return example

    def _load(self, row: PolSESSRow, layer: str) -> torch.Tensor:
        try:
            return load_audio(row.files[layer], sample_rate=self.sample_rate)
        except AudioError as e:
            raise AudioError(e.path, f"{e.reason} (layer {layer} of {self.csv_path}:{row.line})") from None

    def _read_csv(self, split_dir: Path) -> list[PolSESSRow]:
        where = self.csv_path
        with open(where, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for layer, column in self.columns.items():
                if column not in header:
                    raise CorpusError(f"{where}: missing column {column!r} (the {layer} layer); columns are {header}")
            rows: list[PolSESSRow] = []
            seen: dict[str, int] = {}
            for position, fields in enumerate(reader):
                line = reader.line_num
                if None in fields:  # more cells than header names
                    raise CorpusError(f"{where}:{line}: {len(header) + len(fields[None])} cells, the header names {len(header)}")
                text = {layer: (fields[column] or "").strip() for layer, column in self.columns.items()}
                for layer in ("mix", "speaker1", "speaker2", "scene", "event"):
                    if not text[layer]:
                        raise CorpusError(f"{where}:{line}: column {self.columns[layer]!r} (the {layer} file) is empty")
                filled = [layer for layer in REVERB_LAYERS if text[layer]]
                if filled and len(filled) < len(REVERB_LAYERS):
                    raise CorpusError(
                        f"{where}:{line}: reverb columns must be all filled (indoor) or all empty (outdoor); "
                        f"filled: {[self.columns[x] for x in filled]}"
                    )
                indoor = bool(filled)
                row_id = Path(text["mix"]).stem
                if row_id in seen:
                    raise CorpusError(f"{where}:{line}: mixture {row_id!r} repeats line {seen[row_id]}")
                seen[row_id] = line
                names = [layer for layer in COLUMNS if layer != "mix" and (indoor or layer not in REVERB_LAYERS)]
                files = {layer: split_dir / FOLDERS[layer] / text[layer] for layer in names}
                possible = INDOOR_VARIANTS if indoor else OUTDOOR_VARIANTS
                variants = tuple(v for v in self.variants if v in possible)
                rows.append(PolSESSRow(row_id, line, position, indoor, files, variants, dict(fields)))
        return rows

    def _check_files(self, rows: list[PolSESSRow], max_samples: int | None, skip_missing: bool) -> tuple[list[PolSESSRow], list[str]]:
        """Keep rows whose files (those its variants and the task can read) exist, up to ``max_samples``."""
        kept: list[PolSESSRow] = []
        skipped: list[str] = []
        targets = {name for t in target_layers(self.task) for name in t}
        for row in rows:
            if max_samples is not None and len(kept) == max_samples:
                break
            needed = targets.union(*(mix_layers(v, self.task) for v in row.variants))
            missing = [f"{self.csv_path}:{row.line}: {layer} file not found: {row.files[layer]}"
                       for layer in _LAYER_ORDER if layer in needed and not row.files[layer].is_file()]  # fmt: skip
            if not missing:
                kept.append(row)
            elif skip_missing:
                skipped.extend(missing)
            else:
                raise CorpusError(missing[0] + (f" (and {len(missing) - 1} more in this row)" if len(missing) > 1 else "")
                                  + "; skip_missing=True leaves such rows out with a warning")  # fmt: skip
        if skipped:
            shown = "\n  ".join(skipped[:20]) + (f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else "")
            warnings.warn(f"PolSESS: left out rows with missing files ({len(skipped)} files):\n  {shown}", stacklevel=3)
        return kept, skipped


def _resolve_variants(allowed: Sequence[str] | None, variant: str | None) -> tuple[str, ...]:
    if variant is not None and allowed is not None:
        raise ValueError(f"PolSESS: give either variant={variant!r} or allowed_variants={allowed!r}, not both")
    if variant is not None:
        _check_variant(variant)
        return (variant,)
    if allowed is None:
        return VARIANTS
    if isinstance(allowed, str):
        raise TypeError(f"PolSESS: allowed_variants must be a list of names, got the string {allowed!r} (variant= takes one)")
    for v in allowed:
        _check_variant(v)
    if not allowed:
        raise ValueError(f"PolSESS: allowed_variants is empty; choose from {list(VARIANTS)}")
    return tuple(v for v in VARIANTS if v in set(allowed))


def _resolve_root(root: str | os.PathLike | None) -> Path:
    if root is not None:
        source = "the root argument"
    elif os.environ.get(ENV_ROOT):
        root, source = os.environ[ENV_ROOT], f"the {ENV_ROOT} environment variable"
    else:
        raise CorpusError(f"PolSESS: no corpus root; pass root= or set the {ENV_ROOT} environment variable")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"PolSESS: corpus root not found: {path} (from {source}; the root argument wins over {ENV_ROOT})")
    return path
