"""Lexicon LM for shallow fusion: the label-by-label scores add up to the word probabilities
whatever the tokens, the sparse tables agree with walking the trie, and the beam searches
fused with it keep their scores consistent and prefer lexicon words."""

from __future__ import annotations

import math

import pytest
import torch

from sonus.asr.decoding import (
    BeamSearch,
    CTCPrefixBeamSearch,
    Decoder,
    DecodingOptions,
    Lexicon,
    ModifiedBeamSearch,
    count_words,
)
from sonus.asr.decoding.lexicon import OOV, ROOT, label_strings
from sonus.asr.model import TwoPassASR
from sonus.text.tokenizer import BLANK, CharTokenizer, SentencePieceTokenizer

from .test_ctc_decoding import exact_sequence_logprobs
from .test_model import small_config

COUNTS = {"a": 4, "ab": 2, "bad": 1, "cab": 1}  # total 8
OOV_LP, BONUS = -12.0, 0.5


def _expected(text: str) -> float:
    return sum((math.log(COUNTS[w] / 8) if w in COUNTS else OOV_LP) + BONUS for w in text.split())


def _run_labels(lex: Lexicon, labels: list[int]) -> float:
    """Score a label sequence through ``step`` (the tables the searches use), then ``final``."""
    node, total = torch.tensor([ROOT]), 0.0
    for lab in labels:
        score, nxt = lex.step(node)
        total += float(score[0, lab])
        node = nxt[:, lab]
    return total + float(lex.final[node[0]])


@pytest.mark.parametrize("text", ["a", "ab", "a bad cab", "cab ab a", "abc", "ba a", "a dd ab", "bad badd"])
def test_char_labels_add_up_to_word_logprobs(text):
    tok = CharTokenizer("abcd ")
    lex = Lexicon(COUNTS, tok, OOV_LP, BONUS)
    labels = tok.encode(text)
    labels = labels[:2] + [BLANK] + labels[2:]  # blank changes nothing
    assert _run_labels(lex, labels) == pytest.approx(_expected(text), abs=1e-5)
    assert lex.score_text(text) == pytest.approx(_expected(text), abs=1e-5)


def test_subword_labels_add_up_whatever_the_segmentation():
    texts = ["a bad cab ab", "cab a bad", "ab ab a", "bad cab"] * 20
    tok = SentencePieceTokenizer.train(texts, vocab_size=12, model_type="bpe")
    lex = Lexicon(COUNTS, tok, OOV_LP, BONUS)
    strings = label_strings(tok)
    for text in ["a bad cab", "cab ab", "dab a", "ab abba"]:
        labels = tok.encode(text)
        assert "".join(strings[i] for i in labels).strip() == text
        assert _run_labels(lex, labels) == pytest.approx(_expected(text), abs=1e-5), text
    # another segmentation of the same text: the word-initial pieces spelt character by character
    pieces = {s: i for i, s in enumerate(strings) if s}
    labels = [pieces[" c"] if " c" in pieces else pieces[" "], *[pieces[c] for c in ("a" if " c" in pieces else "ca")], pieces["b"]]
    assert "".join(strings[i] for i in labels).strip() == "cab"
    assert _run_labels(lex, labels) == pytest.approx(_expected("cab"), abs=1e-5)


def test_sparse_tables_agree_with_walking_the_trie():
    tok = CharTokenizer("abcd ")
    lex = Lexicon(COUNTS, tok, OOV_LP, BONUS)
    strings = label_strings(tok)
    close = lex.final.tolist()
    nodes = torch.arange(lex.num_nodes)
    score, nxt = lex.step(nodes)
    for n in range(lex.num_nodes):
        for lab, s in enumerate(strings):
            if s is None:
                continue
            want_node, want_score = lex._walk(n, s, close)
            assert (int(nxt[n, lab]), float(score[n, lab])) == (want_node, pytest.approx(want_score, abs=1e-6)), (n, s)
    assert torch.equal(nxt[:, BLANK], nodes) and not score[:, BLANK].any()
    assert int(nxt[ROOT, tok.encode("d")[0]]) == OOV


def test_count_words_and_empty_lexicon():
    assert count_words(["a b", "b  c "]) == {"a": 1, "b": 2, "c": 1}
    with pytest.raises(ValueError, match="no words"):
        Lexicon({}, CharTokenizer("ab "))


@pytest.fixture(scope="module")
def model_and_enc():
    torch.manual_seed(0)
    tok = CharTokenizer("abcd ")
    model = TwoPassASR(small_config(tok.vocab_size)).eval()
    with torch.no_grad():
        model.joiner.out.bias[0] -= 2.0  # blank-shy: hypotheses are not empty
        enc = model.encode(torch.randn(3, 12000) * 0.3, torch.tensor([12000, 9000, 5000]))
    return model, tok, enc


@pytest.mark.parametrize("search", [lambda lm, w: ModifiedBeamSearch(4, lm, w), lambda lm, w: BeamSearch(4, 3, lm, w)])
def test_fused_search_scores_split_into_rnnt_and_lm(model_and_enc, search):
    model, tok, enc = model_and_enc
    lex = Lexicon(COUNTS, tok, OOV_LP, BONUS)
    plain = search(None, 0.0)(model.predictor, model.joiner, enc.enc, enc.lengths)
    assert all(h.lm_score is None for r in plain for h in r.nbest)
    same = search(lex, 0.0)(model.predictor, model.joiner, enc.enc, enc.lengths)  # weight 0: no LM at all
    assert [[h.tokens for h in r.nbest] for r in same] == [[h.tokens for h in r.nbest] for r in plain]
    w = 0.7
    fused = search(lex, w)(model.predictor, model.joiner, enc.enc, enc.lengths)
    for r in fused:
        assert [h.score for h in r.nbest] == sorted((h.score for h in r.nbest), reverse=True)
        for h in r.nbest:
            text = tok.decode(h.tokens)
            assert h.lm_score == pytest.approx(w * lex.score_text(text), abs=1e-4), text
            assert h.score == pytest.approx(h.rnnt_score + h.lm_score, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_ctc_prefix_search_is_exact_with_a_beam_that_keeps_every_prefix(seed):
    """Every prefix kept and every token tried: each prefix's acoustic score is log P(y) summed
    over all its alignments, its LM score the lexicon's score of its text, and the n-best is the
    exact ranking by their sum."""
    tok = CharTokenizer("ab ")
    V, T, w = tok.vocab_size, 4, 0.6
    lex = Lexicon(COUNTS, tok, OOV_LP, BONUS)
    logits = torch.randn(1, T, V, generator=torch.Generator().manual_seed(seed)) * 2.0
    logits[..., 1:3] = float("-inf")  # <unk> and <eos> are never emitted
    lp = torch.log_softmax(logits, dim=-1)
    exact = {y: s for y, s in exact_sequence_logprobs(lp[0]).items() if s > float("-inf")}
    want = sorted(((y, s + w * lex.score_text(tok.decode(list(y)))) for y, s in exact.items()), key=lambda kv: -kv[1])
    res = CTCPrefixBeamSearch(beam_size=1024, token_topk=V, lm=lex, lm_weight=w)(lp, torch.tensor([T]))[0]
    assert len(res.nbest) == len(exact)
    assert [tuple(h.tokens) for h in res.nbest[:5]] == [y for y, _ in want[:5]]
    for h in res.nbest:
        assert h.rnnt_score == pytest.approx(exact[tuple(h.tokens)], abs=1e-4)
        assert h.lm_score == pytest.approx(w * lex.score_text(tok.decode(h.tokens)), abs=1e-4)
        assert h.score == pytest.approx(h.rnnt_score + h.lm_score, abs=1e-4)
    plain = CTCPrefixBeamSearch(beam_size=1024, token_topk=V)(lp, torch.tensor([T]))[0]
    assert [tuple(h.tokens) for h in plain.nbest[:5]] == [y for y, _ in sorted(exact.items(), key=lambda kv: -kv[1])[:5]]
    assert plain.best.lm_score is None


def test_a_strong_lexicon_steers_a_pruned_ctc_prefix_search():
    """Beam 8: the LM must rank the prefixes while the beam prunes, not only the survivors."""
    tok = CharTokenizer("abcd ")
    logits = torch.randn(4, 30, tok.vocab_size, generator=torch.Generator().manual_seed(5)) * 1.5
    logits[..., 1:3] = float("-inf")
    lp, lengths = torch.log_softmax(logits, dim=-1), torch.tensor([30, 24, 17, 9])
    lex = Lexicon(COUNTS, tok, oov_logprob=-60.0, word_bonus=8.0)
    plain = [w for r in CTCPrefixBeamSearch(8)(lp, lengths) for w in tok.decode(r.best.tokens).split()]
    assert any(w not in COUNTS for w in plain), plain
    fused = [w for r in CTCPrefixBeamSearch(8, lm=lex, lm_weight=1.0)(lp, lengths) for w in tok.decode(r.best.tokens).split()]
    assert fused and all(w in COUNTS for w in fused), fused


def test_a_strong_lexicon_turns_hypotheses_into_its_words(model_and_enc):
    model, tok, enc = model_and_enc
    lex = Lexicon(COUNTS, tok, oov_logprob=-60.0, word_bonus=8.0)  # the bonus: words, not the empty text

    def words(opts: DecodingOptions, lm: Lexicon | None) -> list[str]:
        first, _ = Decoder(model, tok, opts, lm).decode_encoded(enc)
        return [w for r in first for w in r.best.text.split()]

    plain = words(DecodingOptions(strategy="beam", beam_size=8, second_pass="none"), None)
    assert any(w not in COUNTS for w in plain), plain  # random weights spell no word of the lexicon ...
    fused = words(DecodingOptions(strategy="beam", beam_size=8, second_pass="none", lm_weight=1.0), lex)
    assert fused and all(w in COUNTS for w in fused), fused  # ... until the LM is fused


def test_lm_needs_a_beam_search(model_and_enc):
    model, tok, _ = model_and_enc
    with pytest.raises(ValueError, match="lm_weight"):
        Decoder(model, tok, DecodingOptions(strategy="greedy", lm_weight=0.5), Lexicon(COUNTS, tok))
