"""Word and character error rates (jiwer), corpus-level: total edits / total reference units."""

from __future__ import annotations

from dataclasses import dataclass

import jiwer


@dataclass(frozen=True)
class ErrorRates:
    wer: float
    cer: float
    words: int
    chars: int


def error_rates(refs: list[str], hyps: list[str]) -> ErrorRates:
    """Corpus WER/CER. An empty hypothesis counts as all deletions; empty references are rejected."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    for i, r in enumerate(refs):
        if not r.strip():
            raise ValueError(f"reference {i} is empty")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    n_words = sum(len(r.split()) for r in refs)
    n_chars = sum(len(r) for r in refs)
    return ErrorRates(wer=float(words.wer), cer=float(chars.cer), words=n_words, chars=n_chars)
