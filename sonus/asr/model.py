"""The two-pass recognizer: shared streaming encoder, RNN-T first pass, LAS second pass.

Gradient routing (Sainath et al. 2019): the encoder receives both losses; the
predictor and joiner only the RNN-T loss; the LAS listener and decoder only the LAS loss.
That follows from the graph itself: each head sees only its own loss.

Shapes: B batch, S samples, T encoder frames, U labels, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sonus.asr.config import ASRModelConfig, TransducerLossConfig
from sonus.asr.encoder import build_encoder
from sonus.asr.joiner import Joiner
from sonus.asr.las import LAS, LASOutput, las_loss
from sonus.asr.loss import (
    gather_pruned,
    prune_ranges,
    pruned_rnnt_loss,
    rnnt_loss,
    rnnt_loss_simple,
)
from sonus.asr.predictor import Predictor
from sonus.audio.features import (
    FeatureConfig,
    GainAugment,
    GainAugmentConfig,
    GlobalCMVN,
    LogMel,
    SpecAugment,
    SpecAugmentConfig,
)
from sonus.text.tokenizer import (
    BLANK,
    Tokenizer,
    tokenizer_from_tensor,
    tokenizer_to_tensor,
)
from sonus.train.checkpoint import read_checkpoint


@dataclass
class EncoderOutput:
    enc: torch.Tensor  # (B, T, H)
    lengths: torch.Tensor  # (B,)


@dataclass
class ASRLosses:
    rnnt: torch.Tensor | None  # the transducer objective (pruned: the scaled simple + pruned losses); None in a CTC model
    las: torch.Tensor | None
    las_output: LASOutput | None
    ctc: torch.Tensor | None = None
    rnnt_parts: dict[str, torch.Tensor] | None = None  # pruned: {"simple": ..., "pruned": ...}, unscaled


class TwoPassASR(nn.Module):
    def __init__(
        self,
        cfg: ASRModelConfig,
        specaug: SpecAugmentConfig | None = SpecAugmentConfig(),
        gain: GainAugmentConfig | None = GainAugmentConfig(),
        vtlp: float = 0.0,
    ) -> None:
        """``specaug``, ``gain`` and ``vtlp`` (the range of VTLP's warp factor, see
        :class:`FeatureConfig`) are training-time augmentations (no weights); None or 0 turns them off."""
        super().__init__()
        self.cfg = cfg
        audio = cfg.feat_in is None  # else the inputs are feature sequences (B, T, feat_in)
        self.gain = GainAugment(gain) if gain is not None and audio else None
        self.frontend = LogMel(FeatureConfig(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels, vtlp=vtlp)) if audio else None
        self.in_dim = cfg.n_mels if audio else cfg.feat_in
        self.cmvn = GlobalCMVN(self.in_dim)
        self.specaug = SpecAugment(specaug) if specaug is not None else None
        if not (cfg.transducer or cfg.ctc_head):
            raise ValueError("the model needs a first pass: model.loss_weights.rnnt > 0 (RNN-T) or model.loss_weights.ctc > 0 (CTC)")
        self.encoder = build_encoder(self.in_dim, cfg.encoder)
        self.predictor = self.joiner = None
        if cfg.transducer:
            self.predictor = Predictor(cfg.vocab_size, cfg.predictor)
            self.joiner = Joiner(self.encoder.out_dim, self.predictor.out_dim, cfg.joiner.hidden, cfg.vocab_size)
        self.las = LAS(self.encoder.out_dim, cfg.vocab_size, cfg.las) if cfg.las.enabled else None
        self.ctc = nn.Linear(self.encoder.out_dim, cfg.vocab_size) if cfg.ctc_head else None
        self.simple_am = self.simple_lm = None
        if cfg.transducer and cfg.rnnt_loss.kind == "pruned":  # the simple loss' additive joiner (training only)
            self.simple_am = nn.Linear(self.encoder.out_dim, cfg.vocab_size)
            self.simple_lm = nn.Linear(self.predictor.out_dim, cfg.vocab_size)

    def raw_features(self, wave: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs -> unnormalised features (B, T, F): log-mel of (B, S) audio, or the
        (B, T, feat_in) feature sequences themselves."""
        if self.frontend is None:
            if wave.dim() != 3 or wave.shape[2] != self.in_dim:
                raise ValueError(f"this model reads feature sequences (B, T, {self.in_dim}), got {tuple(wave.shape)}")
            return wave, wave_lengths
        if wave.dim() != 2:
            raise ValueError(f"this model reads audio (B, S), got {tuple(wave.shape)}: feature input needs model.feat_in")
        if self.gain is not None:
            wave = self.gain(wave)
        return self.frontend(wave, wave_lengths)

    def features(self, wave: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (see :meth:`raw_features`) -> normalised features (B, T, F), with SpecAugment in training mode."""
        feats, lengths = self.raw_features(wave, wave_lengths)
        feats = self.cmvn(feats)
        if self.specaug is not None:
            feats = self.specaug(feats, lengths)
        return feats, lengths

    def encode(self, wave: torch.Tensor, wave_lengths: torch.Tensor) -> EncoderOutput:
        feats, lengths = self.features(wave, wave_lengths)
        enc, enc_lengths = self.encoder(feats, lengths)
        return EncoderOutput(enc, enc_lengths)

    def losses(
        self,
        enc: EncoderOutput,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        label_smoothing: float = 0.0,
        step: int | None = None,
    ) -> ASRLosses:
        """targets (B, U) padded with blank; losses in fp32. ``step``: the optimizer step, for
        the pruned loss' warm-up (None: warmed up).

        Every loss is a per-utterance sum averaged over the batch (ESPnet's
        ``normalize_length=False``), so the weights in L = sum_k lambda_k * L_k compare like with like.
        """
        l_rnnt = rnnt_parts = l_ctc = None
        if self.predictor is not None:
            pred = self.predictor(targets)  # (B, U+1, H)
            l_rnnt, rnnt_parts = self._transducer_loss(enc, pred, targets, target_lengths, step)
        if self.ctc is not None:
            lp = self.ctc_log_probs(enc.enc).transpose(0, 1)  # (T, B, V)
            with torch.autocast(device_type=enc.enc.device.type, enabled=False):
                l_ctc = F.ctc_loss(lp, targets, enc.lengths, target_lengths, blank=BLANK, reduction="sum", zero_infinity=True)
                l_ctc = l_ctc / targets.shape[0]  # per utterance, like the RNN-T loss
        if self.las is None:
            return ASRLosses(l_rnnt, None, None, l_ctc, rnnt_parts)
        n = targets.shape[0]
        if self.training and self.cfg.las.train_fraction < 1.0:  # batches are shuffled: the first n are a random subset
            n = max(1, round(n * self.cfg.las.train_fraction))
        out = self.las(enc.enc[:n], enc.lengths[:n], targets[:n])
        return ASRLosses(l_rnnt, las_loss(out, targets[:n], target_lengths[:n], label_smoothing), out, l_ctc, rnnt_parts)

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, T, H) -> CTC log-probabilities (B, T, V), in fp32."""
        if self.ctc is None:
            raise ValueError("the model has no CTC head: train it with model.loss_weights.ctc > 0")
        with torch.autocast(device_type=enc.device.type, enabled=False):
            return torch.log_softmax(self.ctc(enc.float()), dim=-1)

    def _transducer_loss(self, enc: EncoderOutput, pred: torch.Tensor, targets, target_lengths, step):
        return transducer_loss(
            self.cfg.rnnt_loss, self.joiner, enc.enc, enc.lengths, pred, targets, target_lengths, step, self.simple_am, self.simple_lm
        )


def transducer_loss(
    c: TransducerLossConfig,
    joiner: Joiner,
    enc: torch.Tensor,
    enc_lengths: torch.Tensor,
    pred: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    step: int | None = None,
    simple_am: nn.Module | None = None,
    simple_lm: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The RNN-T objective from encoder (B, T, H) and prediction (B, U+1, H) outputs:
    the full loss over the (B, T, U+1, V) joint, or the pruned loss (needs ``simple_am/lm``)."""
    y, T_b, U_b = targets.int(), enc_lengths.int(), target_lengths.int()
    if c.kind == "full":
        logits = joiner(enc, pred)  # (B, T, U+1, V)
        return rnnt_loss(logits, y, T_b, U_b, blank=BLANK, fastemit_lambda=c.fastemit_lambda), None
    # Pruned: the simple loss picks S label positions per frame; the full joiner runs there only.
    simple, occ = rnnt_loss_simple(simple_am(enc), simple_lm(pred), y, T_b, U_b, blank=BLANK, fastemit_lambda=c.fastemit_lambda)
    ranges = prune_ranges(occ, T_b, U_b, c.prune_range)
    e, p = joiner.project(enc, pred)
    logits = joiner.joint(e[:, :, None, :], gather_pruned(p, ranges, c.prune_range))  # (B, T, S, V)
    pruned = pruned_rnnt_loss(logits, y, ranges, T_b, U_b, blank=BLANK, fastemit_lambda=c.fastemit_lambda)
    w = 1.0 if step is None or c.warmup_steps <= 0 else min(1.0, step / c.warmup_steps)
    simple_scale = 1.0 - w * (1.0 - c.simple_scale)
    pruned_scale = 0.1 + 0.9 * w
    return simple_scale * simple + pruned_scale * pruned, {"simple": simple, "pruned": pruned}


def save_model(
    path: str | Path, model: TwoPassASR, tokenizer: Tokenizer, normalize: dict | None = None, extra: dict | None = None
) -> None:
    """A self-contained checkpoint: config, weights, tokenizer, text normalisation; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), "tokenizer": tokenizer_to_tensor(tokenizer)}
    if normalize is not None:
        state["normalize"] = dict(normalize)
    if extra:
        state.update(extra)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


@dataclass
class ASRCheckpoint:
    """What a checkpoint holds: the model (eval mode), its tokenizer and the text normalisation."""

    model: TwoPassASR
    tokenizer: Tokenizer
    normalize: dict


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> ASRCheckpoint:
    """Load a checkpoint written by :func:`save_model` or by training (Lightning ``.ckpt``).

    Only tensors and plain containers are read (``weights_only=True``).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    if "model_config" not in ckpt:
        ckpt = ckpt.get("sonus", {}) | {"state_dict": ckpt.get("state_dict", {})}
    if "model_config" not in ckpt:
        raise RuntimeError(f"{path}: not a sonus ASR checkpoint (no 'model_config')")
    cfg = ASRModelConfig.from_dict(ckpt["model_config"])
    model = TwoPassASR(cfg, specaug=None, gain=None)
    sd = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    normalize = dict(ckpt.get("normalize", {"lowercase": True, "remove_punctuation": True}))
    return ASRCheckpoint(model, tokenizer_from_tensor(ckpt["tokenizer"]), normalize)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[TwoPassASR, Tokenizer]:
    """(model, tokenizer) of a checkpoint; see :func:`load_checkpoint`."""
    ck = load_checkpoint(path, map_location)
    return ck.model, ck.tokenizer
