"""RNN-T loss: time (forward + backward) and peak memory, each implementation in its own process.

    python benchmarks/rnnt_loss.py                      # the issue's three shapes, every implementation
    python benchmarks/rnnt_loss.py --shapes 16,200,40,301 --impls full,pruned

Implementations:
    reference  sonus.asr.loss.rnnt_loss_reference: log-softmax + autograd recursion (the textbook way)
    full       sonus.asr.loss.rnnt_loss on random (B, T, U+1, V) logits
    pruned     rnnt_loss_simple on random (B, T, V) / (B, U+1, V) logits, prune_ranges (S=5), then
               pruned_rnnt_loss on random (B, T, S, V) logits: the joiner output the pruned loss needs
    full+joint, pruned+joint
               the same from random encoder (B, T, 512) and prediction (B, U+1, 512) outputs through
               the seed's joiner (FC 512, tanh, FC V) and, for pruned, the simple projections: what a
               training step spends on the transducer (sonus.asr.model.transducer_loss)

Inputs as in torchaudio's benchmark: fp32, random logits, full lengths, reduction "mean".
Peak memory is the child process' peak RSS (inputs, gradients and Python/torch included),
the figure the torchaudio table in issue 3 quotes; "loss GB" subtracts the RSS the process had
with torch imported and nothing allocated (about 0.25 GB), which is what the loss itself costs. torchaudio itself cannot be loaded next to
torch 2.13, so its figures are the ones measured on this machine class and quoted in the issue.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TORCHAUDIO = {  # (B, T, U, V): (seconds, peak RSS GB), torchaudio 2.11 on CPU, quoted from issue 3
    (16, 200, 40, 301): (1.95, 1.1),
    (16, 200, 40, 1025): (7.05, 2.6),
    (32, 400, 80, 501): (32.6, 8.4),
}
IMPLS = ("reference", "full", "pruned", "full+joint", "pruned+joint")
H = 512  # the seed's encoder, prediction and joint width


def _child(impl: str, B: int, T: int, U: int, V: int, repeats: int, threads: int | None) -> dict:
    import torch

    from sonus.asr.config import TransducerLossConfig
    from sonus.asr.joiner import Joiner
    from sonus.asr.loss import prune_ranges, pruned_rnnt_loss, rnnt_loss, rnnt_loss_reference, rnnt_loss_simple
    from sonus.asr.model import transducer_loss

    if threads:
        torch.set_num_threads(threads)
    base_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # torch imported, nothing allocated
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32)
    T_b = torch.full((B,), T, dtype=torch.int32)
    U_b = torch.full((B,), U, dtype=torch.int32)
    S = 5

    joiner = Joiner(H, H, H, V)
    simple_am, simple_lm = torch.nn.Linear(H, V), torch.nn.Linear(H, V)

    def run() -> float:
        if impl.endswith("+joint"):
            enc = torch.randn(B, T, H, generator=g).requires_grad_(True)
            pred = torch.randn(B, U + 1, H, generator=g).requires_grad_(True)
            cfg = TransducerLossConfig(kind=impl.removesuffix("+joint"), prune_range=S)
            t0 = time.perf_counter()
            loss, _ = transducer_loss(cfg, joiner, enc, T_b, pred, targets, U_b, None, simple_am, simple_lm)
        elif impl == "pruned":
            am = torch.randn(B, T, V, generator=g).requires_grad_(True)
            lm = torch.randn(B, U + 1, V, generator=g).requires_grad_(True)
            logits = torch.randn(B, T, S, V, generator=g).requires_grad_(True)
            t0 = time.perf_counter()
            simple, occ = rnnt_loss_simple(am, lm, targets, T_b, U_b)
            ranges = prune_ranges(occ, T_b, U_b, S)
            loss = 0.5 * simple + pruned_rnnt_loss(logits, targets, ranges, T_b, U_b)
        else:
            logits = torch.randn(B, T, U + 1, V, generator=g).requires_grad_(True)
            fn = rnnt_loss if impl == "full" else rnnt_loss_reference
            t0 = time.perf_counter()
            loss = fn(logits, targets, T_b, U_b, reduction="mean")
        loss.backward()
        return time.perf_counter() - t0

    times = [run() for _ in range(repeats)]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KB on Linux
    return {"seconds": min(times), "peak_gb": peak_gb, "loss_gb": peak_gb - base_gb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in TORCHAUDIO], help="B,T,U,V ...")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        impl, shape = a.child.split(":")
        print(json.dumps(_child(impl, *map(int, shape.split(",")), a.repeats, a.threads)))
        return

    impls = [i for i in a.impls.split(",") if i]
    bad = set(impls) - set(IMPLS)
    if bad:
        ap.error(f"unknown implementation(s) {sorted(bad)}; choose from {IMPLS}")
    rows = []
    for shape_s in a.shapes:
        shape = tuple(map(int, shape_s.split(",")))
        res = {}
        for impl in impls:
            cmd = [sys.executable, __file__, "--child", f"{impl}:{shape_s}", "--repeats", str(a.repeats)]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{impl} {shape}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  measured {impl:9s} B,T,U,V={shape_s}: {res[impl]['seconds']:.2f} s, {res[impl]['peak_gb']:.2f} GB", file=sys.stderr)
        rows.append((shape, res))

    print("\n| B, T, U, V | implementation | fwd+bwd s | peak RSS GB | loss GB | time vs torchaudio | RSS vs torchaudio | time vs reference | RSS vs reference | loss GB vs full (same inputs) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, res in rows:
        ta = TORCHAUDIO.get(shape)
        ref = res.get("reference")
        if ta:
            print(f"| {', '.join(map(str, shape))} | torchaudio 2.11 (quoted) | {ta[0]:.2f} | {ta[1]:.2f} | | 1 | 1 | | | |")
        for impl, r in res.items():
            full = res.get("full+joint" if impl.endswith("+joint") else "full")
            cells = [
                f"{r['seconds'] / ta[0]:.2f}x" if ta else "",
                f"{r['peak_gb'] / ta[1]:.2f}x" if ta else "",
                f"{r['seconds'] / ref['seconds']:.2f}x" if ref else "",
                f"{r['peak_gb'] / ref['peak_gb']:.2f}x" if ref else "",
                f"{r['loss_gb'] / full['loss_gb']:.2f}x" if full else "",
            ]
            print(f"| {', '.join(map(str, shape))} | {impl} | {r['seconds']:.2f} | {r['peak_gb']:.2f} | {r['loss_gb']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
