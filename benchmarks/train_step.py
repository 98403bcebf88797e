"""Training throughput: audio seconds trained per wall second, per model and setting.

    python benchmarks/train_step.py                          # demo and joint_ssi, vocabulary 1024
    python benchmarks/train_step.py --experiments demo --vocab 256 --steps 8 --compile
    python benchmarks/train_step.py --device cuda --steps 20 --repeats 3 --compile
    python benchmarks/train_step.py --device cuda --experiments demo --batch-size 128 --max-duration 320
    python benchmarks/train_step.py --experiments demo --steps 10 --repeats 3 --breakdown

For each experiment the model is built from its config with a SentencePiece tokenizer of
``--vocab`` pieces (``--tokenizer``, unigram by default, also where the experiment itself
uses characters, as the demo does: the loss comparison is about a large vocabulary).
Batches come from the duration-bucketing sampler over the real manifest (``--manifest``, the
synthetic corpus by default) with the experiment's batch limits, and a step is forward +
backward + Adam, as in training (SpecAugment on, LAS included). Settings: full vs pruned
RNN-T loss, fp32 vs bf16 autocast, and ``torch.compile`` of the encoder when ``--compile``
is given. Every setting gets the same batches, interleaved: each batch runs under every
setting in turn, ``--repeats`` rounds, and its fastest round counts, so that drift in the
machine's speed does not favour one setting. The sampler's padding waste (padded frames /
all frames over one epoch) is printed first. On ``--device cuda`` a step's time is taken after
a device synchronisation, fp32 means true fp32 (TF32 off), and the peak of allocated device
memory over a setting's steps is printed too. ``--breakdown`` then times each part of the step
on its own (features, encoder, predictor, transducer loss, LAS, clipping + Adam), to show
where the settings differ and what they share.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch


def padding_waste(durations: list[float], batches: list[list[int]]) -> float:
    real = sum(durations[i] for b in batches for i in b)
    padded = sum(max(durations[i] for i in b) * len(b) for b in batches)
    return 1.0 - real / padded


def interleaved(steps: list[Callable[[Any], None]], batches: list, repeats: int, device: torch.device) -> tuple[list[list[float]], list[float]]:
    """Each step warmed up (and compiled) on ``batches[0]``, then timed on each of ``batches[1:]``,
    every step in turn, ``repeats`` rounds -> each step's fastest seconds per batch, and (CUDA)
    the most device memory (GB) a step of it allocated. Interleaved, so that drift in the
    machine's speed hits every step alike; on CUDA the clock waits for the device."""
    cuda = device.type == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    for step in steps:
        step(batches[0])
    best = [[float("inf")] * (len(batches) - 1) for _ in steps]
    peak = [0.0] * len(steps)
    for _ in range(repeats):
        for i, b in enumerate(batches[1:]):
            for k, step in enumerate(steps):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = clock()
                step(b)
                best[k][i] = min(best[k][i], clock() - t0)
                if cuda:
                    peak[k] = max(peak[k], torch.cuda.max_memory_allocated(device) / 1024**3)
    return best, peak


def make_step(model, bf16: bool):
    """One training step as training runs it: forward (RNN-T + LAS losses), backward, clipping,
    Adam (training's, :func:`sonus.train.optim.adam`: the fused kernel)."""
    from sonus.train.optim import adam

    opt = adam(model.parameters(), 1e-4)
    device_type = next(model.parameters()).device.type

    def step(batch) -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            enc = model.encode(batch.wave, batch.wave_lengths)
            out = model.losses(enc, batch.targets, batch.target_lengths, 0.1)
            total = out.rnnt + (out.las if out.las is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    step.model = model
    return step


def step_parts(model, bf16: bool, batches: list) -> dict[str, Callable[[Any], None]]:
    """The parts of :func:`make_step`'s step, each timed on its own (``--breakdown``): log-mel
    features (and SpecAugment), the encoder, the predictor, the transducer loss (simple loss,
    joiner and pruned loss, or the full joint and loss), LAS, clipping + Adam. A part that has
    parameters runs forward + backward, from inputs computed beforehand for each of ``batches``
    (the encoder's from the features, the losses' from the encoder and predictor outputs as
    leaves); a stand-in loss (the mean square of its output) backs the encoder and predictor.
    The parts add up to about a step."""
    from sonus.asr.las import las_loss
    from sonus.asr.model import transducer_loss
    from sonus.train.optim import adam

    device_type = next(model.parameters()).device.type

    def autocast():
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)

    inputs = {}  # id(batch) -> (features, lengths, encoder output, its lengths, predictor output)
    with torch.no_grad(), autocast():
        for b in batches:
            feats, lengths = model.features(b.wave, b.wave_lengths)
            enc, enc_lengths = model.encoder(feats, lengths)
            inputs[id(b)] = (feats, lengths, enc, enc_lengths, model.predictor(b.targets))

    def features(b) -> None:
        with autocast():
            model.features(b.wave, b.wave_lengths)

    def encoder(b) -> None:
        feats, lengths, *_ = inputs[id(b)]
        model.zero_grad(set_to_none=True)
        with autocast():
            out, _ = model.encoder(feats, lengths)
        out.float().square().mean().backward()

    def predictor(b) -> None:
        model.zero_grad(set_to_none=True)
        with autocast():
            out = model.predictor(b.targets)
        out.float().square().mean().backward()

    def transducer(b) -> None:
        _, _, enc, enc_lengths, pred = inputs[id(b)]
        model.zero_grad(set_to_none=True)
        enc, pred = enc.clone().requires_grad_(), pred.clone().requires_grad_()
        with autocast():
            loss, _ = transducer_loss(model.cfg.rnnt_loss, model.joiner, enc, enc_lengths, pred, b.targets, b.target_lengths,
                                      None, model.simple_am, model.simple_lm)  # fmt: skip
        loss.backward()

    def las(b) -> None:
        _, _, enc, enc_lengths, _ = inputs[id(b)]
        model.zero_grad(set_to_none=True)
        enc = enc.clone().requires_grad_()
        with autocast():
            loss = las_loss(model.las(enc, enc_lengths, b.targets), b.targets, b.target_lengths, 0.1)
        loss.backward()

    params = list(model.parameters())
    grads = [torch.full_like(p, 1e-3) for p in params]
    opt = adam(params, 1e-4)

    def optimizer(b) -> None:
        for p, g in zip(params, grads):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    return {"features": features, "encoder": encoder, "predictor": predictor, "transducer": transducer, "LAS": las, "clip + Adam": optimizer}


def breakdown(exp: str, settings: list, batches: list, repeats: int, device: torch.device) -> None:
    """Print where each setting's step goes (:func:`step_parts`), in ms, beside the whole step."""
    rows, header = [], []
    for loss, precision, compiled, step in settings:
        if compiled:
            continue
        parts = step_parts(step.model, precision == "bf16", batches)
        best, _ = interleaved([*parts.values(), step], batches, repeats, device)
        rows.append((loss, precision, [1000 * sum(t) / len(t) for t in best]))
        header = list(parts)
    print(f"\n{exp}: ms per step by part (each forward + backward on its own; mean over the batches)")
    print("| loss | precision | " + " | ".join(header) + " | sum of parts | step |")
    print("|---|---|" + "---|" * (len(header) + 2))
    for loss, precision, ms in rows:
        print(f"| {loss} | {precision} | " + " | ".join(f"{v:.1f}" for v in ms[:-1]) + f" | {sum(ms[:-1]):.1f} | {ms[-1]:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=["demo", "joint_ssi"])
    ap.add_argument("--vocab", type=int, default=1024, help="SentencePiece pieces (blank added on top)")
    ap.add_argument("--tokenizer", choices=("unigram", "bpe", "char", "experiment"), default="unigram",
                    help="tokenizer kind; char and experiment (the experiment's own) may ignore --vocab")
    ap.add_argument("--manifest", default="data/synth/train.jsonl")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (batches) per setting, after one warm-up step")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over the batches; each batch's fastest round counts")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the encoder")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=None, help="utterances per batch (default: the experiment's)")
    ap.add_argument("--max-duration", type=float, default=None, help="padded seconds per batch (default: the experiment's)")
    ap.add_argument("--breakdown", action="store_true", help="also time each part of the step on its own (features, encoder, ...)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 is fp32

    from sonus.asr.config import TransducerLossConfig
    from sonus.asr.model import TwoPassASR
    from sonus.asr.train import model_config_from
    from sonus.audio.features import SpecAugmentConfig
    from sonus.cli import compose
    from sonus.data.asr_dataset import ASRDataset, collate, encode_transcripts, normalize_transcripts
    from sonus.data.manifest import read_manifest
    from sonus.data.sampler import DurationBucketSampler
    from sonus.text.tokenizer import train_tokenizer

    utts = read_manifest(a.manifest)
    rows = []
    vocab: dict[str, str] = {}  # the tokenizer each experiment really got, with the blank
    for exp in a.experiments:
        cfg = compose("train", [f"experiment={exp}", f"model.vocab_size={a.vocab}"])
        t = cfg.training
        norm = dict(cfg.data.normalize)
        texts = normalize_transcripts(utts, a.manifest, norm)
        kind = cfg.model.tokenizer if a.tokenizer == "experiment" else a.tokenizer
        tok = train_tokenizer(texts, kind=kind, vocab_size=a.vocab)
        vocab[exp] = f"{kind} {tok.vocab_size}"
        ds = ASRDataset(utts, encode_transcripts(utts, texts, tok, a.manifest), texts, int(cfg.data.sample_rate))
        durations = [u.duration for u in utts]
        max_duration, batch_size = a.max_duration or float(t.max_duration), a.batch_size or int(t.batch_size)
        sampler = DurationBucketSampler(durations, max_duration, batch_size, shuffle=True, seed=0)
        batches = list(sampler)
        waste = padding_waste(durations, batches)
        print(f"{exp}: batches of at most {batch_size} utterances and {max_duration:g} s: {len(batches)} batches/epoch, "
              f"padding waste {100 * waste:.1f}% of frames", flush=True)
        chosen = [collate([ds[i] for i in b]).to(dev) for b in batches[: a.steps + 1]]
        audio_s = sum(float(b.wave_lengths.sum()) for b in chosen[1:]) / int(cfg.data.sample_rate)
        sa = cfg.model.get("specaugment")
        settings = []  # (loss, precision, compiled, step function)
        for loss, precision, compiled in itertools.product(("full", "pruned"), ("fp32", "bf16"), (False, True) if a.compile else (False,)):
            torch.manual_seed(0)
            mcfg = model_config_from(cfg.model, tok.vocab_size, int(cfg.data.n_mels), int(cfg.data.sample_rate))
            mcfg = replace(mcfg, rnnt_loss=TransducerLossConfig(kind=loss))
            model = TwoPassASR(mcfg, SpecAugmentConfig(**sa) if sa else None, None).to(dev).train()
            if compiled:
                model.encoder = torch.compile(model.encoder)
            settings.append((loss, precision, compiled, make_step(model, precision == "bf16")))
        best, peak = interleaved([step for *_, step in settings], chosen, a.repeats, dev)
        for (loss, precision, compiled, _), times, gb in zip(settings, best, peak):
            wall = sum(times)
            rows.append((exp, loss, precision, "on" if compiled else "off", wall / a.steps, audio_s / wall, gb))
            print(f"  {exp} {loss} {precision} compile={'on' if compiled else 'off'}: {wall / a.steps:.3f} s/step, {audio_s / wall:.1f} audio s/s", flush=True)
        if a.breakdown:
            breakdown(exp, settings, chosen, a.repeats, dev)
        del settings

    used = ", ".join(f"{e}: {v}" for e, v in vocab.items())
    where = torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nvocabulary (with blank) {used}; {a.steps} batches per setting, fastest of {a.repeats} interleaved rounds, {where}")
    mem = " peak GB |" if cuda else ""
    print(f"| experiment | loss | precision | compile | s/step | audio s per wall s | vs full fp32 |{mem}")
    print("|---|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    for exp, loss, precision, comp, sps, tput, gb in rows:
        base = next(r[5] for r in rows if r[0] == exp and r[1] == "full" and r[2] == "fp32" and r[3] == "off")
        cell = f" {gb:.2f} |" if cuda else ""
        print(f"| {exp} | {loss} | {precision} | {comp} | {sps:.3f} | {tput:.1f} | {tput / base:.2f}x |{cell}")


if __name__ == "__main__":
    main()
