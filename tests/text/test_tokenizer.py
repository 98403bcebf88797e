from __future__ import annotations

import pytest

from sonus.text.normalize import normalize_text
from sonus.text.tokenizer import (
    BLANK, EOS, UNK, CharTokenizer, TokenizerError, load_tokenizer, save_tokenizer, tokenizer_from_tensor,
    tokenizer_to_tensor, train_tokenizer,
)  # fmt: skip

TEXTS = ["the cat sat on the mat", "a dog ran far", "cats and dogs", "the end of the day"] * 20


def test_normalize():
    assert normalize_text("  Hello, WORLD!  It's  fine. ") == "hello world it's fine"
    assert normalize_text("Ünïcode—dash", lowercase=False) == "Ünïcode dash"


@pytest.mark.parametrize("kind", ["unigram", "bpe", "char"])
def test_round_trip_and_reserved_ids(kind, tmp_path):
    tok = train_tokenizer(TEXTS, kind=kind, vocab_size=30)
    ids = tok.encode("the cat ran")
    assert all(i not in (BLANK, UNK, EOS) for i in ids)
    assert max(ids) < tok.vocab_size
    assert tok.decode(ids) == "the cat ran"
    path = save_tokenizer(tok, tmp_path / ("tok.chars" if kind == "char" else "tok.model"))
    assert load_tokenizer(path).encode("the cat ran") == ids
    assert tokenizer_from_tensor(tokenizer_to_tensor(tok)).encode("a dog") == tok.encode("a dog")


@pytest.mark.parametrize("kind", ["unigram", "char"])
def test_unrepresentable_characters_named(kind):
    tok = train_tokenizer(TEXTS, kind=kind, vocab_size=30)
    with pytest.raises(TokenizerError, match=r"'z'"):
        tok.encode("the zoo")


def test_char_tokenizer_decode_skips_specials():
    tok = CharTokenizer("ab")
    assert tok.decode([BLANK, 3, UNK, 4, EOS]) == "ab"
