"""Word timings from the transducer alignment: the encoder frame at which each token was emitted."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sonus.asr.model import TwoPassASR
from sonus.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds: the start of the encoder frame that emitted the word's first token
    end: float  # seconds: the end of the frame that emitted its last token


def encoder_frame_seconds(model: TwoPassASR) -> float:
    """Seconds of audio per encoder frame (feature hop times the encoder's frame reduction)."""
    fe = model.frontend.cfg
    n = 4096
    enc = int(model.encoder.output_lengths(torch.tensor([n]))[0])
    return fe.hop_length * n / enc / fe.sample_rate


def word_timings(tokens: list[int], frames: list[int] | None, tokenizer: Tokenizer, frame_s: float) -> list[Word]:
    """Group tokens into the words of ``tokenizer.decode(tokens)``; each word spans its tokens' frames.

    A token belongs to the word its text extends (decoding growing prefixes works for
    character and SentencePiece tokenizers alike); tokens that add only spaces belong to
    none. Empty when ``frames`` is None (the search did not record the alignment).
    """
    if frames is None or not tokens:
        return []
    assert len(frames) == len(tokens), (len(frames), len(tokens))
    spans: list[list[int]] = []  # per word: [first frame, last frame]
    prev = ""
    for i in range(len(tokens)):
        text = tokenizer.decode(tokens[: i + 1])
        added = text.removeprefix(prev)
        if added.strip():
            if len(text.split()) > len(spans):  # the token starts a word
                spans.append([frames[i], frames[i]])
            else:
                spans[-1][1] = frames[i]
        prev = text
    words = tokenizer.decode(tokens).split()
    if len(words) != len(spans):  # a tokenizer whose prefixes do not decode to prefixes: no timings
        return []
    return [Word(w, round(a * frame_s, 3), round((b + 1) * frame_s, 3)) for w, (a, b) in zip(words, spans)]
