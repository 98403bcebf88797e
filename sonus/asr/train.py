"""`sonus train`: build data, tokenizer and model from the config, then fit."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from sonus.asr.config import (
    ASRModelConfig,
    EncoderConfig,
    JoinerConfig,
    LASConfig,
    PredictorConfig,
    TransducerLossConfig,
)
from sonus.asr.decoding import DecodingOptions
from sonus.asr.lightning import ASRLightning, OptimConfig, TrainOptions
from sonus.asr.model import ASRCheckpoint, TwoPassASR, load_checkpoint
from sonus.audio.augment import NoiseConfig, NoiseMixer
from sonus.audio.features import GainAugmentConfig, SpecAugmentConfig
from sonus.data.asr_dataset import (
    ASRDataset,
    collate,
    encode_transcripts,
    normalize_transcripts,
)
from sonus.data.manifest import read_manifest
from sonus.data.sampler import DurationBucketSampler
from sonus.nn.conformer import ConformerConfig, chunking_from_att_context
from sonus.text.tokenizer import (
    Tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from sonus.train.schedule import budget_seconds, optimizer_steps
from sonus.train.trainer import RunData, build_trainer, resume_path, start_run

log = logging.getLogger(__name__)


def model_config_from(m: DictConfig, vocab_size: int, n_mels: int, sample_rate: int) -> ASRModelConfig:
    """Map the flat config keys of ``configs/model/*.yaml`` onto the model dataclasses."""
    las, pruned = m.get("las", {}), m.get("pruned", {})
    return ASRModelConfig(
        vocab_size=vocab_size,
        n_mels=n_mels,
        sample_rate=sample_rate,
        feat_in=None if m.get("feat_in") is None else int(m.feat_in),
        encoder=EncoderConfig(
            m.encoder_hidden, m.encoder_layers, m.reduction, m.reduction_type, m.dropout, kind=m.get("encoder", "lstm"),
            conformer=conformer_config_from(m),
        ),
        predictor=PredictorConfig(m.pred_type, m.pred_hidden, m.pred_layers, m.pred_embed, m.dropout),
        joiner=JoinerConfig(m.joint_hidden),
        las=LASConfig(
            enabled=bool(las.get("enabled", True)) and float(m.loss_weights.las) > 0,
            enc2_hidden=las.enc2_hidden,
            dec_hidden=las.dec_hidden,
            embedding_dim=las.embedding_dim,
            attention=las.attention,
            input_feeding=bool(las.get("input_feeding", True)),
            dropout=m.dropout,
            train_fraction=float(las.get("train_fraction", 1.0)),
        ),
        ctc_head=float(m.loss_weights.get("ctc", 0.0)) > 0,
        transducer=float(m.loss_weights.get("rnnt", 1.0)) > 0,
        rnnt_loss=TransducerLossConfig(
            kind=m.get("loss", "full"),
            prune_range=int(pruned.get("range", 5)),
            simple_scale=float(pruned.get("simple_scale", 0.5)),
            warmup_steps=int(pruned.get("warmup_steps", 1000)),
            fastemit_lambda=float(m.get("fastemit_lambda", 0.0)),
        ),
    )


def conformer_config_from(m: DictConfig) -> ConformerConfig:
    """``model.conformer``; where NeMo's ``att_context_size: [left, right]`` is given, it sets
    ``chunk_size`` and ``left_chunks`` (:func:`~sonus.nn.conformer.chunking_from_att_context`)."""
    c = {"dropout": m.dropout, **OmegaConf.to_container(m.get("conformer", {}), resolve=True)}
    ctx = c.pop("att_context_size", None)
    if ctx is not None:
        if len(ctx) != 2:
            raise ValueError(f"model.conformer.att_context_size={ctx}: give [left, right] in encoder frames")
        c["chunk_size"], c["left_chunks"] = chunking_from_att_context(int(ctx[0]), int(ctx[1]))
    return ConformerConfig(**c)


def decoding_options_from(d: DictConfig, default_second_pass: str = "rescore") -> DecodingOptions:
    return DecodingOptions(
        strategy=d.strategy,
        beam_size=int(d.get("beam_size_rnnt") or d.beam_size),
        max_symbols_per_frame=int(d.get("max_symbols_per_frame", DecodingOptions.max_symbols_per_frame)),
        second_pass=d.get("second_pass") or default_second_pass,
        las_weight=float(d.las_weight),
        las_beam_size=int(d.beam_size_las),
        las_max_len_ratio=float(d.get("las_max_len_ratio", DecodingOptions.las_max_len_ratio)),
        length_bonus=float(d.get("length_bonus", 0.0)),
        lm_weight=float((d.get("lm") or {}).get("weight", 0.0)),
    )


def _init_checkpoint(path: str) -> ASRCheckpoint:
    """The model and tokenizer of ``model.init_checkpoint``; every failure names the file."""
    try:
        return load_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"model.init_checkpoint: checkpoint not found: {path}") from None
    except Exception as e:  # a readable file that is no sonus ASR checkpoint fails in several ways
        raise RuntimeError(f"model.init_checkpoint={path}: not a usable sonus ASR checkpoint ({type(e).__name__}: {e})") from e


def _tokenizer(cfg: DictConfig, texts: list[str], out: Path, reuse: Tokenizer | None = None) -> Tokenizer:
    """``reuse`` (the init checkpoint's), else the tokenizer of the run being resumed, else a new one
    trained on ``texts``; saved in ``out`` in every case."""
    kind = cfg.model.tokenizer if reuse is None else reuse.kind
    path = out / ("tokenizer.chars" if kind == "char" else "tokenizer.model")
    if reuse is not None:
        save_tokenizer(reuse, path)
        return reuse
    if path.is_file():  # resuming: the ids must not change under the checkpoint
        log.info("using the experiment's tokenizer %s", path)
        return load_tokenizer(path)
    tok = train_tokenizer(texts, kind=kind, vocab_size=int(cfg.model.vocab_size))
    save_tokenizer(tok, path)
    return tok


@torch.no_grad()
def _fit_cmvn(model: TwoPassASR, ds: ASRDataset, n: int = 200) -> None:
    items = [ds[i] for i in range(0, len(ds), max(1, len(ds) // n))][:n]
    batch = collate(items)
    was_training = model.training
    model.eval()  # the statistics of the features themselves, not of augmented ones (gain, VTLP)
    feats, lengths = model.raw_features(batch.wave, batch.wave_lengths)
    model.train(was_training)
    model.cmvn.fit(feats, lengths, min_std=1.0 if model.frontend is not None else 1e-3)


def train(cfg: DictConfig, callbacks: list[pl.Callback] | None = None) -> Path:
    """Train the experiment in ``cfg``; returns the output folder (best.ckpt, last.ckpt, ...)."""
    out = start_run(cfg)
    d = cfg.data
    norm = dict(d.normalize)
    train_utts = read_manifest(d.train_manifest)
    dev_utts = read_manifest(d.dev_manifest)
    if d.get("max_train_utterances"):
        train_utts = train_utts[: int(d.max_train_utterances)]
    train_texts = normalize_transcripts(train_utts, d.train_manifest, norm)
    dev_texts = normalize_transcripts(dev_utts, d.dev_manifest, norm)
    init = _init_checkpoint(cfg.model.init_checkpoint) if cfg.model.get("init_checkpoint") else None
    tok = _tokenizer(cfg, train_texts, out, reuse=init.tokenizer if init else None)
    speed = d.get("speed_perturb")
    feat_in = init.model.cfg.feat_in if init else cfg.model.get("feat_in")
    for name, utts in (("train", train_utts), ("dev", dev_utts)):
        n_feat = sum(u.feature_filepath is not None for u in utts)
        if n_feat not in (0, len(utts)) or (n_feat > 0) != (feat_in is not None):
            raise ValueError(
                f"data.{name}_manifest: {n_feat} of {len(utts)} records are feature sequences and model.feat_in={feat_in}; "
                "feature sequences (every record) need model.feat_in = D, audio needs model.feat_in=null"
            )
    if feat_in is not None and (speed or d.get("noise")):
        raise ValueError("data.speed_perturb and data.noise change audio; they do not apply to feature sequences (set them to null)")
    noise = None
    if d.get("noise"):
        n = d.noise
        noise = NoiseMixer(NoiseConfig(str(n.dir), float(n.get("prob", 0.5)), tuple(n.get("snr_db", (0.0, 20.0)))), int(d.sample_rate))
        log.info("background noise: %d files from %s, p=%.2f, SNR %s dB", len(noise.files), n.dir, noise.cfg.prob, noise.cfg.snr_db)
    train_ds = ASRDataset(train_utts, encode_transcripts(train_utts, train_texts, tok, d.train_manifest), train_texts, d.sample_rate, d.skip_bad, speed, feat_in, noise)
    dev_ds = ASRDataset(dev_utts, encode_transcripts(dev_utts, dev_texts, tok, d.dev_manifest), dev_texts, d.sample_rate, d.skip_bad, feat_dim=feat_in)
    log.info("train: %d utterances (%.2f h); dev: %d; vocabulary %d", len(train_utts), sum(u.duration for u in train_utts) / 3600, len(dev_utts), tok.vocab_size)

    model_cfg = model_config_from(cfg.model, tok.vocab_size, int(d.n_mels), int(d.sample_rate))
    if init is not None:  # its architecture, so that its weights fit; how to train (RNN-T loss, LAS share) stays the experiment's
        asked, c = model_cfg, init.model.cfg
        model_cfg = replace(c, rnnt_loss=asked.rnnt_loss, las=replace(c.las, train_fraction=asked.las.train_fraction))
        replaced = sorted(k for k, v in model_cfg.to_dict().items() if asked.to_dict()[k] != v)
        log.info("starting from model.init_checkpoint=%s; model sizes it overrides: %s", cfg.model.init_checkpoint, replaced or "none")
        if model_cfg.sample_rate != int(d.sample_rate):
            raise ValueError(f"model.init_checkpoint was trained at {model_cfg.sample_rate} Hz but data.sample_rate={d.sample_rate}")
    sa, gain = cfg.model.get("specaugment"), cfg.model.get("gain_augment")
    model = TwoPassASR(
        model_cfg, SpecAugmentConfig(**sa) if sa else None, GainAugmentConfig(**gain) if gain else None, float(cfg.model.get("vtlp") or 0.0)
    )
    if init is not None:  # only the pruned loss' projections can differ: new if the checkpoint was trained with the full loss
        missing, unexpected = model.load_state_dict(init.model.state_dict(), strict=False)
        other = [k for k in missing + unexpected if not k.startswith(("simple_am.", "simple_lm."))]
        if other:
            raise RuntimeError(f"model.init_checkpoint={cfg.model.init_checkpoint}: its weights do not fit its own config: {other[:5]}")
    # Also after init_checkpoint: its CMVN stats describe its own corpus; refitted, the new corpus'
    # features reach the encoder with the zero mean and unit variance it was trained on.
    _fit_cmvn(model, ASRDataset(train_utts, train_ds.tokens, train_texts, d.sample_rate, d.skip_bad, feat_dim=feat_in))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters", n_params / 1e6)

    t = cfg.training
    trainer = build_trainer(cfg, out, monitor="val/select", extra_callbacks=callbacks)  # val/wer_2pass (or _rnnt), ties broken by CER
    rank, world = trainer.global_rank, trainer.world_size
    train_sampler = DurationBucketSampler(
        [u.duration for u in train_utts], float(t.max_duration), int(t.batch_size), num_buckets=int(t.get("num_buckets", 10)),
        shuffle=True, seed=int(cfg.seed), num_replicas=world, rank=rank, sorted_epochs=float(t.get("sorted_epochs", 0)),
    )  # fmt: skip
    dev_sampler = DurationBucketSampler(
        [u.duration for u in dev_utts], float(t.max_duration), int(t.batch_size), shuffle=False, num_replicas=world, rank=rank
    )
    nw = int(d.num_workers)
    # Its own generator: a loader iterator draws its workers' seed, from the global stream otherwise, which
    # would shift a run resumed mid-epoch (whose iterator starts after the checkpoint) off an uninterrupted one.
    train_dl = DataLoader(train_ds, batch_sampler=train_sampler, collate_fn=collate, num_workers=nw, persistent_workers=nw > 0,
                          generator=torch.Generator().manual_seed(int(cfg.seed)))  # fmt: skip
    dev_dl = DataLoader(dev_ds, batch_sampler=dev_sampler, collate_fn=collate, num_workers=nw, persistent_workers=nw > 0)
    optim = OptimConfig(
        lr=float(t.lr), warmup_steps=int(t.warmup_steps), decay=t.lr_decay, total_steps=optimizer_steps(t, len(train_sampler)),
        budget_seconds=budget_seconds(t),
    )  # fmt: skip
    opts = TrainOptions(
        loss_weights=dict(cfg.model.loss_weights),
        label_smoothing=float(cfg.model.label_smoothing),
        train_wer_every_n_steps=int(t.train_wer_every_n_steps),
        train_wer_max_utts=int(t.train_wer_max_utts),
        val_decode_max_utts=int(t.val_decode_max_utts),
        plot_dir=str(out / "plots"),
        normalize=norm,
    )
    module = ASRLightning(model, tok, optim, opts, decoding_options_from(cfg.decoding))
    ckpt = resume_path(t, out)
    trainer.fit(module, datamodule=RunData(train_dl, dev_dl), ckpt_path=ckpt)
    if module.skipped:
        log.warning("%d unreadable utterances were skipped: %s", len(module.skipped), sorted(module.skipped)[:10])
    return out
