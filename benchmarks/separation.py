"""Separation models side by side: parameters, CPU real-time factor, SI-SDRi after a training budget.

    python benchmarks/separation.py --minutes 60 --models convtasnet      # the issue 5 target run
    python benchmarks/separation.py --minutes 10                          # all four, 10 minutes each
    python benchmarks/separation.py --rtf-only                            # parameters and RTF, no training
    python benchmarks/separation.py --rtf-only --step-time --models convtasnet   # + a training step, eager and compiled
    python benchmarks/separation.py --models convtasnet --fsdd 0.2 training.compile=true \
        data.dynamic_mixing.random_eq_db=6                                # FSDD's voices, random EQ, compiled steps
    python benchmarks/separation.py --models convtasnet --dev-speakers 32,3947,163 training.compile=true \
        training.ema_decay=0.998 training.ema_start_step=300              # a 3-pair dev set, EMA weights

Data (8 kHz, 2 speakers + noise, LibriMix loudness): ``../shared/data/librispeech-mini``
speakers are split as ``sonus prepare librimix`` splits them (3 test and 2 dev speakers held
out, seed 42; --dev-speakers holds out others for dev, the test set stays the same). Test (100
mixtures) and dev (40, or 10 per speaker pair if more) are written once under --data by
``prepare_librimix`` with held-out noise files (exercise_bike, sb_noise5); training mixes
the remaining speakers and noises on the fly (dynamic mixing, new mixtures every epoch).
Nothing of a test speaker or a test noise is seen in training.

Each model trains in its own ``sonus train`` process with the CPU-sized overrides in MODELS
for --minutes of wall-clock time on --threads threads (``training.time_budget_minutes``:
stops when one more step and a validation would overrun, then validates; ``max_time`` is a hard stop one minute
later; bf16 autocast, which is 1.15-1.4x faster on this CPU; the learning rate decays linearly to
the end of the budget, ``training.lr_decay=budget``; validation every 200 steps), then ``sonus evaluate separation`` scores the best checkpoint (by dev SI-SDR) on
the test set: SI-SDRi (PIT) and, with --full-metrics, SDRi, PESQ-nb and STOI; ``si_sdri_last`` is the
last checkpoint's SI-SDRi (the dev set is one speaker pair, so "best on dev" is a noisy choice), also
given per test speaker pair with its speaker swaps (``group_by=pair metrics.swaps=true``: the share of
half-second windows where both speak that come out in the other order, and the SI-SDRi with every
window in its best order). RTF: one thread, a 10 s mixture, median of 3 runs (after a warm-up), forward only.

Target (issue 5): SI-SDRi >= 8 dB for the best model within 60 CPU minutes of training.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCE = SHARED / "librispeech-mini" / "train-clean-5"
TEST_NOISES = ("exercise_bike.wav", "sb_noise5.wav")

# CPU-sized configurations (the registry's defaults are the papers' GPU sizes).
MODELS: dict[str, dict] = {
    "convtasnet": {"n_filters": 256, "kernel_size": 16, "bn_channels": 128, "hidden_channels": 256, "skip_channels": 128, "n_blocks": 8, "n_repeats": 2},
    "dprnn": {"n_filters": 64, "kernel_size": 16, "bn_channels": 64, "hidden_size": 64, "chunk_size": 100, "num_layers": 4},
    "sepformer": {"n_filters": 128, "kernel_size": 16, "d_model": 128, "nhead": 4, "d_ffn": 256, "num_layers": 2, "num_blocks": 2, "chunk_size": 100},
    "spmamba": {},  # filled in from the model's CPU preset below
}
# SPMamba's scans cost ~8x DPRNN's step on CPU even this small (0.28M parameters: 6.8 s per batch of 4 x 3 s
# on 2 threads, DPRNN below 0.9 s); its defaults (6.1M) take 38 s to separate 1 s on one thread.
SPMAMBA_CPU = {"n_fft": 128, "stride": 64, "emb_dim": 16, "emb_ks": 4, "emb_hs": 4, "n_layers": 2, "d_state": 8, "expand": 2,
               "attn_n_head": 2, "attn_approx_qk_dim": 128}


def _params(name: str) -> dict:
    return SPMAMBA_CPU if name == "spmamba" else MODELS[name]


def prepare(data: Path, dev_speakers: int | list[str] = 2) -> Path:
    """Dev/test mixtures of held-out speakers and noises (once), and the training noise folder.

    Test speakers are chosen before dev speakers, so the test set is the same for any
    ``dev_speakers`` (a number, or ids); another dev set (40 mixtures, or 10 a speaker pair if
    that is more) lives in its own folder and leaves that many fewer voices for training."""
    from sonus.data.recipes.librimix import prepare_librimix

    if not SOURCE.is_dir():
        sys.exit(f"{SOURCE} not found: this benchmark reads ../shared/data (see its README)")
    noise_all = sorted(p for p in (SHARED / "noise").glob("*.wav"))
    folders = {"train": data / "noise_train", "test": data / "noise_test"}
    for split, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        for p in noise_all:
            if (p.name in TEST_NOISES) == (split == "test") and not (folder / p.name).exists():
                (folder / p.name).symlink_to(p)
    n, tag = (dev_speakers, str(dev_speakers)) if isinstance(dev_speakers, int) else (len(dev_speakers), "-".join(dev_speakers))
    root = data / ("librimix" if dev_speakers == 2 else f"librimix_dev{tag}")
    pairs = n * (n - 1) // 2
    if not (root / "wav8k" / "min" / "metadata" / "mixture_test_mix_both.csv").is_file():
        prepare_librimix(SOURCE, root, sample_rate=8000, mode="min", train_mixtures=0, dev_mixtures=max(40, 10 * pairs), test_mixtures=100,
                         noise_dir=folders["test"], dev_speakers=dev_speakers, test_speakers=3, seed=42, overwrite=True)  # fmt: skip
    return root


def fsdd_pool(data: Path, share: float) -> list[str]:
    """Overrides that add the Free Spoken Digit Dataset's speakers (none of them in dev or test)
    to the training voices with ``share`` of the draws, their digits strung together to the crop."""
    from sonus.data.manifest import write_manifest
    from sonus.data.recipes.fsdd import scan_fsdd

    manifest = data / "fsdd_all.jsonl"
    if not manifest.is_file():
        write_manifest(manifest, scan_fsdd(SHARED / "fsdd"), relative=False)
    return [f"data.dynamic_mixing.extra=[{{manifest:{manifest},share:{share}}}]", "data.dynamic_mixing.fill_short=true"]


def rtf(name: str, seconds: float = 10.0, sample_rate: int = 8000) -> tuple[int, float]:
    """(parameters, real-time factor at 1 thread) of the benchmark configuration of ``name``."""
    from sonus.separation.models import build_model

    torch.set_num_threads(1)
    model = build_model(name, _params(name)).eval()
    x = 0.1 * torch.randn(1, int(seconds * sample_rate))
    times = []
    with torch.inference_mode():
        model(x[:, : sample_rate])  # warm-up
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sum(p.numel() for p in model.parameters()), statistics.median(times) / seconds


def step_time(name: str, threads: int, steps: int = 5) -> dict[str, float]:
    """Seconds per training step (batch 4 x 3 s, bf16 autocast, forward + backward + AdamW) of the
    benchmark configuration of ``name``, eager and through ``torch.compile`` (``training.compile=true``),
    and the compile's own seconds (the first step; Inductor's cache makes a second run faster)."""
    from sonus.separation.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name, _params(name))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = 0.1 * torch.randn(4, 24000)

    def step(f) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = f(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0

    step(model)  # warm-up
    eager = statistics.median(step(model) for _ in range(steps))
    compiled = torch.compile(model, dynamic=False)
    first = step(compiled)
    return {"eager_s": eager, "compiled_s": statistics.median(step(compiled) for _ in range(steps)), "compile_s": first}


def evaluate(ckpt: Path, results: Path, threads: int, full: bool, extra: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """``sonus evaluate separation`` of ``ckpt`` on its test set: the summary's rows by group ("overall": all)."""
    ev = [sys.executable, "-m", "sonus.cli", "evaluate", "separation", f"checkpoint={ckpt}", f"output={results}", f"num_threads={threads}", *extra]
    if not full:
        ev += ["metrics.pesq=false", "metrics.stoi=false", "metrics.sdr=false"]
    log = results.with_suffix(".log")
    with open(log, "w") as f:
        rc = subprocess.run(ev, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"evaluating {ckpt} failed (exit {rc}); see {log}")
    with open(results.with_name(results.stem + "_summary.csv")) as f:
        rows = list(csv.reader(f))
    keys = rows[0][1:]  # the first column names the group (variant, pair)
    return {r[0]: dict(zip(keys, map(float, r[1:]))) for r in rows[1:]}


def train_and_score(name: str, root: Path, data: Path, out: Path, minutes: float, threads: int, full: bool, overrides: list[str],
                    chunk: float | None = None, dev_speakers: int | list[str] = 2) -> dict:  # fmt: skip
    exp = out / name
    params = [f"model.params.{k}={v}" for k, v in _params(name).items()]
    dev = dev_speakers if isinstance(dev_speakers, int) else "[" + ",".join(dev_speakers) + "]"
    hard = int(minutes + 1)
    cmd = [
        sys.executable, "-m", "sonus.cli", "train", f"experiment=sep_{name}", f"data.root={root}", "data.mixture=mix_both",
        "data.dynamic_mixing.enabled=true", f"data.dynamic_mixing.source={SOURCE}", f"data.dynamic_mixing.noise={data / 'noise_train'}",
        f"data.dynamic_mixing.dev_speakers={dev}", "data.dynamic_mixing.test_speakers=3", "data.dynamic_mixing.num_items=1000",
        "data.segment_seconds=3.0", "data.val_segment_seconds=4.0", "data.num_workers=0", *params,
        f"training.output_dir={exp}", f"training.time_budget_minutes={minutes}", f"training.max_time=00:{hard // 60:02d}:{hard % 60:02d}:00",
        f"training.num_threads={threads}", "training.precision=bf16-mixed", "training.val_check_interval=200",
        "training.progress_bar=tqdm", "wandb.enabled=false", "training.resume=false", "training.lr_decay=budget", *overrides,
    ]  # fmt: skip
    log = out / f"{name}.train.log"
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"training {name} failed (exit {rc}); see {log}")
    wall = (time.time() - t0) / 60
    ckpt = torch.load(exp / "last.ckpt", map_location="cpu", weights_only=True)
    steps, epochs = int(ckpt["global_step"]), int(ckpt["epoch"])
    row = {"steps": steps, "epochs": epochs, "train_min": wall, **evaluate(exp / "best.ckpt", out / f"{name}_test.csv", threads, full)["overall"]}
    # The dev set is one speaker pair, a weak judge of which checkpoint generalises: the last one
    # (the end of the budget's decay) is scored too, per test pair and with its swaps.
    last = evaluate(exp / "last.ckpt", out / f"{name}_test_last.csv", threads, False, ("group_by=pair", "metrics.swaps=true"))
    row["si_sdri_last"] = last["overall"]["si_sdri"]
    row["pairs_last"] = last
    if chunk:  # the same test set separated in stitched chunks of the training crops' scale
        chunked = evaluate(exp / "best.ckpt", out / f"{name}_test_chunked.csv", threads, False, (f"chunk_seconds={chunk}", f"overlap_seconds={chunk / 4}"))
        row["si_sdri_chunked"] = chunked["overall"]["si_sdri"]
    return row


def _speakers(value: str) -> int | list[str]:
    """--dev-speakers: ``4`` (a number) or ``32,3947,163`` (ids)."""
    return [v for v in value.split(",") if v] if "," in value else int(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per model (wall clock)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="data/bench_sep", help="where the test/dev mixtures and noise folders go")
    ap.add_argument("--out", default="exp/bench_sep")
    ap.add_argument("--rtf-only", action="store_true")
    ap.add_argument("--step-time", action="store_true", help="also time a training step eager and compiled (no training without --minutes)")
    ap.add_argument("--chunk-seconds", type=float, default=None,
                    help="also score the test set separated in chunks of this length, stitched (sonus evaluate ... chunk_seconds=)")
    ap.add_argument("--fsdd", type=float, default=None, metavar="SHARE",
                    help="also mix FSDD's 5 speakers (digits strung together) into training, with this share of the speakers drawn")
    ap.add_argument("--dev-speakers", type=_speakers, default=2, metavar="N|ID,ID,...",
                    help="speakers held out for dev (the checkpoint choice), a number or ids: 2 is one pair; "
                         "32,3947,163 gives 3 pairs (F+F, 2 x F+M) and one training voice fewer")
    ap.add_argument("--full-metrics", action="store_true", help="also SDR, PESQ-nb and STOI on the test set")
    ap.add_argument("overrides", nargs="*", help="extra `sonus train` overrides for every model")
    a = ap.parse_args()
    names = [m for m in a.models.split(",") if m]
    if bad := set(names) - set(MODELS):
        ap.error(f"unknown models {sorted(bad)}; choose from {sorted(MODELS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in names:
        n, r = rtf(name)
        rows[name] = {"params_M": n / 1e6, "rtf_1thread": r}
        if a.step_time:
            rows[name].update(step_time(name, a.threads))
    if not a.rtf_only:
        root = prepare(Path(a.data), a.dev_speakers)
        os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
        if a.fsdd:
            a.overrides = fsdd_pool(Path(a.data), a.fsdd) + a.overrides
        for name in names:
            rows[name].update(train_and_score(name, root, Path(a.data), out, a.minutes, a.threads, a.full_metrics, a.overrides, a.chunk_seconds, a.dev_speakers))
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    keys = ["params_M", "rtf_1thread", "eager_s", "compiled_s", "compile_s", "steps", "epochs", "train_min", "si_sdr", "si_sdri", "si_sdri_last", "si_sdri_chunked", "sdri", "pesq", "stoi"]
    keys = [k for k in keys if any(k in r for r in rows.values())]
    print(f"\nseparation benchmark: 8 kHz 2-speaker noisy mixtures, held-out speakers and noises; budget {a.minutes:g} min/model on {a.threads} threads")
    print("| model | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" if k in ("rtf_1thread", "eager_s", "compiled_s") else f"{r[k]:.2f}" if k in r else "-" for k in keys) + " |")
    scored = [r for r in rows.values() if "si_sdri" in r]
    if scored:  # the dev set is one speaker pair: its choice of checkpoint is shown beside the last one
        by_dev, last = max(r["si_sdri"] for r in scored), max(r["si_sdri_last"] for r in scored)
        print(f"best SI-SDRi {by_dev:.2f} dB (checkpoint chosen on dev), {last:.2f} dB (last checkpoint); target >= 8 dB within 60 CPU minutes")
        print("\nlast checkpoint per test speaker pair (swapped: share of 0.5 s windows where both speak in the other order)")
        print("| model | pair | mixtures | si_sdri | swapped | si_sdri, windows in best order |")
        print("|---|---|---|---|---|---|")
        for name, r in rows.items():
            for pair, v in r.get("pairs_last", {}).items():
                print(f"| {name} | {pair} | {v['n']:.0f} | {v['si_sdri']:.2f} | {100 * v['swapped']:.0f}% | {v['si_sdri_window_pit']:.2f} |")


if __name__ == "__main__":
    main()
