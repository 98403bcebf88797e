"""Builds the Lightning Trainer every task uses: checkpoints, loggers, budget, precision."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)

from sonus.train.callbacks import (
    EMA,
    SamplerEpoch,
    SaveLast,
    TimeBudget,
    resume_loader_position,
    set_loader_epoch,
)
from sonus.train.checkpoint import AtomicCheckpointIO
from sonus.train.loggers import build_loggers


def build_trainer(cfg: Any, output_dir: Path, monitor: str, mode: str = "min", extra_callbacks: list[pl.Callback] | None = None, manual_optimization: bool = False) -> pl.Trainer:
    """cfg is the whole run config (``training``, ``wandb``, ``tensorboard`` groups).

    ``output_dir`` gets ``best.ckpt`` (by ``monitor``), ``last.ckpt``, and the
    ``training.save_top_k`` best by validation loss (the task logs it as ``val_loss``), named
    ``training.checkpoint_filename`` (e.g. ``rnnt-{epoch:02d}-{val_loss:.2f}``).
    ``training.early_stopping`` ({patience, min_delta}) stops when ``monitor`` stops improving.
    ``extra_callbacks`` (e.g. a sweep's pruning callback) are added as they are.
    """
    t = cfg.training
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=str(output_dir), filename="best", monitor=monitor, mode=mode, save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False),
        SaveLast(str(output_dir / "last.ckpt"), t.get("last_every_minutes", 5)),
        SamplerEpoch(),
    ]
    if int(t.get("save_top_k", 0)) > 0:
        callbacks.append(ModelCheckpoint(
            dirpath=str(output_dir), filename=str(t.checkpoint_filename), monitor="val_loss", mode="min",
            save_top_k=int(t.save_top_k), auto_insert_metric_name=False,
        ))  # fmt: skip
    if t.get("early_stopping"):
        es = t.early_stopping
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=int(es.get("patience", 5)), min_delta=float(es.get("min_delta", 0.0))))
    if t.get("ema_decay"):  # validate and checkpoint an exponential moving average of the weights
        callbacks.append(EMA(decay=float(t.ema_decay), update_starting_at_step=int(t.get("ema_start_step", 0))))
    if t.get("time_budget_minutes"):
        callbacks.append(TimeBudget(float(t.time_budget_minutes)))
    try:
        import rich  # noqa: F401

        callbacks.append(RichProgressBar(leave=True) if t.get("progress_bar", "rich") == "rich" else TQDMProgressBar())
    except ImportError:
        callbacks.append(TQDMProgressBar())
    if t.get("tf32", False) and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    callbacks.extend(extra_callbacks or [])
    loggers = build_loggers(cfg, output_dir)
    return pl.Trainer(
        default_root_dir=str(output_dir),
        max_epochs=int(t.num_epochs),
        max_steps=int(t.get("max_steps") or -1),
        max_time=t.get("max_time"),
        accelerator=t.get("accelerator", "auto"),
        devices=t.get("devices", 1),
        num_nodes=t.get("num_nodes", 1),
        strategy=t.get("strategy", "auto"),
        precision=t.get("precision", "32-true"),
        gradient_clip_val=None if manual_optimization else float(t.grad_clip),  # a manual step clips itself
        accumulate_grad_batches=int(t.get("accumulate_grad_batches", 1)),
        callbacks=callbacks,
        logger=loggers or False,
        log_every_n_steps=int(t.get("log_every_n_steps", 10)),
        num_sanity_val_steps=int(t.get("num_sanity_val_steps", 0)),
        limit_train_batches=t.get("limit_train_batches") or 1.0,
        limit_val_batches=t.get("limit_val_batches") or 1.0,
        val_check_interval=t.get("val_check_interval", 1.0),
        check_val_every_n_epoch=None if t.get("check_val_every_n_epoch", 1) is None else int(t.check_val_every_n_epoch),  # null: val_check_interval counts steps across epochs
        use_distributed_sampler=False,  # our duration sampler shards by rank itself
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=t.get("model_summary", True),
        deterministic=t.get("deterministic", False),
    )


class RunData(pl.LightningDataModule):
    """A run's training and validation loaders, handed to ``Trainer.fit`` as a data module.

    Lightning asks for the loaders after restoring a checkpoint and draws the first epoch's
    batches at once; asked here, the batch sampler learns which epoch that is, and a run
    resumed mid-epoch skips the batches that epoch already trained on, so a resumed run draws
    the batches an uninterrupted one would (later epochs: :class:`SamplerEpoch`).
    """

    def __init__(self, train: Any, val: Any) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> Any:
        set_loader_epoch(self.train, self.trainer)
        resume_loader_position(self.train, self.trainer)
        return self.train

    def val_dataloader(self) -> Any:
        return self.val


def seed_everything(seed: int) -> None:
    """Seed Python, torch and (through Lightning) numpy and DataLoader workers."""
    random.seed(seed)
    torch.manual_seed(seed)
    pl.seed_everything(seed, workers=True, verbose=False)


def start_run(cfg: Any) -> Path:
    """Create ``training.output_dir``, save the resolved config there, seed everything; returns the folder."""
    from omegaconf import OmegaConf

    out = Path(cfg.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    seed_everything(int(cfg.seed))
    return out


def resume_path(t: Any, output_dir: Path) -> str | None:
    """``training.ckpt_path`` if given, else ``output_dir/last.ckpt`` when it exists and ``training.resume``."""
    ckpt = t.get("ckpt_path")
    if ckpt is None and t.get("resume", True) and (output_dir / "last.ckpt").is_file():
        ckpt = str(output_dir / "last.ckpt")
        logging.getLogger(__name__).info("resuming from %s", ckpt)
    return ckpt
