"""SSI speech emotion recognition corpus (Hugging Face ``stapesai/ssi-speech-emotion-recognition``).

About 12.2k short acted utterances (CREMA-D, RAVDESS, TESS, ...) in parquet files with
columns ``file_path`` (an HF ``Audio`` feature, stored as a struct ``{bytes, path}``),
``text``, ``speaker_id``, ``emotion``, ``dataset`` and more. sonus uses it for speech,
not emotion: the recipe decodes every clip, writes it as 16 kHz mono wav and writes
manifests with the transcript and speaker. The upstream splits are pooled and re-split
by ``seed`` to the requested sizes (by utterance: speakers occur in several splits).

The audio is never decoded by ``datasets`` (which would need extra decoders): raw
bytes are read as Arrow structs and decoded with soundfile.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from sonus.audio.io import resample, save_audio
from sonus.data.manifest import Utterance, write_manifest
from sonus.data.recipes._split import CorpusError, hash_rank, scaled_sizes, summarize

AUDIO_COLUMN = "file_path"
TEXT_COLUMN = "text"
SPEAKER_COLUMN = "speaker_id"
CORPUS_COLUMN = "dataset"
_SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_BATCH = 64


@dataclass(frozen=True)
class _Split:
    """One upstream split: its name, row count and a factory of Arrow batches (no decoding)."""

    name: str
    num_rows: int
    columns: tuple[str, ...]
    batches: Callable[[], Iterator[Any]]  # yields pyarrow RecordBatch or Table


def _hub_error(dataset_name: str, error: Exception) -> CorpusError:
    return CorpusError(
        f"could not load '{dataset_name}' from the Hugging Face hub ({type(error).__name__}: {error}). "
        "The hub is unreachable from here (no network, or offline mode) and the data set is not in the "
        f"local cache. On a machine with internet, run `datasets.load_dataset('{dataset_name}')"
        ".save_to_disk(DIR)` (or copy the repository's parquet files, data/*.parquet, into DIR), "
        "bring DIR here and pass source=DIR."
    )


def _parquet_splits(files: list[Path]) -> list[_Split]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = []
    for file in files:
        try:
            meta = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as e:
            raise CorpusError(f"{file}: not a readable parquet file ({type(e).__name__}: {e})") from e
        columns = tuple(meta.schema_arrow.names)
        wanted = [c for c in (AUDIO_COLUMN, TEXT_COLUMN, SPEAKER_COLUMN, CORPUS_COLUMN) if c in columns]

        def batches(file: Path = file, wanted: list[str] = wanted) -> Iterator[Any]:
            yield from pq.ParquetFile(file).iter_batches(batch_size=_BATCH, columns=wanted)

        # HF names shards "<split>-00000-of-00003.parquet"
        splits.append(_Split(file.name.split("-")[0].split(".")[0], meta.metadata.num_rows, columns, batches))
    return splits


def _hf_splits(data: Any) -> list[_Split]:
    """Splits of a ``datasets.Dataset`` or ``DatasetDict``, read as Arrow tables (audio undecoded)."""
    named = dict(data.items()) if hasattr(data, "keys") else {"train": data}
    splits = []
    for name, ds in named.items():
        wanted = [c for c in (AUDIO_COLUMN, TEXT_COLUMN, SPEAKER_COLUMN, CORPUS_COLUMN) if c in ds.column_names]

        def batches(ds: Any = ds, wanted: list[str] = wanted) -> Iterator[Any]:
            yield from ds.select_columns(wanted).with_format("arrow").iter(batch_size=_BATCH)

        splits.append(_Split(name, len(ds), tuple(ds.column_names), batches))
    return splits


def _open_source(source: str | os.PathLike | None, dataset_name: str) -> list[_Split]:
    if source is None:
        try:
            import datasets
        except ImportError as e:
            raise ImportError("prepare_ssi without source= needs `pip install datasets` (sonus[hub])") from e
        try:
            return _hf_splits(datasets.load_dataset(dataset_name))
        except Exception as e:  # ConnectionError, FileNotFoundError, httpx errors, ... by version
            raise _hub_error(dataset_name, e) from e
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"SSI source not found: {source}")
    if source.is_dir() and any((source / m).is_file() for m in _SAVE_TO_DISK_MARKERS):
        try:
            import datasets
        except ImportError as e:
            raise ImportError(
                f"{source} is a datasets.save_to_disk folder; reading it needs `pip install datasets`"
            ) from e
        return _hf_splits(datasets.load_from_disk(str(source)))
    files = [source] if source.is_file() else sorted(source.rglob("*.parquet"))
    if not files:
        raise CorpusError(
            f"{source}: neither parquet files (searched recursively) nor a datasets.save_to_disk folder "
            f"(one of {', '.join(_SAVE_TO_DISK_MARKERS)})"
        )
    try:
        return _parquet_splits(files)
    except ImportError as e:
        raise ImportError("reading parquet files needs `pip install pyarrow`") from e


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "utt"


def _as_struct(value: Any) -> dict | None:
    """The audio cell as ``{bytes, path}``: HF stores a struct; plain binary is accepted too."""
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    return value if isinstance(value, dict) else None


def _decode(audio: dict | None, sample_rate: int) -> tuple[np.ndarray, int]:
    """Decode one ``{bytes, path}`` struct to mono float32 at ``sample_rate``; returns (wave, channels)."""
    if audio is None:
        raise ValueError("audio is null or not a {bytes, path} struct")
    data = audio.get("bytes")
    if data is None:  # datasets may store only a local path
        path = audio.get("path")
        if not path or not os.path.isfile(path):
            raise ValueError(f"no audio bytes and no readable file at path {path!r}")
        data = Path(path).read_bytes()
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (T, C)
    except sf.LibsndfileError as e:  # its str() names the BytesIO object, not the problem
        raise ValueError(f"{len(data)} bytes that libsndfile cannot decode: {e.error_string}") from e
    if wave.shape[0] == 0:
        raise ValueError("no audio samples")
    if not np.isfinite(wave).all():
        raise ValueError("audio holds NaN or inf")
    mono = resample(wave.mean(axis=1), sr, sample_rate)  # (T',)
    return mono, wave.shape[1]


def _id_for(row: dict, split: str, index: int, taken: set[str]) -> str:
    audio = _as_struct(row.get(AUDIO_COLUMN)) or {}
    stem = Path(audio["path"]).stem if audio.get("path") else f"{split}-{index:06d}"
    corpus = row.get(CORPUS_COLUMN)
    base = _safe_id(f"{corpus}_{stem}" if corpus else stem)
    utt_id, k = base, 1
    while utt_id in taken:  # the same file name in two upstream splits or corpora
        k += 1
        utt_id = f"{base}-{k}"
    taken.add(utt_id)
    return utt_id


def prepare_ssi(
    output_dir: str | os.PathLike,
    train_size: int = 8000,
    dev_size: int = 1500,
    test_size: int = 1500,
    seed: int = 42,
    source: str | os.PathLike | None = None,
    dataset_name: str = "stapesai/ssi-speech-emotion-recognition",
    sample_rate: int = 16000,
    progress: bool = True,
) -> dict[str, Path]:
    """Decode the SSI corpus to ``output_dir/wavs/<id>.wav`` and write split manifests.

    Args:
        output_dir: receives ``wavs/`` and ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``
            (audio paths relative to it, so the folder can be moved as a whole).
        train_size, dev_size, test_size: utterances per split after pooling the upstream
            splits; scaled down in proportion (with a warning) if fewer usable rows exist.
            A split of size 0 is not written.
        seed: fixes the re-split (a hash rank of utterance ids, independent of row order).
        source: a folder of parquet files (searched recursively, e.g. ``data/train-*.parquet``),
            a single parquet file, or a ``datasets.save_to_disk`` folder. ``None``: load
            ``dataset_name`` from the hub (or its local cache) with ``datasets``.
        dataset_name: the hub repository used when ``source`` is None.
        sample_rate: rate of the written wavs.
        progress: show a progress bar.

    Returns:
        split name -> manifest path.

    Rows with empty text or undecodable audio are dropped with one warning each kind,
    listing their ids; stereo clips are downmixed (one warning with the count).

    Raises:
        CorpusError: the hub is unreachable with nothing cached (the message says how to
            pass ``source``), the source lacks the audio or text column, or no row is usable.
        FileNotFoundError: ``source`` does not exist.
        ValueError: sizes negative or all zero, or ``sample_rate`` <= 0.
    """
    names = ("train", "dev", "test")
    requested = [train_size, dev_size, test_size]
    scaled_sizes(requested, sum(requested), names)  # validates before any decoding
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    splits = _open_source(source, dataset_name)
    for split in splits:
        missing = [c for c in (AUDIO_COLUMN, TEXT_COLUMN) if c not in split.columns]
        if missing:
            raise CorpusError(
                f"{source or dataset_name} split '{split.name}': missing column(s) {missing}; has {list(split.columns)}"
            )

    output_dir = Path(output_dir)
    wav_dir = output_dir / "wavs"
    utterances: dict[str, Utterance] = {}
    empty_text: list[str] = []
    bad_audio: list[str] = []
    taken: set[str] = set()
    n_multichannel = 0
    bar = tqdm(total=sum(s.num_rows for s in splits), desc="ssi: decode", unit="utt", disable=not progress)
    for split in splits:
        index = 0
        for batch in split.batches():
            for row in batch.to_pylist():
                utt_id = _id_for(row, split.name, index, taken)
                index += 1
                bar.update(1)
                text = (row.get(TEXT_COLUMN) or "").strip()
                if not text:
                    empty_text.append(utt_id)
                    continue
                try:
                    wave, channels = _decode(_as_struct(row.get(AUDIO_COLUMN)), sample_rate)
                except Exception as e:  # one bad row must not stop the corpus
                    bad_audio.append(f"{utt_id} ({type(e).__name__}: {e})")
                    continue
                n_multichannel += channels > 1
                path = wav_dir / f"{utt_id}.wav"
                save_audio(path, wave, sample_rate)
                speaker = row.get(SPEAKER_COLUMN)
                utterances[utt_id] = Utterance(
                    id=utt_id,
                    audio_filepath=str(path.resolve()),
                    duration=len(wave) / sample_rate,
                    text=text,
                    speaker=None if speaker is None else str(speaker),
                )
    bar.close()
    if empty_text:
        warnings.warn(f"ssi: dropped {len(empty_text)} row(s) with empty text: {summarize(empty_text)}", stacklevel=2)
    if bad_audio:
        warnings.warn(
            f"ssi: dropped {len(bad_audio)} row(s) with undecodable audio: {summarize(bad_audio, 5)}", stacklevel=2
        )
    if n_multichannel:
        warnings.warn(f"ssi: downmixed {n_multichannel} multi-channel clip(s) to mono", stacklevel=2)
    if not utterances:
        raise CorpusError(f"{source or dataset_name}: no usable rows (all had empty text or bad audio)")

    sizes = scaled_sizes(requested, len(utterances), names)
    ranked = hash_rank(utterances.keys(), seed)
    manifests: dict[str, Path] = {}
    start = 0
    for name, size in zip(names, sizes):
        chosen = sorted(ranked[start : start + size])
        start += size
        if not chosen:
            continue
        manifests[name] = output_dir / f"{name}.jsonl"
        write_manifest(manifests[name], (utterances[i] for i in chosen), relative=True)
    for unused in ranked[start:]:  # decoded but beyond the requested sizes: keep wavs/ == manifests
        Path(utterances[unused].audio_filepath).unlink(missing_ok=True)
    return manifests
