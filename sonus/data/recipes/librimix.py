"""LibriMix-style mixtures written to disk from any LibriSpeech-layout folder.

The mixing is :func:`sonus.data.librimix.mix_sources` (LibriMix's loudness and clipping
rules), the draws those of :class:`~sonus.data.dynamic_mix.DynamicMixDataset`; this recipe
fixes them on disk in LibriMix's layout (see :mod:`sonus.data.librimix`)::

    ROOT/wav8k/min/{train,dev,test}/{s1,s2,...,mix_clean[,noise,mix_both,mix_single]}/ID.wav
    ROOT/wav8k/min/metadata/mixture_SPLIT_MIXTYPE.csv   mixture_ID, mixture_path, source_i_path, [noise_path], length
    ROOT/wav8k/min/metadata/metrics_SPLIT_MIXTYPE.csv   mixture_ID, source_i_SNR, [noise_SNR]
    ROOT/wav8k/min/metadata/info_SPLIT.csv              how each mixture was made (sonus's own)

Splits hold disjoint speakers (:func:`~sonus.data.librimix.speaker_split`) and, with at
least three noise files, disjoint noise files. ``s1``, ``s2``, ... are the targets (with
reverb: each source's direct sound, or its reverberant image with ``reverberant_targets``);
the mixtures sum the (reverberant) sources and the noise. Paths in the CSVs are relative to
ROOT, so the folder can be moved. The same arguments write byte-identical files.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sonus.audio.augment import noise_files
from sonus.audio.io import save_audio
from sonus.audio.room import RoomConfig
from sonus.data.dynamic_mix import Draw, DynamicMixDataset
from sonus.data.librimix import (
    MixConfig,
    Mixture,
    MixType,
    Mode,
    librispeech_utterances,
    speaker_split,
)
from sonus.data.librimix_folder import metadata_dir, rate_folder
from sonus.data.recipes._split import hash_rank, summarize

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
EPS = 1e-10


def split_noise(files: Sequence[Path], root: Path, seed: int) -> dict[str, list[Path]]:
    """Noise files per split: with 3 or more, dev and test each get ~15 % (at least one) and
    train the rest, ranked by a hash of ``(seed, path under root)``; with fewer, all splits
    share them (with a warning)."""
    if len(files) < 3:
        log.warning("only %d noise file(s): train, dev and test share them", len(files))
        return {s: list(files) for s in SPLITS}
    by_key = {_relative(p, root): p for p in files}
    ranked = [by_key[k] for k in hash_rank(by_key, seed)]
    n = max(1, round(0.15 * len(files)))
    return {"test": sorted(ranked[:n]), "dev": sorted(ranked[n : 2 * n]), "train": sorted(ranked[2 * n :])}


def _relative(path: str | os.PathLike, base: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _snr(part: np.ndarray, mix: np.ndarray) -> float:
    """LibriMix's metric: a part against the rest of the mixture, in dB."""
    p = part.astype(np.float64)
    return float(10 * np.log10(np.mean(p**2) / (np.mean((mix.astype(np.float64) - p) ** 2) + EPS) + EPS))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def _info_row(draw: Draw, m: Mixture, source: Path, noise_dir: Path | None) -> list[str]:
    row = [draw.id]
    for u, gain, lufs in zip(draw.utterances, m.gains, m.lufs):
        row += [u.speaker or "", _relative(u.audio_filepath or "", source), f"{gain:.6f}", f"{lufs:.3f}"]
    if draw.noise is not None and noise_dir is not None:
        row += [_relative(draw.noise, noise_dir), str(m.noise_start), f"{m.noise_gain:.6f}", f"{m.noise_lufs:.3f}"]
    row.append(f"{m.scale:.6f}")
    if m.room is not None:
        row += [f"{m.room.rt60:.3f}", *(f"{x:.3f}" for x in m.room.size)]
    return row


def prepare_librimix(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    sample_rate: int = 8000,
    mode: Mode = "min",
    n_src: int = 2,
    train_mixtures: int = 1000,
    dev_mixtures: int = 100,
    test_mixtures: int = 100,
    noise_dir: str | os.PathLike | None = None,
    reverb: bool = False,
    reverberant_targets: bool = False,
    dev_speakers: int | Sequence[str] = 2,
    test_speakers: int | Sequence[str] = 2,
    segment: float | None = None,
    seed: int = 42,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write train/dev/test mixtures of a LibriSpeech folder in LibriMix's layout.

    Args:
        source: a LibriSpeech subset folder, or a folder of subsets (all are pooled).
        output_dir: ROOT (like LibriMix's ``Libri2Mix/``); ``wav{8k,16k}/{min,max}`` trees of
            several runs can live side by side.
        sample_rate, mode, n_src, segment: see :class:`~sonus.data.librimix.MixConfig`.
        train_mixtures, dev_mixtures, test_mixtures: mixtures per split (0 skips a split).
            No two mixtures of a split use the same set of utterances.
        noise_dir: a folder of noise files; adds ``noise``, ``mix_both`` and ``mix_single``.
        reverb: simulate a room per mixture (default :class:`~sonus.audio.room.RoomConfig`).
        reverberant_targets: with reverb, targets keep the reverberation.
        dev_speakers, test_speakers: speakers held out (a number, or their ids).
        seed: fixes speakers, noise files and every mixture.
        overwrite: replace a split already written with these rate and mode; otherwise that
            is an error.
        progress: show a progress bar.

    Returns:
        ROOT.

    Raises:
        FileExistsError: a split's metadata exists and ``overwrite`` is false.
        ValueError: a split has fewer than ``n_src`` speakers, or too few distinct
            utterance combinations for the mixtures asked for.
        FileNotFoundError, CorpusError: ``source`` is not a readable LibriSpeech folder.
    """
    source = Path(source).resolve()
    root = Path(output_dir)
    counts = {"train": train_mixtures, "dev": dev_mixtures, "test": test_mixtures}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"prepare_librimix: mixture counts must be >= 0, got {counts}")
    cfg = MixConfig(n_src=n_src, sample_rate=sample_rate, mode=mode, reverb=RoomConfig() if reverb else None,
                    reverberant_targets=reverberant_targets, segment=segment)  # fmt: skip
    utterances = librispeech_utterances(source, progress=progress)
    speakers = speaker_split(utterances, dev_speakers, test_speakers, seed)
    noise_root = None if noise_dir is None else Path(noise_dir).resolve()
    noises = split_noise(noise_files(noise_root), noise_root, seed) if noise_root else {s: [] for s in SPLITS}
    kinds: list[MixType] = ["mix_clean", "mix_both", "mix_single"] if noise_root else ["mix_clean"]
    meta = metadata_dir(root, sample_rate, mode)
    for k, split in enumerate(SPLITS):
        if counts[split] == 0:
            continue
        log.info("librimix %s: %d speakers (%s), %d noise files", split, len(speakers[split]),
                 summarize(list(speakers[split])), len(noises[split]))  # fmt: skip
        if len(speakers[split]) < n_src:
            raise ValueError(f"prepare_librimix: split {split!r} has {len(speakers[split])} speakers "
                             f"{list(speakers[split])}, a mixture needs {n_src}")  # fmt: skip
        out = root / rate_folder(sample_rate) / mode / split
        done = sorted(meta.glob(f"*_{split}_*.csv")) + sorted(meta.glob(f"info_{split}.csv"))
        if done or out.exists():
            if not overwrite:
                raise FileExistsError(f"{out} (or its metadata in {meta}) exists; pass overwrite=True to replace it")
            shutil.rmtree(out, ignore_errors=True)
            for p in done:
                p.unlink()
        pool = [u for u in utterances if u.speaker in set(speakers[split])]
        data = DynamicMixDataset(pool, cfg, counts[split], seed=seed, noise_files=noises[split] or None)
        data.set_epoch(k)  # each split its own stream of draws
        _write_split(data, counts[split], split, root, out, meta, kinds, source, noise_root, progress)
    return root


def _write_split(data: DynamicMixDataset, count: int, split: str, root: Path, out: Path, meta: Path,
                 kinds: list[MixType], source: Path, noise_root: Path | None, progress: bool) -> None:  # fmt: skip
    """Write ``count`` mixtures of ``data`` (skipping repeated utterance sets) and their CSVs."""
    n_src, sr = data.cfg.n_src, data.cfg.sample_rate
    folders = [f"s{i + 1}" for i in range(n_src)] + (["noise"] if noise_root else [])
    mixtures: dict[str, list[list[str]]] = {kind: [] for kind in kinds}
    metrics: dict[str, list[list[str]]] = {kind: [] for kind in kinds}
    info: list[list[str]] = []
    used: set[frozenset[str]] = set()
    index = 0
    with tqdm(total=count, desc=f"librimix {split}", unit="mix", disable=not progress) as bar:
        while len(info) < count:
            if index >= 20 * count + 100:
                raise ValueError(f"prepare_librimix: only {len(info)} distinct utterance combinations found for "
                                 f"split {split!r} in {index} draws; ask for fewer {split} mixtures")  # fmt: skip
            key = frozenset(u.id for u in data.draw(index).utterances)
            if key in used:
                index += 1
                continue
            used.add(key)
            draw, m = data.mixture(index)
            index += 1
            name = f"{draw.id}.wav"
            files = {f: out / f / name for f in folders}
            for i in range(n_src):
                save_audio(files[f"s{i + 1}"], m.sources[i], sr)
            if m.noise is not None:
                save_audio(files["noise"], m.noise, sr)
            for kind in kinds:
                mix = m.mix(kind)
                save_audio(out / kind / name, mix, sr)
                targets = [f"s{i + 1}" for i in range(1 if kind == "mix_single" else n_src)]
                with_noise = [] if kind == "mix_clean" else ["noise"]
                paths = [out / kind / name] + [files[f] for f in targets + with_noise]
                mixtures[kind].append([draw.id, *(str(p.relative_to(root)) for p in paths), str(mix.shape[0])])
                metrics[kind].append([draw.id, *(f"{_snr(p, mix):.4f}" for p in m.parts(kind))])
            info.append(_info_row(draw, m, source, noise_root))
            bar.update(1)
    meta.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        n = 1 if kind == "mix_single" else n_src
        noise_cols = [] if kind == "mix_clean" else ["noise"]
        _write_csv(meta / f"mixture_{split}_{kind}.csv",
                   ["mixture_ID", "mixture_path", *(f"source_{i + 1}_path" for i in range(n)),
                    *(f"{c}_path" for c in noise_cols), "length"], mixtures[kind])  # fmt: skip
        _write_csv(meta / f"metrics_{split}_{kind}.csv",
                   ["mixture_ID", *(f"source_{i + 1}_SNR" for i in range(n)), *(f"{c}_SNR" for c in noise_cols)],
                   metrics[kind])  # fmt: skip
    header = ["mixture_ID"]
    for i in range(n_src):
        header += [f"speaker_{i + 1}_ID", f"source_{i + 1}_origin", f"source_{i + 1}_gain", f"source_{i + 1}_LUFS"]
    if noise_root:
        header += ["noise_origin", "noise_start", "noise_gain", "noise_LUFS"]
    header.append("scale")
    if data.cfg.reverb is not None:
        header += ["rt60", "room_x", "room_y", "room_z"]
    _write_csv(meta / f"info_{split}.csv", header, info)
