"""Training samples per second of the Conformer-Transducer on feature sequences (issue 4's (b)).

    python benchmarks/features_throughput.py                          # CPU, short sequences
    python benchmarks/features_throughput.py --device cuda --frames 50 100 200 --steps 20

The model is `experiment=conformer_transducer_features` as configured (8 Conformer layers,
d_model 256, predictor 2 x 320 LSTM, joint 512, 29 labels with the blank: about 12M
parameters); a step is what training runs: SpecAugment's time masks, forward, RNN-T loss,
backward, clipping and fused Adam, under bf16 autocast (the experiment's
``precision: bf16-mixed``) and, on CUDA, with TF32 on (``training.tf32``); an fp32 row
(TF32 still on, as the experiment has it) is the reference measured in the same run.

The brief quotes 800-1000 samples/s on a laptop RTX 4090 at batch 256, without saying how
long its gesture sequences are; samples/s falls with length, so the table has a row per mean
length (``--frames``: input frames before the x4 subsampling). Each batch has B sequences of
random 37-dim features, lengths uniform in [0.75, 1.25] x the mean, and random character
targets of one label per ``--frames-per-label`` frames (a swipe of 8 letters over 100
points is 12.5). Settings are interleaved batch by batch; each batch's fastest of
``--repeats`` rounds counts.
"""

from __future__ import annotations

import argparse
import functools

import torch
from train_step import interleaved  # benchmarks/ is the script's folder


def make_batches(n: int, B: int, frames: int, D: int, frames_per_label: float, vocab: int, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(int(0.75 * frames), int(1.25 * frames) + 1, (B,), generator=g)
        x = torch.randn(B, int(lengths.max()), D, generator=g)
        x *= (torch.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
        tl = (lengths / frames_per_label).round().clamp(min=1).long()
        y = torch.randint(1, vocab, (B, int(tl.max())), generator=g)
        out.append(tuple(t.to(device) for t in (x, lengths, y, tl)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--frames", type=int, nargs="+", default=[50], help="mean input frames per sequence, one row each")
    ap.add_argument("--frames-per-label", type=float, default=12.5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting, after one warm-up step")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loss", choices=("full", "pruned"), default=None, help="default: the experiment's")
    a = ap.parse_args()

    from dataclasses import replace

    from sonus.asr.config import TransducerLossConfig
    from sonus.asr.model import TwoPassASR
    from sonus.asr.train import model_config_from
    from sonus.audio.features import SpecAugmentConfig
    from sonus.cli import compose
    from sonus.train.optim import adam

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    cfg = compose("train", ["experiment=conformer_transducer_features"])
    if cuda and cfg.training.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    vocab = 29  # 28 characters and the blank, as in the brief
    D = int(cfg.model.feat_in)
    mcfg = model_config_from(cfg.model, vocab, int(cfg.data.n_mels), int(cfg.data.sample_rate))
    if a.loss:
        mcfg = replace(mcfg, rnnt_loss=TransducerLossConfig(kind=a.loss))

    settings = []  # (name, model, optimizer, bf16)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        model = TwoPassASR(mcfg, SpecAugmentConfig(**cfg.model.specaugment), None).to(dev).train()
        settings.append((name, model, adam(model.parameters(), 1e-4), bf16))
    params = sum(p.numel() for p in settings[0][1].parameters())

    def step(model, opt, bf16, batch) -> None:
        x, lengths, y, tl = batch
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.losses(model.encode(x, lengths), y, tl)
        opt.zero_grad(set_to_none=True)
        out.rnnt.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.training.grad_clip))
        opt.step()

    rows = []
    for frames in a.frames:
        batches = make_batches(a.steps + 1, a.batch, frames, D, a.frames_per_label, vocab, dev, seed=frames)
        steps = [functools.partial(step, model, opt, bf16) for _, model, opt, bf16 in settings]
        best, peak = interleaved(steps, batches, a.repeats, dev)
        fp32 = a.steps * a.batch / sum(best[0])
        for (name, *_), times, gb in zip(settings, best, peak):
            sps = a.steps * a.batch / sum(times)
            rows.append((frames, name, sum(times) / a.steps, sps, sps / fp32, gb))
            print(f"  {frames} frames {name}: {sum(times) / a.steps:.3f} s/step, {sps:.0f} samples/s", flush=True)

    where = torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{where}; {params / 1e6:.2f}M parameters, batch {a.batch}, loss {mcfg.rnnt_loss.kind}, "
          f"{a.steps} batches per setting, fastest of {a.repeats} interleaved rounds; TF32 {'on' if cuda and cfg.training.get('tf32') else 'off'}")
    mem = " peak GB |" if cuda else ""
    print(f"| mean frames | precision | s/step | samples/s | vs fp32 |{mem}")
    print("|---|---|---|---|---|" + ("---|" if cuda else ""))
    for frames, name, sps_step, sps, ratio, gb in rows:
        cell = f" {gb:.2f} |" if cuda else ""
        print(f"| {frames} | {name} | {sps_step:.3f} | {sps:.0f} | {ratio:.2f}x |{cell}")


if __name__ == "__main__":
    main()
