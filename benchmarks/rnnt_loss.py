"""RNN-T loss: time (forward + backward) and peak memory, each implementation in its own process.

    python benchmarks/rnnt_loss.py                      # the issue's three shapes, every implementation
    python benchmarks/rnnt_loss.py --shapes 16,200,40,301 --impls full,pruned
    python benchmarks/rnnt_loss.py --device cuda --dtype bf16 --impls torchaudio,full,pruned

Implementations:
    reference  sonus.asr.loss.rnnt_loss_reference: log-softmax + autograd recursion (the textbook way)
    full       sonus.asr.loss.rnnt_loss on random (B, T, U+1, V) logits
    pruned     rnnt_loss_simple on random (B, T, V) / (B, U+1, V) logits, prune_ranges (S=5), then
               pruned_rnnt_loss on random (B, T, S, V) logits: the joiner output the pruned loss needs
    full+joint, pruned+joint
               the same from random encoder (B, T, 512) and prediction (B, U+1, 512) outputs through
               the seed's joiner (FC 512, tanh, FC V) and, for pruned, the simple projections: what a
               training step spends on the transducer (sonus.asr.model.transducer_loss)
    torchaudio torchaudio.functional.rnnt_loss, where torchaudio loads (not next to torch 2.13:
               on CPU its figures are the ones quoted in issue 3; a GPU machine with an older
               torch may have it); fp32 or fp16 logits only, so it gets fp32 for --dtype bf16

Inputs as in torchaudio's benchmark: random logits, full lengths, reduction "mean"; fp32
unless ``--dtype bf16`` (the logits, or the encoder and prediction outputs, in bf16: what a
bf16 autocast step hands the loss). On CPU peak memory is the child process' peak RSS (inputs,
gradients and Python/torch included), the figure the torchaudio table in issue 3 quotes;
"loss GB" subtracts the RSS the process had with torch imported and nothing allocated (about
0.25 GB), which is what the loss itself costs. On CUDA (``--device cuda``) every implementation
runs in this one process, both figures are the peak of allocated device memory (the inputs'
and their gradients' own size subtracted for "loss GB"), and time is taken after a device
synchronisation, the first run (warm-up) not counted.
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
IMPLS = ("reference", "full", "pruned", "full+joint", "pruned+joint", "torchaudio")
DTYPES = ("fp32", "bf16")
H = 512  # the seed's encoder, prediction and joint width


def _child(impl: str, B: int, T: int, U: int, V: int, repeats: int, threads: int | None, device: str, dtype: str) -> dict:
    import torch

    from sonus.asr.config import TransducerLossConfig
    from sonus.asr.joiner import Joiner
    from sonus.asr.loss import prune_ranges, pruned_rnnt_loss, rnnt_loss, rnnt_loss_reference, rnnt_loss_simple
    from sonus.asr.model import transducer_loss

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    if impl == "torchaudio":
        import torchaudio.functional as taf  # fails where torchaudio does not load: reported as such

        if dt == torch.bfloat16:
            dt = torch.float32  # torchaudio's kernels take fp32 and fp16 only
    base_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # torch imported, nothing allocated
    g = torch.Generator(dev).manual_seed(0)
    targets = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32, device=dev)
    T_b = torch.full((B,), T, dtype=torch.int32, device=dev)
    U_b = torch.full((B,), U, dtype=torch.int32, device=dev)
    S = 5

    joiner = Joiner(H, H, H, V).to(dev)
    simple_am, simple_lm = torch.nn.Linear(H, V).to(dev), torch.nn.Linear(H, V).to(dev)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=dev).to(dt).requires_grad_(True)

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    def run() -> tuple[float, float]:
        """(seconds, GB of the inputs, which the loss does not own)"""
        if impl.endswith("+joint"):
            enc, pred = randn(B, T, H), randn(B, U + 1, H)
            inputs = [enc, pred]
            cfg = TransducerLossConfig(kind=impl.removesuffix("+joint"), prune_range=S)
            t0 = clock()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dt == torch.bfloat16):
                loss, _ = transducer_loss(cfg, joiner, enc, T_b, pred, targets, U_b, None, simple_am, simple_lm)
        elif impl == "pruned":
            am, lm, logits = randn(B, T, V), randn(B, U + 1, V), randn(B, T, S, V)
            inputs = [am, lm, logits]
            t0 = clock()
            simple, occ = rnnt_loss_simple(am, lm, targets, T_b, U_b)
            ranges = prune_ranges(occ, T_b, U_b, S)
            loss = 0.5 * simple + pruned_rnnt_loss(logits, targets, ranges, T_b, U_b)
        else:
            logits = randn(B, T, U + 1, V)
            inputs = [logits]
            fn = {"full": rnnt_loss, "reference": rnnt_loss_reference}.get(impl) or taf.rnnt_loss
            t0 = clock()
            loss = fn(logits, targets, T_b, U_b, reduction="mean")
        loss.backward()
        seconds = clock() - t0
        return seconds, 2 * sum(x.numel() * x.element_size() for x in inputs) / 1024**3  # inputs and their grads

    if not cuda:
        times = [run()[0] for _ in range(repeats)]
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KB on Linux
        return {"seconds": min(times), "peak_gb": peak_gb, "loss_gb": peak_gb - base_gb, "dtype": str(dt)}
    run()  # warm-up: kernels, cuBLAS handles
    times, peaks, own = [], [], []
    for _ in range(repeats):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        seconds, inputs_gb = run()
        times.append(seconds)
        peaks.append((torch.cuda.max_memory_allocated(dev) - base) / 1024**3)
        own.append(peaks[-1] - inputs_gb)
    return {"seconds": min(times), "peak_gb": max(peaks), "loss_gb": max(own), "dtype": str(dt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in TORCHAUDIO], help="B,T,U,V ...")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest counts")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=DTYPES, default="fp32", help="precision of the loss' inputs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        impl, shape = a.child.split(":")
        print(json.dumps(_child(impl, *map(int, shape.split(",")), a.repeats, a.threads, a.device, a.dtype)))
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
            cmd = [sys.executable, __file__, "--child", f"{impl}:{shape_s}", "--repeats", str(a.repeats),
                   "--device", a.device, "--dtype", a.dtype]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            if a.device != "cpu":  # device memory is measured per run: no process of its own needed
                try:
                    res[impl] = _child(impl, *shape, a.repeats, a.threads, a.device, a.dtype)
                except Exception as e:  # noqa: BLE001 (torchaudio missing, out of memory: reported, not fatal)
                    print(f"{impl} {shape}: failed: {e!r}", file=sys.stderr)
                    continue
            else:
                out = subprocess.run(cmd, check=False, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{impl} {shape}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  measured {impl:9s} B,T,U,V={shape_s}: {res[impl]['seconds']:.3f} s, {res[impl]['peak_gb']:.2f} GB", file=sys.stderr)
        rows.append((shape, res))

    on = "CPU" if a.device == "cpu" else a.device
    mem = "peak RSS GB" if a.device == "cpu" else "peak device GB"
    print(f"\n{on}, {a.dtype} inputs (torchaudio: fp32), fastest of {a.repeats}")
    print(f"| B, T, U, V | implementation | fwd+bwd s | {mem} | loss GB | time vs torchaudio | memory vs torchaudio | time vs reference | memory vs reference | loss GB vs full (same inputs) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, res in rows:
        ta = None
        if "torchaudio" in res:  # measured in this run
            ta = (res["torchaudio"]["seconds"], res["torchaudio"]["peak_gb"])
        elif a.device == "cpu" and a.dtype == "fp32" and shape in TORCHAUDIO:
            ta = TORCHAUDIO[shape]
            print(f"| {', '.join(map(str, shape))} | torchaudio 2.11 (quoted) | {ta[0]:.2f} | {ta[1]:.2f} | | 1 | 1 | | | |")
        ref = res.get("reference")
        for impl, r in res.items():
            full = res.get("full+joint" if impl.endswith("+joint") else "full")
            cells = [
                f"{r['seconds'] / ta[0]:.2f}x" if ta else "",
                f"{r['peak_gb'] / ta[1]:.2f}x" if ta else "",
                f"{r['seconds'] / ref['seconds']:.2f}x" if ref else "",
                f"{r['peak_gb'] / ref['peak_gb']:.2f}x" if ref else "",
                f"{r['loss_gb'] / full['loss_gb']:.2f}x" if full else "",
            ]
            print(f"| {', '.join(map(str, shape))} | {impl} | {r['seconds']:.3f} | {r['peak_gb']:.2f} | {r['loss_gb']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
