"""The speech tokenizer against Codec2 and Opus on held-out LibriSpeech-mini speakers (16 kHz).

    python benchmarks/codec.py --checkpoint exp/tokenizer_16k_cpu/best.ckpt
    python benchmarks/codec.py --train-minutes 60      # train experiment=tokenizer_16k_cpu first

Test data: the 3 speakers ``speaker_split(source, 0, 3, seed=42)`` holds out (the separation
benchmark's test speakers), ``--per-speaker`` utterances each, read in place. Training must
exclude them (``--train-minutes`` passes ``data.exclude_speakers``; a checkpoint trained on
them would be scored on its training speakers).

Systems: the tokenizer with its first n_q quantizers for each ``--n-q`` (one model, every
bitrate, by quantizer dropout); Codec2 (``c2enc``/``c2dec`` of Debian ``codec2``, 8 kHz) at
3200 and 1600 bit/s; Opus (``opusenc``/``opusdec`` of Debian ``opus-tools``) at 6 kbit/s,
hard CBR, 16 kHz input. At 6 kbit/s libopus codes narrow band whatever is asked: requesting
wide band (``--set-ctl-int 4008=1103``, OPUS_SET_BANDWIDTH) leaves the output bit-identical
(checked with libopus 1.3.1), and ffmpeg's libopus is the same library.

Metrics, per utterance then averaged: PESQ narrow band (everything and the reference
resampled to 8 kHz), PESQ wide band (16 kHz; Codec2's 8 kHz output upsampled), STOI and log-mel
distance at 16 kHz, after aligning each output to the reference (cross-correlation within
+-50 ms: the external codecs add delay). Bitrate: the tokenizer's frame rate x n_q x log2 K;
Codec2's from the size of what ``c2enc`` wrote, Opus's from its audio packets (Ogg headers
not counted, as ``opusinfo`` reports it).
RTF: encode + decode CPU time / audio time on one thread (the external tools are
single-threaded processes; their time is that of the child processes, start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "librispeech-mini"


def held_out(source: Path, per_speaker: int) -> tuple[list[str], list[Path]]:
    from sonus.data.librimix import librispeech_utterances, speaker_split

    speakers = speaker_split(source, 0, 3, seed=42).test
    utts = sorted(librispeech_utterances(source), key=lambda u: u.id)
    files = [Path(u.path) for s in speakers for u in [u for u in utts if u.speaker == s][:per_speaker]]
    return list(speakers), files


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")


def codec2(wave16: np.ndarray, mode: int, tmp: Path) -> tuple[np.ndarray, int, float]:
    """(8 kHz reconstruction, bits written, CPU seconds) of Codec2 ``mode`` on 16 kHz audio."""
    from sonus.audio.io import resample

    pcm = np.clip(resample(wave16, 16000, 8000) * 32768, -32768, 32767).astype("<i2")
    raw, bits, out = tmp / "in.raw", tmp / "c2.bit", tmp / "out.raw"
    pcm.tofile(raw)
    t0 = children_cpu()
    run(["c2enc", str(mode), str(raw), str(bits)])
    run(["c2dec", str(mode), str(bits), str(out)])
    cpu = children_cpu() - t0
    return np.fromfile(out, "<i2").astype(np.float32) / 32768, bits.stat().st_size * 8, cpu


def ogg_payload_bits(path: Path) -> int:
    """Bits of an Ogg Opus file's audio packets: the pages after the OpusHead and OpusTags headers,
    less the Ogg page headers (what ``opusinfo`` calls the bitrate without overhead)."""
    data, pos, bits, audio = path.read_bytes(), 0, 0, False
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            raise ValueError(f"{path}: not an Ogg stream at byte {pos}")
        nseg = data[pos + 26]
        size = sum(data[pos + 27 : pos + 27 + nseg])
        body = pos + 27 + nseg
        if audio:
            bits += 8 * size
        elif data[body : body + 8] == b"OpusTags":
            audio = True
        pos = body + size
    return bits


def opus(wave16: np.ndarray, kbps: float, tmp: Path) -> tuple[np.ndarray, int, float]:
    """(16 kHz reconstruction, audio bits, CPU seconds) of Opus at ``kbps``, hard CBR, speech tuning."""
    src, enc, out = tmp / "in.wav", tmp / "o.opus", tmp / "out.wav"
    sf.write(src, wave16, 16000, subtype="PCM_16")
    t0 = children_cpu()
    run(["opusenc", "--quiet", "--bitrate", str(kbps), "--hard-cbr", "--speech", str(src), str(enc)])
    run(["opusdec", "--quiet", "--rate", "16000", str(enc), str(out)])
    cpu = children_cpu() - t0
    rec, sr = sf.read(out, dtype="float32")
    assert sr == 16000, sr
    return rec, ogg_payload_bits(enc), cpu


def align(ref: np.ndarray, est: np.ndarray, sr: int, max_ms: float = 50.0) -> tuple[np.ndarray, int]:
    """(``est`` shifted by its delay, the delay in samples), cut/padded to ``ref``'s length.

    The delay (within +-max_ms) maximises the correlation of the two amplitude envelopes
    (5 ms RMS), not of the waveforms: vocoders (Codec2, the tokenizer) do not keep the
    waveform's phase, so waveform correlation peaks at random lags for them."""
    from scipy.signal import correlate

    def envelope(x: np.ndarray) -> np.ndarray:
        w = max(1, sr // 200)
        e = np.sqrt(np.convolve(x.astype(np.float64) ** 2, np.ones(w) / w, mode="same"))
        return e - e.mean()

    m = int(sr * max_ms / 1000)
    n = min(len(ref), len(est))
    c = correlate(envelope(est[:n]), envelope(ref[:n]), mode="full", method="fft")[n - 1 - m : n + m]
    lag = int(np.argmax(c)) - m  # est[t + lag] ~ ref[t]
    est = est[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, est.dtype), est])
    return np.pad(est[: len(ref)], (0, max(0, len(ref) - len(est)))), lag


def score(ref16: np.ndarray, est: np.ndarray, sr: int) -> dict[str, float]:
    from sonus.audio.io import resample
    from sonus.codec.infer import reconstruction_metrics
    from sonus.metrics.signal import pesq_score

    est16, lag = align(ref16, resample(est, sr, 16000) if sr != 16000 else est, 16000)
    m = reconstruction_metrics(ref16, est16, 16000) | {"lag_ms": lag / 16}
    m["pesq_nb"] = pesq_score(resample(est16, 16000, 8000), resample(ref16, 16000, 8000), 8000)
    return m


def train(minutes: float, speakers: list[str], source: Path, out: Path) -> Path:
    cmd = [sys.executable, "-m", "sonus.cli", "train", "experiment=tokenizer_16k_cpu", f"data.source={source}",
           f"data.exclude_speakers=[{','.join(speakers)}]", f"training.time_budget_minutes={minutes}",
           f"training.output_dir={out}", "wandb.enabled=false", "training.progress_bar=tqdm"]  # fmt: skip
    print("training:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out / "best.ckpt"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--train-minutes", type=float, help="train experiment=tokenizer_16k_cpu for this budget first")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--per-speaker", type=int, default=10)
    p.add_argument("--n-q", default="2,4,6,8,12", help="quantizer counts of the tokenizer to score")
    p.add_argument("--out", type=Path, default=ROOT / "exp" / "bench_codec")
    a = p.parse_args()
    for tool in ("c2enc", "c2dec", "opusenc", "opusdec"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install codec2 opus-tools")
    import torch
    from tqdm.auto import tqdm

    from sonus.audio.io import load_audio
    from sonus.codec.infer import Tokenizer

    torch.set_num_threads(1)
    speakers, files = held_out(a.source, a.per_speaker)
    if a.train_minutes:
        a.checkpoint = train(a.train_minutes, speakers, a.source, a.out / "tokenizer")
    if a.checkpoint is None:
        sys.exit("--checkpoint or --train-minutes is required")
    ck = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    run_cfg = a.checkpoint.parent / "config.yaml"  # what `sonus train` wrote beside its checkpoints
    excluded = set()
    if run_cfg.is_file():
        from omegaconf import OmegaConf

        excluded = {str(s) for s in OmegaConf.load(run_cfg).data.get("exclude_speakers") or []}
    if excluded and not set(speakers) <= excluded:
        sys.exit(f"{a.checkpoint}: trained on test speakers {sorted(set(speakers) - excluded)} (its data.exclude_speakers: {sorted(excluded)})")
    tok = Tokenizer.from_checkpoint(a.checkpoint)
    if tok.sample_rate != 16000:
        sys.exit(f"{a.checkpoint}: a {tok.sample_rate} Hz tokenizer; this benchmark is at 16 kHz")
    n_qs = [int(q) for q in a.n_q.split(",") if int(q) <= tok.cfg.rvq.n_q]
    systems: dict[str, list[dict]] = {}
    seconds = 0.0
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for f in tqdm(files, desc="codec benchmark", unit="file"):
            ref = load_audio(f, 16000).numpy()
            seconds += len(ref) / 16000
            for q in n_qs:
                t0 = time.process_time()
                codes = tok.tokenize(ref, 16000, q)
                rec = tok.detokenize(codes, length=len(ref)).numpy()
                cpu = time.process_time() - t0
                systems.setdefault(f"sonus tokenizer n_q={q}", []).append({**score(ref, rec, 16000), "bits": tok.bitrate(q) * len(ref) / 16000, "cpu": cpu})
            for mode in (3200, 1600):
                rec, bits, cpu = codec2(ref, mode, tmp)
                systems.setdefault(f"Codec2 {mode}", []).append({**score(ref, rec, 8000), "bits": bits, "cpu": cpu})
            rec, bits, cpu = opus(ref, 6, tmp)
            systems.setdefault("Opus 6k", []).append({**score(ref, rec, 16000), "bits": bits, "cpu": cpu})
    rows = {}
    for name, rs in systems.items():
        mean = {k: float(np.nanmean([r[k] for r in rs])) for k in ("pesq_nb", "pesq_wb", "stoi", "mel_distance", "si_sdr", "lag_ms")}
        rows[name] = mean | {"kbps": sum(r["bits"] for r in rs) / seconds / 1000, "rtf": sum(r["cpu"] for r in rs) / seconds}
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(a.checkpoint), "test_speakers": speakers, "files": len(files), "seconds": seconds,
            "tokenizer": tok.cfg.to_dict(), "trained_global_step": ck.get("global_step"), "excluded_in_training": sorted(excluded)}  # fmt: skip
    per_file = {name: [{k: r[k] for k in ("pesq_nb", "stoi")} for r in rs] for name, rs in systems.items()}
    (a.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "per_file": per_file, "files": [str(f) for f in files]}, indent=2))
    print_table(rows, meta)
    c2 = per_file.get("Codec2 3200")
    for name, rs in per_file.items():  # how often, not only on average: paired wins per utterance
        if name.startswith("sonus") and c2 and rows[name]["kbps"] <= 3.2 + 1e-9:
            wins = sum(r["pesq_nb"] > c["pesq_nb"] for r, c in zip(rs, c2, strict=True))
            print(f"{name}: PESQ-nb above Codec2 3200's on {wins} of {len(rs)} utterances")
    return 0


def print_table(rows: dict[str, dict], meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"codecs on {meta['files']} utterances ({meta['seconds'] / 60:.1f} min) of held-out speakers {', '.join(meta['test_speakers'])}, 16 kHz")
    for c in ("system", "kbit/s", "PESQ-nb", "PESQ-wb", "STOI", "mel dist", "SI-SDR", "delay ms", "RTF (1 thread)"):
        t.add_column(c, justify="left" if c == "system" else "right")
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["kbps"]):
        t.add_row(name, f"{r['kbps']:.2f}", f"{r['pesq_nb']:.2f}", f"{r['pesq_wb']:.2f}", f"{r['stoi']:.3f}", f"{r['mel_distance']:.3f}", f"{r['si_sdr']:.1f}", f"{r['lag_ms']:.1f}", f"{r['rtf']:.4f}")
    Console(width=140).print(t)
    ours = {k: v for k, v in rows.items() if k.startswith("sonus")}
    opus6 = rows["Opus 6k"]["stoi"]
    c2 = rows.get("Codec2 3200")
    le6 = [v for v in ours.values() if v["kbps"] <= 6.0 + 1e-9]
    le32 = [v for v in ours.values() if v["kbps"] <= 3.2 + 1e-9]
    best6 = max((v["stoi"] for v in le6), default=float("nan"))
    print(f"target 1: tokenizer <= 6 kbit/s STOI {best6:.3f} vs Opus 6k STOI {opus6:.3f}: {'met' if best6 > opus6 else 'NOT met'}")
    if c2:
        ok = [v for v in le32 if v["pesq_nb"] > c2["pesq_nb"] and v["stoi"] > c2["stoi"]]
        best = max(le32, key=lambda v: v["pesq_nb"], default=None)
        got = f"PESQ-nb {best['pesq_nb']:.2f}, STOI {best['stoi']:.3f} at {best['kbps']:.2f} kbit/s" if best else "no row <= 3.2 kbit/s"
        print(f"target 2: tokenizer <= 3.2 kbit/s {got} vs Codec2 3200 PESQ-nb {c2['pesq_nb']:.2f}, STOI {c2['stoi']:.3f}: {'met' if ok else 'NOT met'}")
    print(f"tokenizer: {meta['checkpoint']} (step {meta['trained_global_step']}); speakers held out in its training: {meta['excluded_in_training'] or 'not recorded in the checkpoint'}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
