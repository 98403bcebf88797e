"""Lightning glue for the two-pass recognizer: the training step, validation, logging.

The module receives already-built parts (model, tokenizer, options); everything it
needs arrives as arguments built from the config (asteroid's System does the same).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning.pytorch as pl
import torch

from sonus.asr.decoding import Decoder, DecodingOptions
from sonus.asr.model import TwoPassASR
from sonus.data.asr_dataset import ASRBatch
from sonus.metrics.wer import error_rates
from sonus.text.tokenizer import Tokenizer, tokenizer_to_tensor
from sonus.train.callbacks import budget_clock
from sonus.train.checkpoint import load_training_state, save_training_state
from sonus.train.loggers import log_image
from sonus.train.optim import FusedClipping, adam, fused_allowed
from sonus.train.plots import plot_attention, plot_curves
from sonus.train.schedule import warmup_decay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    warmup_steps: int = 500
    decay: str = "noam"
    total_steps: int | None = None
    weight_decay: float = 0.0
    budget_seconds: float | None = None  # decay="budget": the run's time budget


@dataclass(frozen=True)
class TrainOptions:
    loss_weights: dict[str, float] = field(default_factory=lambda: {"rnnt": 1.0, "las": 1.0})
    label_smoothing: float = 0.1
    train_wer_every_n_steps: int = 50  # decode a few training utterances this often
    train_wer_max_utts: int = 8
    val_decode_max_utts: int = 400
    plot_dir: str | None = None
    normalize: dict = field(default_factory=lambda: {"lowercase": True, "remove_punctuation": True})


class ASRLightning(FusedClipping, pl.LightningModule):
    def __init__(
        self, model: TwoPassASR, tokenizer: Tokenizer, optim: OptimConfig, opts: TrainOptions, decoding: DecodingOptions
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.optim_cfg, self.opts = model, tokenizer, optim, opts
        has_las = model.las is not None and opts.loss_weights.get("las", 0.0) > 0
        self.has_las = has_las
        self.first = "rnnt" if model.predictor is not None else "ctc"  # the first pass, as metrics name it
        # without LAS only the second pass changes; every other option (max_symbols_per_frame, ...) stays
        self.decoding = decoding if has_las else replace(decoding, second_pass="none")
        self.decoder = Decoder(model, tokenizer, self.decoding)
        self.skipped: set[str] = set()  # ids of unreadable files dropped with data.skip_bad
        self.curves: dict[str, list[tuple[int, float]]] = {"train/loss_total": [], "val/loss_total": []}
        self._val_refs: list[str] = []
        self._val_first: list[str] = []
        self._val_final: list[str] = []
        self._val_losses: list[tuple[float, float, float, int]] = []
        self._val_attention: tuple | None = None
        self._seen: set[str] = set()  # ids this rank trained on this epoch (the replica check at the end of a DDP run)

    # -- losses ---------------------------------------------------------------------------
    def _losses(self, batch: ASRBatch):
        enc = self.model.encode(batch.wave, batch.wave_lengths)
        step = self.global_step if self.training else None
        out = self.model.losses(enc, batch.targets, batch.target_lengths, self.opts.label_smoothing, step=step)
        w = self.opts.loss_weights
        parts = {"rnnt": out.rnnt} if out.rnnt is not None else {}
        if self.has_las and out.las is not None:
            parts["las"] = out.las
        if out.ctc is not None:
            parts["ctc"] = out.ctc
        total = sum(w.get(k, 0.0) * v for k, v in parts.items())  # the one place losses are summed
        return total, parts, enc, out

    def _decode_texts(self, enc) -> tuple[list[str], list[str]]:
        first, final = self.decoder.decode_encoded(enc)
        return [r.best.text if r.nbest else "" for r in first], [r.best.text if r.nbest else "" for r in final]

    def training_step(self, batch: ASRBatch, batch_idx: int):
        self.skipped.update(batch.skipped)
        if not len(batch):  # every file in the batch was unreadable and skipped
            return None
        if self.model.gain is not None:
            self.model.gain.step = self.global_step
        self._seen.update(batch.ids)
        total, parts, _, out = self._losses(batch)
        bs = len(batch)
        self.log("train/loss_total", total, prog_bar=True, batch_size=bs)
        for k in ("rnnt", "las", "ctc"):
            if k in parts:
                self.log(f"train/loss_{k}", parts[k], batch_size=bs)
        for k, v in (out.rnnt_parts or {}).items():
            self.log(f"train/loss_rnnt_{k}", v, batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        if self.global_step % 10 == 0:
            self.curves["train/loss_total"].append((self.global_step, float(total.detach())))
        if self.opts.train_wer_every_n_steps and self.global_step % self.opts.train_wer_every_n_steps == 0:
            self._train_wer(batch)
        return total

    @torch.no_grad()
    def _train_wer(self, batch: ASRBatch) -> None:
        """WER on a few utterances of this batch, decoded in eval mode (no dropout/SpecAugment)."""
        n = min(len(batch), self.opts.train_wer_max_utts)
        was_training = self.model.training
        self.model.eval()
        try:
            enc = self.model.encode(batch.wave[:n], batch.wave_lengths[:n])
            first, final = self._decode_texts(enc)
        finally:
            self.model.train(was_training)
        refs = batch.texts[:n]
        r1, r2 = error_rates(refs, first), error_rates(refs, final)
        self.log(f"train/wer_{self.first}", r1.wer, batch_size=n)
        self.log(f"train/cer_{self.first}", r1.cer, batch_size=n)
        self.log("train/wer_2pass", r2.wer, batch_size=n)
        self.log("train/cer_2pass", r2.cer, batch_size=n)

    # -- validation -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_refs, self._val_first, self._val_final, self._val_losses = [], [], [], []
        self._val_attention = None

    def validation_step(self, batch: ASRBatch, batch_idx: int) -> None:
        self.skipped.update(batch.skipped)
        if not len(batch):
            return
        total, parts, enc, out = self._losses(batch)
        self._val_losses.append((float(total), float(parts.get(self.first, 0.0)), float(parts.get("las", 0.0)), len(batch)))
        if self._val_attention is None and out.las_output is not None:
            U = int(batch.target_lengths[0]) + 1
            T = int(enc.lengths[0])
            toks = batch.targets[0, : U - 1].tolist()
            labels = [self.tokenizer.decode([t]) or "·" for t in toks] + ["</s>"]
            self._val_attention = (out.las_output.attention[0, :U, :T].float().cpu().numpy(), batch.ids[0], labels)
        if len(self._val_refs) < self.opts.val_decode_max_utts:
            first, final = self._decode_texts(enc)
            self._val_refs += batch.texts
            self._val_first += first
            self._val_final += final

    def on_validation_epoch_end(self) -> None:
        if not self._val_losses:
            return
        n = sum(x[3] for x in self._val_losses)
        avg = [sum(x[i] * x[3] for x in self._val_losses) / n for i in range(3)]
        r1, r2 = error_rates(self._val_refs, self._val_first), error_rates(self._val_refs, self._val_final)
        f = self.first
        metrics = {
            "val/loss_total": avg[0], f"val/loss_{f}": avg[1], "val/loss_las": avg[2],
            f"val/wer_{f}": r1.wer, "val/wer_2pass": r2.wer, f"val/cer_{f}": r1.cer, "val/cer_2pass": r2.cer,
        }  # fmt: skip
        if not self.has_las:
            del metrics["val/loss_las"]
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k in (f"val/wer_{f}", "val/wer_2pass"), sync_dist=True)
        self.log("epoch", float(self.current_epoch))
        self.log("val_loss", avg[0], sync_dist=True)  # val/loss_total, under the name checkpoint file patterns use
        # best.ckpt follows the WER; the CER breaks ties (early on every WER is 100%).
        key = "2pass" if self.has_las else f
        self.log("val/select", metrics[f"val/wer_{key}"] + 1e-3 * metrics[f"val/cer_{key}"], sync_dist=True)
        if self.trainer.sanity_checking:
            return
        self.curves["val/loss_total"].append((self.global_step, avg[0]))
        log.info(
            "epoch %d: val loss %.3f  WER %s %.2f%%  2pass %.2f%%  CER %s %.2f%%  2pass %.2f%%",
            self.current_epoch, avg[0], f, 100 * r1.wer, 100 * r2.wer, f, 100 * r1.cer, 100 * r2.cer,
        )  # fmt: skip
        if self.opts.plot_dir and self.trainer.is_global_zero:
            if self._val_attention is not None:
                w, utt, labels = self._val_attention
                png = Path(self.opts.plot_dir) / f"attention_epoch{self.current_epoch:03d}.png"
                plot_attention(w, png, f"LAS attention, {utt}, epoch {self.current_epoch}", labels)
                log_image(self.loggers, "val/attention", png, self.global_step)
            plot_curves(self.curves, Path(self.opts.plot_dir) / "loss_curve.png")

    def on_train_epoch_start(self) -> None:
        self._seen = set()

    def on_train_end(self) -> None:
        """Under DDP, check the replicas: every rank must hold the same weights, and in the last
        epoch the ranks must have trained on different utterances. Logged by rank 0; diverged
        weights are an error."""
        world = self.trainer.world_size
        if world < 2 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
            return
        digest = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum()
        digests: list = [None] * world
        seen: list = [None] * world
        torch.distributed.all_gather_object(digests, float(digest))
        torch.distributed.all_gather_object(seen, sorted(self._seen))
        shared = set(seen[0]).intersection(*map(set, seen[1:]))
        if self.trainer.is_global_zero:
            log.info(
                "DDP: %d ranks; weight checksums %s (identical: %s); last epoch's utterances per rank %s, on more than one rank: %d",
                world, digests, len(set(digests)) == 1, [len(x) for x in seen], len(shared),
            )  # fmt: skip
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: weight checksums {digests}")

    # -- optimisation and checkpoints -----------------------------------------------------
    def configure_optimizers(self):
        c = self.optim_cfg
        opt = adam(self.model.parameters(), c.lr, c.weight_decay, fused=fused_allowed(self))
        factor = warmup_decay(c.warmup_steps, c.decay, c.total_steps, budget_seconds=c.budget_seconds, elapsed=budget_clock(self))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make every .ckpt self-contained: model config, tokenizer and text normalisation."""
        checkpoint["sonus"] = {
            "model_config": self.model.cfg.to_dict(),
            "tokenizer": tokenizer_to_tensor(self.tokenizer),
            "normalize": dict(self.opts.normalize),
        }
        save_training_state(checkpoint, self.curves)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_training_state(checkpoint, self.curves)
