"""Lightning glue for separation: PIT training step, validation with SI-SDRi per variant, plots.

The module receives an already-built model and options (asteroid's System does the same);
datasets are built in :mod:`sonus.separation.train`. Losses run in fp32 even under
mixed precision (:mod:`sonus.metrics.signal`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from sonus.data.separation import SeparationBatch
from sonus.metrics.signal import si_sdr
from sonus.separation.loss import Metric, pit, reorder
from sonus.separation.models import model_spec
from sonus.train.callbacks import budget_clock
from sonus.train.checkpoint import load_training_state, save_training_state
from sonus.train.loggers import log_image
from sonus.train.optim import FusedClipping, adam, fused_allowed
from sonus.train.plots import plot_curves, plot_spectrograms
from sonus.train.schedule import warmup_decay


@dataclass(frozen=True)
class SepOptimConfig:
    """AdamW with optional linear warmup, then ``decay``: ``plateau`` (ReduceLROnPlateau on the
    validation loss), or one of the step schedules every task shares
    (:func:`~sonus.train.schedule.warmup_decay`): ``noam``, ``cosine`` (to ``total_steps``),
    ``exponential``, ``constant``, or ``budget`` (linear in wall-clock time to 5% at the end of
    ``training.time_budget_minutes``)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    decay: Literal["plateau", "noam", "cosine", "exponential", "constant", "budget"] = "plateau"
    budget_seconds: float | None = None  # decay="budget": the run's time budget
    total_steps: int | None = None  # decay="cosine": optimizer steps of the whole run

    def __post_init__(self) -> None:
        if self.decay not in ("plateau", "noam", "cosine", "exponential", "constant", "budget"):
            raise ValueError(f"training.lr_decay must be plateau, noam, cosine, exponential, constant or budget, got {self.decay!r}")
        if self.decay == "budget" and not self.budget_seconds:
            raise ValueError("training.lr_decay=budget decays over the time budget: set training.time_budget_minutes")
        if self.decay == "cosine" and not self.total_steps:
            raise ValueError("training.lr_decay=cosine decays to the run's last step: total_steps is needed")


@dataclass(frozen=True)
class SepTrainOptions:
    loss: Metric = "si_sdr"  # negative PIT SI-SDR (or SNR) is the loss
    sample_rate: int = 8000
    plot_dir: str | None = None
    compile: bool = False  # torch.compile the model's training forward (the state dict keeps plain names)
    train_samples: int | None = None  # compile: training batches are zero-padded to this many samples (one static graph)
    extra: dict[str, Any] = field(default_factory=dict)  # stored in checkpoints (e.g. the data config)


class SeparationLightning(FusedClipping, pl.LightningModule):
    def __init__(self, model: nn.Module, optim: SepOptimConfig, opts: SepTrainOptions) -> None:
        super().__init__()
        self.model, self.optim_cfg, self.opts = model, optim, opts
        # Training steps only: validation and inference lengths vary, and eager costs them little.
        # A plain attribute, not a submodule: the state dict holds the weights once, as model.*
        # (registered, they were saved a second time, as _forward.* or _forward._orig_mod.*).
        # With fixed crops one static graph serves every step; without (whole mixtures), lengths
        # vary and torch.compile's automatic dynamic shapes compile a second, dynamic graph.
        dynamic = False if opts.train_samples else None
        self.__dict__["_train_forward"] = torch.compile(model, dynamic=dynamic) if opts.compile else model
        self.curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
        self._val: dict[str, list[tuple[float, float, int]]] = defaultdict(list)  # variant -> (si_sdr, si_sdri, n)
        self._val_example: tuple | None = None

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.model(mix)

    def _train_estimates(self, mix: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, C, T) through the compiled model when ``opts.compile``. A batch shorter
        than ``opts.train_samples`` (all its crops from short utterances) is zero-padded to it and
        the estimates cut back, so the one graph compiled for the crop length serves every step
        (a new length would recompile, about a minute on a CPU); the loss masks by ``lengths``."""
        n, full = mix.shape[-1], self.opts.train_samples
        if not self.opts.compile or full is None or n >= full:
            return self._train_forward(mix)
        return self._train_forward(torch.nn.functional.pad(mix, (0, full - n)))[..., :n]

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: SeparationBatch, batch_idx: int) -> torch.Tensor:
        est = self._train_estimates(batch.mix)
        res = pit(est, batch.sources, self.opts.loss, batch.lengths)
        loss = res.loss.mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step} (batch {batch.ids[:4]}...)")
        bs = len(batch)
        self.log("train/loss", loss, batch_size=bs, prog_bar=True)
        self.log("train/" + self.opts.loss, res.metric.mean(), batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        if self.global_step % 10 == 0:
            self.curves["train/loss"].append((self.global_step, float(loss.detach())))
        return loss

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: SeparationBatch, batch_idx: int) -> None:
        est = self(batch.mix)
        res = pit(est, batch.sources, self.opts.loss, batch.lengths)
        aligned = reorder(est, res.perm)
        sisdr = si_sdr(aligned, batch.sources, batch.lengths).mean(-1)  # (B,)
        base = si_sdr(batch.mix.unsqueeze(1).expand_as(batch.sources), batch.sources, batch.lengths).mean(-1)
        for i, v in enumerate(batch.variants):
            self._val[v or "all"].append((float(sisdr[i]), float(sisdr[i] - base[i]), 1))
        self._val["_loss"].append((float(res.loss.sum()), 0.0, len(batch)))
        if self._val_example is None:
            n = int(batch.lengths[0])
            self._val_example = (batch.ids[0], batch.mix[0, :n].float().cpu(), aligned[0, :, :n].float().cpu(), batch.sources[0, :, :n].float().cpu())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val.clear()
            self._val_example = None
            return
        stats = self._gather(self._val)
        self._val.clear()
        loss_sum, _, n = stats.pop("_loss", (0.0, 0.0, 0))
        if n == 0:
            return
        scores = [(s, i, k) for s, i, k in stats.values()]
        total = sum(k for _, _, k in scores)
        val_sisdr = sum(s for s, _, _ in scores) / total
        val_sisdri = sum(i for _, i, _ in scores) / total
        self.log("val/loss", loss_sum / n, sync_dist=False)
        self.log("val_loss", loss_sum / n, sync_dist=False)  # the key top-k checkpoint names use
        self.log("val/si_sdr", val_sisdr, prog_bar=True)
        self.log("val/si_sdri", val_sisdri, prog_bar=True)
        self.log("epoch", float(self.current_epoch))
        if len(stats) > 1 or "all" not in stats:
            for variant, (s, i, k) in sorted(stats.items()):
                self.log(f"val/si_sdri_{variant}", i / k)
        self.curves["val/loss"].append((self.global_step, loss_sum / n))
        if self.global_rank == 0:
            self._plots()
        self._val_example = None

    def _gather(self, parts: dict[str, list[tuple[float, float, int]]]) -> dict[str, tuple[float, float, int]]:
        """Sum each variant's (si_sdr, si_sdri, count) over batches, and over ranks under DDP."""
        local = {k: tuple(map(sum, zip(*v))) for k, v in parts.items()}
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return local
        everyone: list[dict] = [None] * self.trainer.world_size  # type: ignore[list-item]
        torch.distributed.all_gather_object(everyone, local)
        out: dict[str, list[float]] = {}
        for d in everyone:
            for k, v in d.items():
                out[k] = [a + b for a, b in zip(out.get(k, [0.0, 0.0, 0]), v)]
        return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]

    def _plots(self) -> None:
        if not self.opts.plot_dir:
            return
        d = Path(self.opts.plot_dir)
        step = self.global_step
        paths = [plot_curves(self.curves, d / "loss.png", title="negative SI-SDR (dB)")]
        if self._val_example is not None:
            utt, mix, est, ref = self._val_example
            rows = {"mixture": mix.numpy()}
            for c in range(est.shape[0]):
                rows[f"estimate {c + 1}"] = est[c].numpy()
                rows[f"reference {c + 1}"] = ref[c].numpy()
            paths.append(plot_spectrograms(rows, self.opts.sample_rate, d / f"separation_epoch{self.current_epoch:03d}.png", title=f"{utt}, epoch {self.current_epoch}"))
        loggers = list(self.loggers)
        log_image(loggers, "plots/loss", paths[0], step)
        if len(paths) > 1:
            log_image(loggers, "plots/separation", paths[1], step)

    # -- optimisation, checkpoints --------------------------------------------------------------
    def configure_optimizers(self):
        c = self.optim_cfg
        opt = adam(self.model.parameters(), c.lr, c.weight_decay, decoupled=True, fused=fused_allowed(self))
        if c.decay != "plateau":
            factor = warmup_decay(c.warmup_steps, c.decay, c.total_steps, budget_seconds=c.budget_seconds, elapsed=budget_clock(self))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}}
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=c.plateau_factor, patience=c.plateau_patience)
        scheds = [{"scheduler": plateau, "monitor": "val/loss", "interval": "epoch", "strict": False}]
        if c.warmup_steps > 0:
            warm = torch.optim.lr_scheduler.LambdaLR(opt, warmup_decay(c.warmup_steps, "constant"))
            scheds.append({"scheduler": warm, "interval": "step"})
        return [opt], scheds

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make every .ckpt self-contained: which model, its config, the sample rate, the data config."""
        name, params = model_spec(self.model)
        checkpoint["sonus"] = {"task": "separation", "model": name, "params": params, "sample_rate": self.opts.sample_rate, **self.opts.extra}
        save_training_state(checkpoint, self.curves)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        load_training_state(checkpoint, self.curves)
