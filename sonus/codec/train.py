"""`sonus train experiment=tokenizer_librispeech`: build data and the codec from the config, then fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from sonus.codec.lightning import (
    AdversarialConfig,
    CodecLightning,
    CodecOptimConfig,
    CodecTrainOptions,
)
from sonus.codec.model import CodecConfig, SpeechTokenizer
from sonus.codec.quantize import RVQConfig
from sonus.data.audio_dataset import AudioSegmentDataset, split_utterances
from sonus.data.manifest import Utterance, read_manifest
from sonus.data.sampler import EpochSampler
from sonus.train.schedule import budget_seconds
from sonus.train.trainer import RunData, build_trainer, resume_path, start_run

log = logging.getLogger(__name__)


def codec_config_from(m: DictConfig) -> CodecConfig:
    d = OmegaConf.to_container(m, resolve=True)
    d.pop("loss_weights", None)
    d.pop("adversarial", None)
    return CodecConfig(**{**d, "rvq": RVQConfig(**d["rvq"])})


def utterances_from(d: DictConfig) -> list[Utterance]:
    """The corpus of ``data``: a manifest (``data.manifest``) or a LibriSpeech folder (``data.source``),
    less the speakers of ``data.exclude_speakers`` (held out for a benchmark)."""
    if d.get("manifest"):
        utts = read_manifest(d.manifest)
    elif d.get("source"):
        from sonus.data.librimix import librispeech_utterances

        utts = librispeech_utterances(d.source)
    else:
        raise ValueError("data.source (a LibriSpeech folder) or data.manifest (a sonus manifest) must be set")
    exclude = {str(s) for s in (d.get("exclude_speakers") or [])}
    if exclude:
        unknown = exclude - {u.speaker for u in utts}
        if unknown:
            raise ValueError(f"data.exclude_speakers: no utterances of speakers {sorted(unknown)}")
        utts = [u for u in utts if u.speaker not in exclude]
        log.info("codec data: speakers %s held out, %d utterances left", sorted(exclude), len(utts))
    return utts


def train(cfg: DictConfig, callbacks: list[pl.Callback] | None = None) -> Path:
    """Train the speech tokenizer in ``cfg``; returns the output folder."""
    out = start_run(cfg)
    seed = int(cfg.seed)
    model_cfg = codec_config_from(cfg.model)
    d, t = cfg.data, cfg.training
    train_utts, val_utts = split_utterances(utterances_from(d), float(d.val_fraction), seed)
    if d.get("max_val"):
        val_utts = val_utts[: int(d.max_val)]
    sr = model_cfg.sample_rate
    train_ds = AudioSegmentDataset(train_utts, sr, round(float(d.segment_seconds) * sr), True, seed, bool(d.get("skip_bad", False)))
    val_ds = AudioSegmentDataset(val_utts, sr, round(float(d.val_segment_seconds) * sr), False, seed, bool(d.get("skip_bad", False)))
    model = SpeechTokenizer(model_cfg)
    log.info("codec: %.2fM parameters, %.1f frames/s, %.0f bit/s at %d quantizers; train %d, val %d utterances",
             sum(p.numel() for p in model.parameters()) / 1e6, model_cfg.frame_rate, model_cfg.bitrate(), model_cfg.rvq.n_q,
             len(train_ds), len(val_ds))  # fmt: skip
    adv = OmegaConf.to_container(cfg.model.get("adversarial") or {"enabled": False}, resolve=True)
    adversarial = AdversarialConfig(**{k: v for k, v in adv.items() if k != "enabled"}) if adv.pop("enabled", True) else None
    trainer = build_trainer(cfg, out, monitor="val/loss", mode="min", extra_callbacks=callbacks, manual_optimization=adversarial is not None)
    world, rank = trainer.world_size, trainer.global_rank
    sampler = EpochSampler(train_ds, world, rank, shuffle=True, seed=seed)
    nw = int(d.get("num_workers") or 0)
    train_dl = DataLoader(train_ds, int(t.batch_size), sampler=sampler, num_workers=nw, drop_last=True,
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip  (own generator: see asr.train)
    val_dl = DataLoader(val_ds, int(t.batch_size), sampler=DistributedSampler(val_ds, world, rank, shuffle=False) if world > 1 else None, num_workers=nw)
    optim = CodecOptimConfig(
        lr=float(t.lr), weight_decay=float(t.weight_decay), warmup_steps=int(t.warmup_steps), total_steps=int(t.total_steps),
        decay=t.get("lr_decay") or "cosine", budget_seconds=budget_seconds(t),
    )  # fmt: skip
    opts = CodecTrainOptions(weights=dict(cfg.model.loss_weights), plot_dir=str(out / "plots"), adversarial=adversarial, grad_clip=float(t.grad_clip))
    module = CodecLightning(model, optim, opts)
    ckpt = resume_path(t, out)
    trainer.fit(module, datamodule=RunData(train_dl, val_dl), ckpt_path=ckpt)
    return out
