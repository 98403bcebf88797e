"""Tokenizers: SentencePiece (unigram/BPE) or characters, with one id layout.

Ids: 0 = blank (RNN-T), 1 = <unk>, 2 = <eos> (also LAS's start symbol), then pieces.
``vocab_size`` counts all of them, so the joiner's output size is ``vocab_size``.

A tokenizer never maps text silently to <unk>: :meth:`Tokenizer.encode` raises
:class:`TokenizerError` naming the characters it cannot represent.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Literal, Protocol

import torch

BLANK, UNK, EOS = 0, 1, 2
TokenizerKind = Literal["unigram", "bpe", "char"]


class TokenizerError(ValueError):
    """Text holds characters the tokenizer cannot represent."""


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def to_bytes(self) -> bytes: ...


class CharTokenizer:
    """One token per character; the character set is fixed at training time."""

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        self._index = {c: i + 3 for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars) + 3

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls(chars)

    def encode(self, text: str) -> list[int]:
        missing = sorted({c for c in text if c not in self._index})
        if missing:
            raise TokenizerError(f"characters not in the tokenizer's vocabulary: {missing!r} in {text!r}")
        return [self._index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i - 3] for i in ids if i >= 3 and i - 3 < len(self.chars))

    def to_bytes(self) -> bytes:
        return "\n".join(self.chars).encode("utf-8")  # texts are normalised: no newline among the chars

    @classmethod
    def from_bytes(cls, data: bytes) -> "CharTokenizer":
        return cls(data.decode("utf-8").split("\n"))


class SentencePieceTokenizer:
    """SentencePiece model whose ids are shifted by one to make room for blank."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.sp.get_piece_size() + 1
        self.kind = "sentencepiece"
        # Characters the model can produce; anything else would become <unk>.
        self._chars = set()
        for i in range(self.sp.get_piece_size()):
            if not (self.sp.is_unknown(i) or self.sp.is_control(i)):
                self._chars.update(self.sp.id_to_piece(i).replace("\u2581", " "))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 300, model_type: str = "unigram") -> "SentencePieceTokenizer":
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            unk_id=0,
            eos_id=1,
            bos_id=-1,
            pad_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        return cls(buf.getvalue())

    def encode(self, text: str) -> list[int]:
        missing = sorted({c for c in text if c != " " and c not in self._chars})
        if missing:
            raise TokenizerError(f"characters not in the tokenizer's vocabulary: {missing!r} in {text!r}")
        return [i + 1 for i in self.sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i - 1 for i in ids if i >= 3 and i - 1 < self.sp.get_piece_size()])

    def to_bytes(self) -> bytes:
        return self._proto


def train_tokenizer(texts: Iterable[str], kind: TokenizerKind = "unigram", vocab_size: int = 300) -> Tokenizer:
    """Train a tokenizer on transcripts. ``vocab_size`` is the SentencePiece piece count."""
    texts = list(texts)
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind not in ("unigram", "bpe"):
        raise ValueError(f"tokenizer kind must be 'unigram', 'bpe' or 'char', got {kind!r}")
    return SentencePieceTokenizer.train(texts, vocab_size=vocab_size, model_type=kind)


def tokenizer_to_tensor(tok: Tokenizer) -> dict[str, torch.Tensor | str]:
    """Serialise for a checkpoint (weights_only-safe: a uint8 tensor and a string)."""
    data = tok.to_bytes()
    return {"kind": tok.kind, "data": torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()}


def tokenizer_from_tensor(state: dict) -> Tokenizer:
    data = bytes(state["data"].tolist()) if isinstance(state["data"], torch.Tensor) else state["data"]
    if state["kind"] == "char":
        return CharTokenizer.from_bytes(data)
    return SentencePieceTokenizer(data)


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write ``tokenizer.model`` (SentencePiece) or ``tokenizer.chars`` next to an experiment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(tok.to_bytes())
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".chars":
        return CharTokenizer.from_bytes(data)
    return SentencePieceTokenizer(data)
