"""Load test of ``sonus serve`` on loopback: N concurrent WebSocket streams of real-time audio.

    python benchmarks/serve_load.py [--checkpoint exp/demo/best.ckpt] [--streams 20] [--duration 30]

Starts the server in a subprocess, then N clients, each sending 16 kHz audio from
``../shared/data/librispeech-mini/train-clean-5`` (FLAC, read in place) in 160 ms frames
paced at real time, until ``--duration`` seconds have passed (or ``--max-chunks`` frames
each). Latency of a chunk: from sending it to receiving the first partial whose ``samples``
cover it. Prints N, p50/p95/max latency, the server's CPU use (% of one core, from /proc
through psutil) and its real-time factor (CPU seconds per second of audio decoded), and
whether the target (p95 <= 300 ms at N = 20) is met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "librispeech-mini" / "train-clean-5"
SR, CHUNK = 16000, 2560


@dataclass
class ClientStats:
    latencies: list[float] = field(default_factory=list)  # seconds
    samples: int = 0
    errors: list[str] = field(default_factory=list)


def load_audio_pool(n: int, seconds: float) -> list[np.ndarray]:
    """n int16 signals of at least ``seconds``, each made of consecutive LibriSpeech files."""
    from sonus.audio.io import load_audio

    files = sorted(DATA.rglob("*.flac"))
    if not files:
        raise FileNotFoundError(f"no FLAC files under {DATA}")
    pool, k = [], 0
    for i in range(n):
        parts, total = [], 0
        while total < seconds * SR:
            w = load_audio(files[k % len(files)], SR).numpy()
            k += 1
            parts.append(w)
            total += len(w)
        pool.append(np.round(np.clip(np.concatenate(parts), -1, 1) * 32767).astype(np.int16)[: int(seconds * SR) + CHUNK])
    return pool


async def client(url: str, pcm: np.ndarray, duration: float, max_chunks: int, stats: ClientStats, start_delay: float) -> None:
    """One stream at real time; latency of each chunk to the partial that covers it."""
    import websockets

    await asyncio.sleep(start_delay)
    sent: dict[int, float] = {}  # samples after chunk -> send time
    async with websockets.connect(url, max_size=2**22, open_timeout=30) as ws:
        await ws.send(json.dumps({"sample_rate": SR}))

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                now = time.perf_counter()
                if msg["type"] == "partial":
                    for s in [s for s in sent if s <= msg["samples"]]:
                        stats.latencies.append(now - sent.pop(s))
                elif msg["type"] == "error":
                    stats.errors.append(msg["message"])
                elif msg["type"] == "final" and not msg.get("endpoint"):  # the endpoint rules' finals leave the stream open
                    return

        reader = asyncio.create_task(receive())
        t0 = time.perf_counter()
        n = min(max_chunks, int(duration * SR / CHUNK), len(pcm) // CHUNK)
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i * CHUNK / SR - time.perf_counter()))  # real time
            sent[(i + 1) * CHUNK] = time.perf_counter()
            await ws.send(pcm[i * CHUNK : (i + 1) * CHUNK].tobytes())
            stats.samples += CHUNK
        await ws.send(json.dumps({"event": "end"}))
        await asyncio.wait_for(reader, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, port: int, streams: int, threads: int | None, extra: list[str]) -> subprocess.Popen:
    args = [sys.executable, "-m", "sonus.cli", "serve", f"checkpoint={checkpoint}", "host=127.0.0.1", f"port={port}",
            f"limits.max_streams={max(streams, 1)}", *([f"num_threads={threads}"] if threads else []), *extra]  # fmt: skip
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"sonus_serve_load_{port}.log", "w")  # noqa: SIM115 (the server's log lives as long as it)
    proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); its log: {log.name}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def run(n: int, args: argparse.Namespace) -> dict:
    pool = load_audio_pool(n, args.duration)
    port = free_port()
    proc = start_server(args.checkpoint, port, n, args.threads, args.override)
    try:
        p = psutil.Process(proc.pid)
        cpu0, t0 = p.cpu_times(), time.perf_counter()
        stats = [ClientStats() for _ in range(n)]
        url = f"ws://127.0.0.1:{port}/v1/stream"

        async def all_clients() -> None:
            await asyncio.gather(*(client(url, pool[i], args.duration, args.max_chunks, stats[i], i * CHUNK / SR / max(n, 1)) for i in range(n)))

        asyncio.run(asyncio.wait_for(all_clients(), timeout=args.duration + 120))
        cpu1, wall = p.cpu_times(), time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    lat = np.array([x for s in stats for x in s.latencies]) * 1000
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    audio = sum(s.samples for s in stats) / SR
    errors = [e for s in stats for e in s.errors]
    return {
        "N": n, "chunks": len(lat), "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
        "max": float(lat.max()), "cpu_pct": 100 * cpu / wall, "rtf": cpu / audio, "wall": wall, "errors": errors,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "exp" / "demo" / "best.ckpt"))
    ap.add_argument("--streams", type=int, nargs="+", default=[20], help="N (several: one run each)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of audio per stream")
    ap.add_argument("--max-chunks", type=int, default=10_000, help="frames per stream at most")
    ap.add_argument("--threads", type=int, default=None, help="server num_threads")
    ap.add_argument("override", nargs="*", help="extra serve config overrides, e.g. decoding.strategy=modified_beam")
    args = ap.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    rows = [run(n, args) for n in args.streams]
    print(f"\nserve load test: {args.checkpoint}, {args.duration:g} s of real-time audio per stream, 160 ms frames, {os.cpu_count()} CPUs")
    print(f"{'N':>4} {'chunks':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'CPU %':>7} {'RTF':>6} {'errors':>6}")
    for r in rows:
        print(f"{r['N']:>4} {r['chunks']:>7} {r['p50']:>8.1f} {r['p95']:>8.1f} {r['max']:>8.1f} {r['cpu_pct']:>7.1f} {r['rtf']:>6.3f} {len(r['errors']):>6}")
    target = [r for r in rows if r["N"] >= 20]
    for r in target:
        print(f"target p95 <= 300 ms at N={r['N']}: {'met' if r['p95'] <= 300 and not r['errors'] else 'NOT met'} (p95 {r['p95']:.1f} ms)")
    for r in rows:
        for e in r["errors"][:3]:
            print(f"N={r['N']} error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
