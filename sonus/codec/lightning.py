"""Lightning glue for the speech tokenizer: reconstruction losses, validation, codebook use, plots.

With ``adversarial`` options the step is a GAN step (manual optimization, two optimizers):
from ``start_step`` on, the discriminators (:mod:`sonus.codec.discriminators`) take one LSGAN
step on the input and the detached reconstruction, then the tokenizer takes one step on its
reconstruction losses plus the adversarial and feature-matching terms. Before ``start_step``
only the tokenizer trains (a reconstruction warm-up, as DAC and Vocos do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch

from sonus.codec.discriminators import (
    DiscriminatorConfig,
    Discriminators,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from sonus.codec.loss import DEFAULT_WEIGHTS, codec_losses, total_loss
from sonus.codec.model import SpeechTokenizer
from sonus.metrics.codebook import CodebookCounter
from sonus.metrics.signal import si_sdr
from sonus.train.callbacks import budget_clock
from sonus.train.checkpoint import load_training_state, save_training_state
from sonus.train.loggers import log_image
from sonus.train.optim import adam, clip_gradients, fused_allowed
from sonus.train.plots import plot_curves, plot_spectrograms
from sonus.train.schedule import Decay, warmup_decay


@dataclass(frozen=True)
class CodecOptimConfig:
    """AdamW with linear warmup, then ``decay`` (:func:`~sonus.train.schedule.warmup_decay`, the
    schedules every task shares): cosine to ``total_steps`` by default (the brief: 1e-4, weight
    decay 0.01), or noam, exponential, constant, budget (over ``budget_seconds``)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    total_steps: int = 100_000
    decay: Decay = "cosine"
    budget_seconds: float | None = None  # decay="budget": the run's time budget


@dataclass(frozen=True)
class AdversarialConfig:
    """The GAN stage: discriminator sizes, when it starts, its optimizer (HiFi-GAN's AdamW betas)."""

    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    start_step: int = 0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.99)
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.discriminator, dict):
            object.__setattr__(self, "discriminator", DiscriminatorConfig(**self.discriminator))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.start_step < 0 or self.lr <= 0 or len(self.betas) != 2:
            raise ValueError(f"AdversarialConfig: invalid start_step={self.start_step}, lr={self.lr} or betas={self.betas}")


@dataclass(frozen=True)
class CodecTrainOptions:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    plot_dir: str | None = None
    adversarial: AdversarialConfig | None = None  # None: reconstruction losses only
    grad_clip: float = 1.0  # the tokenizer's, in the adversarial (manual) step; else the Trainer clips


class CodecLightning(pl.LightningModule):
    def __init__(self, model: SpeechTokenizer, optim: CodecOptimConfig, opts: CodecTrainOptions) -> None:
        super().__init__()
        self.model, self.optim_cfg, self.opts = model, optim, opts
        self.curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
        self._val: list[tuple[float, float, int]] = []  # (loss sum, si_sdr sum, n)
        self._counter: CodebookCounter | None = None
        self._example: tuple | None = None
        adv = opts.adversarial
        if adv is not None and model.cfg.head != "istft":
            raise ValueError("adversarial training needs a waveform: model.head must be istft")
        self.discriminator = Discriminators(adv.discriminator) if adv is not None else None
        self.automatic_optimization = adv is None

    def training_step(self, wave: torch.Tensor, batch_idx: int) -> torch.Tensor:
        out = self.model(wave)
        parts = codec_losses(out, wave, self.model.cfg.sample_rate)
        adv = self.opts.adversarial
        if adv is not None and self.global_step >= adv.start_step:
            parts |= self._adversarial_terms(wave, out.wave)
        loss = total_loss(parts, self.opts.weights)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}: { {k: float(v) for k, v in parts.items()} }")
        if adv is not None:
            self._generator_step(loss)
        bs = wave.shape[0]
        self.log("train/loss", loss, batch_size=bs, prog_bar=True)
        for k, v in parts.items():
            self.log(f"train/{k}", v, batch_size=bs)
        opt = self.optimizers()
        self.log("lr", (opt[0] if isinstance(opt, list) else opt).param_groups[0]["lr"], batch_size=bs)
        if self.global_step % 10 == 0:
            self.curves["train/loss"].append((self.global_step, float(loss.detach())))
        return loss

    def _adversarial_terms(self, wave: torch.Tensor, rec: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator step, then the tokenizer's adversarial and feature-matching losses."""
        _, opt_d = self.optimizers()
        with torch.autocast(wave.device.type, enabled=False):
            real, _ = self.discriminator(wave)
            fake, _ = self.discriminator(rec.detach())
            loss_d = discriminator_loss(real, fake)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.opts.adversarial.grad_clip)
            opt_d.optimizer.step()  # the raw optimizer: global_step counts tokenizer steps only
            self.discriminator.requires_grad_(False)
            with torch.no_grad():
                _, feats_real = self.discriminator(wave)
            fake, feats_fake = self.discriminator(rec)
            self.discriminator.requires_grad_(True)
        self.log("train/discriminator", loss_d.detach(), batch_size=wave.shape[0])
        return {"adversarial": generator_loss(fake), "feature_matching": feature_matching_loss(feats_real, feats_fake)}

    def _generator_step(self, loss: torch.Tensor) -> None:
        opt_g = self.optimizers()[0]
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip_gradients(self, opt_g, self.opts.grad_clip)
        opt_g.step()
        sched = self.lr_schedulers()
        (sched[0] if isinstance(sched, list) else sched).step()

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
        opt = adam(self.model.parameters(), c.lr, c.weight_decay, decoupled=True, fused=fused_allowed(self))
        factor = warmup_decay(c.warmup_steps, c.decay, c.total_steps, budget_seconds=c.budget_seconds, elapsed=budget_clock(self))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        adv = self.opts.adversarial
        if adv is None:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        opt_d = adam(self.discriminator.parameters(), adv.lr, c.weight_decay, decoupled=True, betas=tuple(adv.betas), fused=fused_allowed(self))
        return [opt, opt_d], [{"scheduler": sched, "interval": "step"}]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Self-contained: the codec config next to the weights (what ``Tokenizer.from_checkpoint`` reads)."""
        checkpoint["sonus"] = {"task": "codec", "config": self.model.cfg.to_dict()}
        save_training_state(checkpoint, self.curves)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_training_state(checkpoint, self.curves)
