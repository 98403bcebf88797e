"""Separate a mixture, then transcribe each separated stream: ``sonus transcribe``.

    sonus transcribe checkpoint=ASR.ckpt separation_checkpoint=SEP.ckpt input=FILE_OR_DIR output_path=out.jsonl

Without ``separation_checkpoint`` each file is transcribed as it is. Each stream is
resampled from the separator's rate to the recognizer's (soxr) and peak-normalised (a
separated stream's scale is arbitrary: SI-SDR training fixes no gain). Output: JSON lines
with ``file``, ``stream`` (1..C, or 0 for the unseparated input), ``text`` and ``nbest``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sonus.asr.decoding import Decoder, DecodingOptions
from sonus.asr.model import load_checkpoint
from sonus.audio.io import load_audio, resample, save_audio
from sonus.separation.infer import AUDIO_SUFFIXES, load_separator


@dataclass(frozen=True)
class StreamTranscript:
    file: str
    stream: int  # 1..C: separated stream k; 0: the input itself (no separation)
    text: str
    nbest: list[tuple[str, float]]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
    raise FileNotFoundError(f"input not found: {path}")


def transcribe(
    asr_checkpoint: str | os.PathLike,
    input: str | os.PathLike,
    output_path: str | os.PathLike,
    separation_checkpoint: str | os.PathLike | None = None,
    options: DecodingOptions | None = None,
    streams_dir: str | os.PathLike | None = None,
) -> list[StreamTranscript]:
    """Transcribe every audio file of ``input``, each separated stream on its own.

    ``streams_dir`` also keeps the separated streams as wavs (``<file>_s{k}.wav``).
    """
    ck = load_checkpoint(asr_checkpoint)
    asr_sr = ck.model.cfg.sample_rate
    decoder = Decoder(ck.model, ck.tokenizer, options or DecodingOptions())
    sep = load_separator(separation_checkpoint) if separation_checkpoint else None
    out: list[StreamTranscript] = []
    for f in tqdm(_files(Path(input)), desc="transcribing", unit="file"):
        if sep is None:
            streams = [load_audio(f, asr_sr)]
        else:
            est = sep(load_audio(f, sep.sample_rate)).float().cpu()  # (C, T)
            streams = []
            for k in range(est.shape[0]):
                s = est[k] / est[k].abs().max().clamp_min(1e-4) * 0.9
                if streams_dir:
                    save_audio(Path(streams_dir) / f"{f.stem}_s{k + 1}.wav", s, sep.sample_rate)
                streams.append(torch.from_numpy(resample(s.numpy(), sep.sample_rate, asr_sr)))
        lengths = torch.tensor([len(s) for s in streams])
        batch = torch.nn.utils.rnn.pad_sequence(streams, batch_first=True)  # (C, S)
        _, final = decoder.decode(batch, lengths)
        for k, r in enumerate(final):
            out.append(StreamTranscript(str(f), 0 if sep is None else k + 1, r.best.text, [(h.text, h.score) for h in r.nbest]))
    path = Path(output_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"file": t.file, "stream": t.stream, "text": t.text, "nbest": [{"text": a, "score": b} for a, b in t.nbest]}) + "\n"
            for t in out
        )
    return out
