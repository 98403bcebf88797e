"""Decoding speed: real-time factor (decode time / audio duration) on one CPU thread.

    python benchmarks/decode.py                          # exp/demo_pruned/best.ckpt, 64 test utterances
    python benchmarks/decode.py --num 8 --batch-sizes 1  # a quick look
    python benchmarks/decode.py --checkpoint ""          # the demo's sizes, random weights

Systems, each timed from the waveform (features + encoder + search [+ LAS]):
    greedy          label-looping greedy search, up to --max-symbols labels a frame
    modified_beam   modified beam search (at most one label a frame), beam 4
    beam            time-synchronous beam search, beam 4, up to --max-symbols labels a frame
    two_pass        modified beam 4, then LAS rescores its 4-best (w = 0.5)
    union           make demo's second pass (no LM): beam 4 and LAS beam search 8, the union of
                    both n-best lists scored by both models (w = 0.6)
    streaming       sonus.asr.StreamingDecoder: 160 ms chunks, modified beam 4, LAS rescoring at
                    the end. Latency is the time from a chunk's arrival to its partial result
                    (p50/p95 over all chunks); "final" the time from the end of the stream to the
                    rescored result; RTF the whole stream's compute over its duration.
    encoder         features + encoder alone, for reference: the part no search can save

Utterances are the first --num of the manifest, sorted by duration and cut into batches
(streams in lock-step at batch 16, each ending at its own length). Without a checkpoint the
model is the demo's size (configs/experiment/demo.yaml) with random weights and a blank-biased
joiner, so it emits sparsely like a trained one; its figures are indicative only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from sonus.asr import StreamingDecoder
from sonus.asr.decoding import Decoder, DecodingOptions
from sonus.asr.model import TwoPassASR, load_checkpoint
from sonus.audio.io import load_audio
from sonus.data.manifest import read_manifest
from sonus.text.tokenizer import CharTokenizer, Tokenizer

TARGETS = {"greedy": 0.01, "modified_beam": 0.04, "two_pass": 0.05}  # RTF, issue 3
LATENCY_TARGET_MS = 20.0  # a partial result no later than this after each chunk arrives


def demo_model(vocab: int = 256) -> tuple[TwoPassASR, Tokenizer]:
    """The demo experiment's model with random weights (blank-biased joiner) and a dummy tokenizer."""
    from sonus.asr.train import model_config_from
    from sonus.cli import compose

    cfg = compose("train", ["experiment=demo"])
    tok = CharTokenizer(chr(0x100 + i) for i in range(vocab))  # vocab + blank, <unk>, <eos>
    torch.manual_seed(0)
    model = TwoPassASR(model_config_from(cfg.model, tok.vocab_size, int(cfg.data.n_mels), int(cfg.data.sample_rate)), None, None)
    with torch.no_grad():
        model.joiner.out.bias[0] += 6.0
    return model.eval(), tok


def batches(waves: list[torch.Tensor], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Waveforms sorted by length -> padded (B, S) batches with lengths (B,)."""
    waves = sorted(waves, key=len)
    out = []
    for i in range(0, len(waves), size):
        group = waves[i : i + size]
        lengths = torch.tensor([len(w) for w in group])
        wave = torch.zeros(len(group), int(lengths.max()))
        for b, w in enumerate(group):
            wave[b, : len(w)] = w
        out.append((wave, lengths))
    return out


@torch.no_grad()
def time_offline(model: TwoPassASR, decoder: Decoder | None, data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Seconds to decode every batch (decoder None: features + encoder only), after one warm-up batch."""
    run = (lambda w, n: model.encode(w, n)) if decoder is None else decoder.decode
    run(*data[0])
    t0 = time.perf_counter()
    for wave, lengths in data:
        run(wave, lengths)
    return time.perf_counter() - t0


@torch.no_grad()
def time_streaming(sd: StreamingDecoder, data: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, list[float], list[float]]:
    """-> (total seconds, per-chunk latencies in s, end-of-stream latencies in s)."""
    chunk = sd.chunk_samples

    def one(wave: torch.Tensor, lengths: torch.Tensor, steps: list[float], ends: list[float]) -> None:
        state = sd.initial_state(wave.shape[0])
        for s in range(0, wave.shape[1], chunk):
            piece = wave[:, s : s + chunk]
            t0 = time.perf_counter()
            _, state = sd.step(piece, state, (lengths - s).clamp(0, piece.shape[1]))
            steps.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sd.finish(state)
        ends.append(time.perf_counter() - t0)

    one(*data[0], [], [])  # warm-up
    steps: list[float] = []
    ends: list[float] = []
    for wave, lengths in data:
        one(wave, lengths, steps, ends)
    return sum(steps) + sum(ends), steps, ends


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_ckpt = Path("exp/demo_pruned/best.ckpt")
    ap.add_argument("--checkpoint", default=str(default_ckpt) if default_ckpt.is_file() else None)
    ap.add_argument("--manifest", default="data/synth/test.jsonl")
    ap.add_argument("--num", type=int, default=64, help="utterances (the manifest's first)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--systems", default="encoder,greedy,modified_beam,beam,two_pass,union,streaming")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--max-symbols", type=int, default=4, help="greedy and beam: labels per frame (the demo decodes with 4)")
    ap.add_argument("--chunk-ms", type=float, default=160.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    if a.checkpoint:
        ck = load_checkpoint(a.checkpoint)
        model, tok, what = ck.model, ck.tokenizer, a.checkpoint
    else:
        model, tok = demo_model()
        what = "random demo-size model (no checkpoint)"
    sr = model.cfg.sample_rate
    utts = read_manifest(a.manifest)[: a.num]
    waves = [load_audio(u.audio_filepath, sr).flatten() for u in utts]
    audio_s = sum(len(w) for w in waves) / sr

    base = DecodingOptions(beam_size=a.beam, max_symbols_per_frame=a.max_symbols, second_pass="none")
    offline = {
        "greedy": replace(base, strategy="greedy"),
        "modified_beam": replace(base, strategy="modified_beam"),
        "beam": replace(base, strategy="beam"),
        "two_pass": replace(base, strategy="modified_beam", second_pass="rescore", las_weight=0.5),
        "union": replace(base, strategy="beam", second_pass="union", las_beam_size=8, las_weight=0.6),
    }
    systems = [s for s in a.systems.split(",") if s]
    rows: list[tuple[str, int, float, float | None, list[float] | None, list[float] | None]] = []
    for bs in a.batch_sizes:
        data = batches(waves, bs)
        for name in systems:
            if name == "streaming":
                sd = StreamingDecoder(model, tok, offline["two_pass"], a.chunk_ms)
                total, steps, ends = time_streaming(sd, data)
                rows.append((name, bs, total / audio_s, None, steps, ends))
            else:
                dec = None if name == "encoder" else Decoder(model, tok, offline[name])
                rows.append((name, bs, time_offline(model, dec, data) / audio_s, TARGETS.get(name), None, None))
            print(f"  measured {name} at batch {bs}: RTF {rows[-1][2]:.4f}", flush=True)

    print(f"\n{what}; {len(utts)} utterances of {a.manifest} ({audio_s:.1f} s of audio); "
          f"{torch.get_num_threads()} thread(s); beam {a.beam}, up to {a.max_symbols} labels a frame (greedy, beam)")  # fmt: skip
    print("| system | batch | RTF | RTF target | chunk latency p50 / p95 ms | final ms (p50) | latency target |")
    print("|---|---|---|---|---|---|---|")
    for name, bs, rtf, target, chunk_s, end_s in rows:
        goal = f"<= {target}" + (" (met)" if rtf <= target else " (missed)") if target else ""
        if chunk_s and end_s:
            p50, p95 = 1e3 * pct(chunk_s, 50), 1e3 * pct(chunk_s, 95)
            lat = f"{p50:.1f} / {p95:.1f}"
            lat_goal = f"<= {LATENCY_TARGET_MS:.0f} ms" + (" (met)" if p95 <= LATENCY_TARGET_MS else " (missed)")
            print(f"| streaming ({a.chunk_ms:.0f} ms chunks) | {bs} | {rtf:.4f} | | {lat} | {1e3 * pct(end_s, 50):.1f} | {lat_goal} |")
        else:
            print(f"| {name} | {bs} | {rtf:.4f} | {goal} | | | |")


if __name__ == "__main__":
    main()
