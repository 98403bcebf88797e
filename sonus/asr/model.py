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

from sonus.asr.config import ASRModelConfig
from sonus.asr.encoder import LSTMEncoder
from sonus.asr.joiner import Joiner
from sonus.asr.las import LAS, LASOutput, las_loss
from sonus.asr.loss import rnnt_loss
from sonus.asr.predictor import Predictor
from sonus.audio.features import (
    FeatureConfig, GainAugment, GainAugmentConfig, GlobalCMVN, LogMel, SpecAugment, SpecAugmentConfig,
)
from sonus.text.tokenizer import BLANK, Tokenizer, tokenizer_from_tensor, tokenizer_to_tensor


@dataclass
class EncoderOutput:
    enc: torch.Tensor  # (B, T, H)
    lengths: torch.Tensor  # (B,)


@dataclass
class ASRLosses:
    rnnt: torch.Tensor
    las: torch.Tensor | None
    las_output: LASOutput | None
    ctc: torch.Tensor | None = None


class TwoPassASR(nn.Module):
    def __init__(
        self,
        cfg: ASRModelConfig,
        specaug: SpecAugmentConfig | None = SpecAugmentConfig(),
        gain: GainAugmentConfig | None = GainAugmentConfig(),
    ) -> None:
        """``specaug`` and ``gain`` are training-time augmentations (no weights); None turns them off."""
        super().__init__()
        self.cfg = cfg
        self.gain = GainAugment(gain) if gain is not None else None
        self.frontend = LogMel(FeatureConfig(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels))
        self.cmvn = GlobalCMVN(cfg.n_mels)
        self.specaug = SpecAugment(specaug) if specaug is not None else None
        self.encoder = LSTMEncoder(cfg.n_mels, cfg.encoder)
        self.predictor = Predictor(cfg.vocab_size, cfg.predictor)
        self.joiner = Joiner(self.encoder.out_dim, self.predictor.out_dim, cfg.joiner.hidden, cfg.vocab_size)
        self.las = LAS(self.encoder.out_dim, cfg.vocab_size, cfg.las) if cfg.las.enabled else None
        self.ctc = nn.Linear(self.encoder.out_dim, cfg.vocab_size) if cfg.ctc_head else None

    def features(self, wave: torch.Tensor, wave_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) audio -> normalised log-mel (B, T, F), with SpecAugment in training mode."""
        if self.gain is not None:
            wave = self.gain(wave)
        feats, lengths = self.frontend(wave, wave_lengths)
        feats = self.cmvn(feats)
        if self.specaug is not None:
            feats = self.specaug(feats, lengths)
        return feats, lengths

    def encode(self, wave: torch.Tensor, wave_lengths: torch.Tensor) -> EncoderOutput:
        feats, lengths = self.features(wave, wave_lengths)
        enc, enc_lengths = self.encoder(feats, lengths)
        return EncoderOutput(enc, enc_lengths)

    def losses(
        self, enc: EncoderOutput, targets: torch.Tensor, target_lengths: torch.Tensor, label_smoothing: float = 0.0
    ) -> ASRLosses:
        """targets (B, U) padded with blank; losses in fp32.

        Every loss is a per-utterance sum averaged over the batch (ESPnet's
        ``normalize_length=False``), so the weights in L = sum_k lambda_k * L_k compare like with like.
        """
        pred = self.predictor(targets)  # (B, U+1, H)
        logits = self.joiner(enc.enc, pred)  # (B, T, U+1, V)
        l_rnnt = rnnt_loss(logits, targets.int(), enc.lengths.int(), target_lengths.int(), blank=BLANK)
        l_ctc = None
        if self.ctc is not None:
            with torch.autocast(device_type=enc.enc.device.type, enabled=False):
                lp = torch.log_softmax(self.ctc(enc.enc.float()), dim=-1).transpose(0, 1)  # (T, B, V)
                l_ctc = F.ctc_loss(lp, targets, enc.lengths, target_lengths, blank=BLANK, reduction="sum", zero_infinity=True)
                l_ctc = l_ctc / targets.shape[0]  # per utterance, like the RNN-T loss
        if self.las is None:
            return ASRLosses(l_rnnt, None, None, l_ctc)
        out = self.las(enc.enc, enc.lengths, targets)
        return ASRLosses(l_rnnt, las_loss(out, targets, target_lengths, label_smoothing), out, l_ctc)


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
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
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
