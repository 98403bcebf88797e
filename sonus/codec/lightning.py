"""Lightning glue for the speech tokenizer: reconstruction losses, validation, codebook use, plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch

from sonus.codec.loss import DEFAULT_WEIGHTS, codec_losses, total_loss
from sonus.codec.model import SpeechTokenizer
from sonus.metrics.codebook import CodebookCounter
from sonus.metrics.signal import si_sdr
from sonus.train.checkpoint import load_training_state, save_training_state
from sonus.train.loggers import log_image
from sonus.train.plots import plot_curves, plot_spectrograms
from sonus.train.schedule import warmup_decay


@dataclass(frozen=True)
class CodecOptimConfig:
    """AdamW with linear warmup and cosine decay (the brief: 1e-4, weight decay 0.01)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    total_steps: int = 100_000


@dataclass(frozen=True)
class CodecTrainOptions:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    plot_dir: str | None = None


class CodecLightning(pl.LightningModule):
    def __init__(self, model: SpeechTokenizer, optim: CodecOptimConfig, opts: CodecTrainOptions) -> None:
        super().__init__()
        self.model, self.optim_cfg, self.opts = model, optim, opts
        self.curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
        self._val: list[tuple[float, float, int]] = []  # (loss sum, si_sdr sum, n)
        self._counter: CodebookCounter | None = None
        self._example: tuple | None = None

    def on_train_epoch_start(self) -> None:
        ds = getattr(self.trainer.train_dataloader, "dataset", None)
        if ds is not None and hasattr(ds, "set_epoch"):
            ds.set_epoch(self.current_epoch)

    def training_step(self, wave: torch.Tensor, batch_idx: int) -> torch.Tensor:
        out = self.model(wave)
        parts = codec_losses(out, wave, self.model.cfg.sample_rate)
        loss = total_loss(parts, self.opts.weights)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: { {k: float(v) for k, v in parts.items()} }")
        bs = wave.shape[0]
        self.log("train/loss", loss, batch_size=bs, prog_bar=True)
        for k, v in parts.items():
            self.log(f"train/{k}", v, batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        if self.global_step % 10 == 0:
            self.curves["train/loss"].append((self.global_step, float(loss.detach())))
        return loss

    def on_validation_epoch_start(self) -> None:
        cfg = self.model.cfg.rvq
        self._counter = CodebookCounter(cfg.n_q, cfg.codebook_size)
        self._val = []

    def validation_step(self, wave: torch.Tensor, batch_idx: int) -> None:
        out = self.model(wave)
        parts = codec_losses(out, wave, self.model.cfg.sample_rate)
        loss = total_loss(parts, self.opts.weights)
        sdr = si_sdr(out.wave, wave).sum() if out.wave is not None else wave.new_zeros(())
        self._val.append((float(loss) * wave.shape[0], float(sdr), wave.shape[0]))
        self._counter.update(out.quantized.codes.cpu())
        if self._example is None and out.wave is not None:
            self._example = (wave[0].float().cpu(), out.wave[0].float().cpu())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val:
            self._example = None
            return
        n = sum(k for _, _, k in self._val)
        loss = sum(v for v, _, _ in self._val) / n
        self.log("val/loss", loss, prog_bar=True)
        self.log("val_loss", loss)  # the key top-k checkpoint names use
        if self.model.cfg.head == "istft":
            self.log("val/si_sdr", sum(s for _, s, _ in self._val) / n)
        usage = self._counter.usage()
        self.log("val/codebook_used", usage.mean_used)
        self.log("val/codebook_entropy", usage.mean_entropy)
        self.log("epoch", float(self.current_epoch))
        self.curves["val/loss"].append((self.global_step, loss))
        if self.global_rank == 0 and self.opts.plot_dir:
            d = Path(self.opts.plot_dir)
            log_image(list(self.loggers), "plots/loss", plot_curves(self.curves, d / "loss.png"), self.global_step)
            if self._example is not None:
                ref, rec = self._example
                png = plot_spectrograms({"input": ref.numpy(), "reconstruction": rec.numpy()}, self.model.cfg.sample_rate, d / f"reconstruction_epoch{self.current_epoch:03d}.png")
                log_image(list(self.loggers), "plots/reconstruction", png, self.global_step)
        self._example = None

    def configure_optimizers(self):
        c = self.optim_cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_decay(c.warmup_steps, "cosine", c.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Self-contained: the codec config next to the weights (what ``Tokenizer.from_checkpoint`` reads)."""
        checkpoint["sonus"] = {"task": "codec", "config": self.model.cfg.to_dict()}
        save_training_state(checkpoint, self.curves)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_training_state(checkpoint, self.curves)
