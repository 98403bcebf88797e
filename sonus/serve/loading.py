"""Load what ``ServeConfig`` names: the recognizer, and the optional separator and speech tokenizer."""

from __future__ import annotations

import logging

import torch

from sonus.asr.model import load_checkpoint
from sonus.serve.app import Models
from sonus.serve.config import ServeConfig

log = logging.getLogger(__name__)


def load_models(cfg: ServeConfig) -> Models:
    """Every checkpoint of ``cfg``, on the CPU, in eval mode; sets torch's threads first."""
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    asr = load_checkpoint(cfg.checkpoint)
    if asr.model.frontend is None:
        raise ValueError(f"checkpoint {cfg.checkpoint} reads feature sequences, not audio: it cannot be served")
    sep = tok = None
    if cfg.separation_checkpoint:
        from sonus.separation.infer import load_separator

        sep = load_separator(cfg.separation_checkpoint)
    if cfg.tokenizer_checkpoint:
        from sonus.codec.infer import Tokenizer

        tok = Tokenizer.from_checkpoint(cfg.tokenizer_checkpoint)
    lm = None
    if cfg.decoding.lm_weight:
        from sonus.asr.infer import load_lexicon

        assert cfg.lm.text, "checked by ServeConfig"
        lm = load_lexicon(cfg.lm.text, asr.tokenizer, asr.normalize, cfg.lm.oov_logprob, cfg.lm.word_bonus)
    log.info("serving %s (%d Hz)%s%s%s", cfg.checkpoint, asr.model.cfg.sample_rate, ", separation" if sep else "", ", tokenizer" if tok else "",
             f", lexicon LM x{cfg.decoding.lm_weight:g}" if lm else "")  # fmt: skip
    return Models(asr, sep, tok, lm)
