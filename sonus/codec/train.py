"""`sonus train experiment=tokenizer_librispeech`: build data and the codec from the config, then fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from sonus.codec.lightning import CodecLightning, CodecOptimConfig, CodecTrainOptions
from sonus.codec.model import CodecConfig, SpeechTokenizer
from sonus.codec.quantize import RVQConfig
from sonus.data.audio_dataset import AudioSegmentDataset, split_utterances
from sonus.data.manifest import Utterance, read_manifest
from sonus.train.trainer import build_trainer, resume_path, start_run

log = logging.getLogger(__name__)


def codec_config_from(m: DictConfig) -> CodecConfig:
    d = OmegaConf.to_container(m, resolve=True)
    d.pop("loss_weights", None)
    return CodecConfig(**{**d, "rvq": RVQConfig(**d["rvq"])})


def utterances_from(d: DictConfig) -> list[Utterance]:
    """The corpus of ``data``: a manifest (``data.manifest``) or a LibriSpeech folder (``data.source``)."""
    if d.get("manifest"):
        return read_manifest(d.manifest)
    if d.get("source"):
        from sonus.data.librimix import librispeech_utterances

        return librispeech_utterances(d.source)
    raise ValueError("data.source (a LibriSpeech folder) or data.manifest (a sonus manifest) must be set")


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
    trainer = build_trainer(cfg, out, monitor="val/loss", mode="min", extra_callbacks=callbacks)
    world, rank = trainer.world_size, trainer.global_rank
    sampler = DistributedSampler(train_ds, world, rank, shuffle=True, seed=seed) if world > 1 else None
    nw = int(d.get("num_workers") or 0)
    train_dl = DataLoader(train_ds, int(t.batch_size), shuffle=sampler is None, sampler=sampler, num_workers=nw, drop_last=True)
    val_dl = DataLoader(val_ds, int(t.batch_size), sampler=DistributedSampler(val_ds, world, rank, shuffle=False) if world > 1 else None, num_workers=nw)
    optim = CodecOptimConfig(lr=float(t.lr), weight_decay=float(t.weight_decay), warmup_steps=int(t.warmup_steps), total_steps=int(t.total_steps))
    module = CodecLightning(model, optim, CodecTrainOptions(weights=dict(cfg.model.loss_weights), plot_dir=str(out / "plots")))
    ckpt = resume_path(t, out)
    trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt)
    return out
