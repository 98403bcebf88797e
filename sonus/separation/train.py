"""`sonus train experiment=sep_*`: build data and model from the config, then fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from sonus.data.sampler import EpochSampler
from sonus.data.separation import (
    Curriculum,
    CurriculumDataset,
    collate_separation,
    crop_samples,
)
from sonus.separation.config import build_dataset
from sonus.separation.lightning import (
    SeparationLightning,
    SepOptimConfig,
    SepTrainOptions,
)
from sonus.separation.models import build_model
from sonus.train.schedule import budget_seconds, optimizer_steps
from sonus.train.trainer import RunData, build_trainer, resume_path, start_run

log = logging.getLogger(__name__)


def curriculum_from(spec) -> Curriculum:
    """``[[first_epoch, [variants...]], ...]`` -> sorted tuples; validated (epochs >= 0, non-empty stages)."""
    if not spec:
        return ()
    stages = []
    for i, stage in enumerate(spec):
        if len(stage) != 2 or int(stage[0]) < 0 or not stage[1]:
            raise ValueError(f"data.curriculum[{i}] must be [first_epoch >= 0, [variants...]], got {list(stage)}")
        stages.append((int(stage[0]), tuple(str(v) for v in stage[1])))
    return tuple(sorted(stages))


def train(cfg: DictConfig, callbacks: list[pl.Callback] | None = None) -> Path:
    """Train the separation experiment in ``cfg``; returns the output folder (best.ckpt, last.ckpt, ...)."""
    out = start_run(cfg)
    seed = int(cfg.seed)
    d = OmegaConf.to_container(cfg.data, resolve=True)
    t = cfg.training
    train_ds = build_dataset(d, "train", seed)
    curriculum = curriculum_from(d.get("curriculum"))
    if curriculum:
        train_ds = CurriculumDataset(train_ds, curriculum)
    val_ds = build_dataset(d, "val", seed)
    model = build_model(cfg.model.name, OmegaConf.to_container(cfg.model.get("params") or {}, resolve=True))
    log.info("%s: %.2fM parameters; train %d, val %d mixtures", cfg.model.name, sum(p.numel() for p in model.parameters()) / 1e6, len(train_ds), len(val_ds))

    trainer = build_trainer(cfg, out, monitor="val/si_sdr", mode="max", extra_callbacks=callbacks)
    world, rank = trainer.world_size, trainer.global_rank
    train_sampler = EpochSampler(train_ds, world, rank, shuffle=True, seed=seed)
    val_sampler = DistributedSampler(val_ds, world, rank, shuffle=False) if world > 1 else None
    nw = int(d.get("num_workers") or 0)
    # Not persistent: workers copy the dataset when an epoch starts, so set_epoch (new dynamic
    # mixtures, MM-IPC draws) and curriculum stages reach them.
    train_dl = DataLoader(train_ds, int(t.batch_size), sampler=train_sampler, collate_fn=collate_separation, num_workers=nw,
                          drop_last=True, generator=torch.Generator().manual_seed(seed))  # fmt: skip  (own generator: see asr.train)
    val_dl = DataLoader(val_ds, int(t.get("val_batch_size", 1)), sampler=val_sampler, collate_fn=collate_separation, num_workers=nw)
    optim = SepOptimConfig(
        lr=float(t.lr), weight_decay=float(t.weight_decay), warmup_steps=int(t.get("warmup_steps", 0)),
        plateau_factor=float(t.get("plateau_factor", 0.5)), plateau_patience=int(t.get("plateau_patience", 2)),
        decay=t.get("lr_decay") or "plateau", budget_seconds=budget_seconds(t),
        total_steps=optimizer_steps(t, len(train_dl)),
    )  # fmt: skip
    opts = SepTrainOptions(
        loss=t.get("loss", "si_sdr"), sample_rate=int(d.get("sample_rate", 8000)), plot_dir=str(out / "plots"),
        compile=bool(t.get("compile", False)), train_samples=crop_samples(d.get("segment_seconds") or None, int(d.get("sample_rate", 8000))), extra={"data": d},
    )  # fmt: skip
    module = SeparationLightning(model, optim, opts)
    ckpt = resume_path(t, out)
    trainer.fit(module, datamodule=RunData(train_dl, val_dl), ckpt_path=ckpt)
    return out
