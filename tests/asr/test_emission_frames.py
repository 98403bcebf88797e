"""Transducer searches report the encoder frame at which each token was emitted (word timings).

Checked against a slow frame-by-frame greedy reference, and streamed == offline.
"""

from __future__ import annotations

import pytest
import torch

from sonus.asr import StreamingDecoder
from sonus.asr.decoding import Decoder, DecodingOptions, GreedySearch
from sonus.text.tokenizer import BLANK

from .test_streaming import OPTIONS, setup, stream  # noqa: F401  (setup is a fixture)


def slow_greedy(model, enc: torch.Tensor, max_symbols: int) -> tuple[list[int], list[int]]:
    """One utterance enc (T, H): best symbol per step, at most ``max_symbols`` labels a frame -> (tokens, frames)."""
    pred, joiner = model.predictor, model.joiner
    state = pred.initial_state(1, enc.device)
    out, state = pred.step(torch.tensor([BLANK]), state)
    tokens, frames = [], []
    for t in range(enc.shape[0]):
        for _ in range(max_symbols):
            logits = joiner.joint(joiner.enc_proj(enc[t : t + 1])[:, None, :], joiner.pred_proj(out)[:, None, :])
            k = int(logits.reshape(-1).argmax())
            if k == BLANK:
                break
            tokens.append(k)
            frames.append(t)
            out, state = pred.step(torch.tensor([k]), state)
    return tokens, frames


@torch.no_grad()
def test_greedy_frames_match_a_slow_reference(setup):  # noqa: F811
    model, _, wave, lengths = setup
    enc = model.encode(wave, lengths)
    for max_symbols in (1, 3):
        search = GreedySearch(max_symbols)
        results = search(model.predictor, model.joiner, enc.enc, enc.lengths)
        for b, r in enumerate(results):
            tokens, frames = slow_greedy(model, enc.enc[b, : int(enc.lengths[b])], max_symbols)
            assert r.best.tokens == tokens
            assert r.best.frames == frames, (r.best.frames, frames)
        assert any(len(set(r.best.frames)) > 3 for r in results), "too few emissions: the check is vacuous"


@torch.no_grad()
def test_modified_beam_of_one_aligns_like_greedy_with_one_label_a_frame(setup):  # noqa: F811
    model, tok, wave, lengths = setup
    enc = model.encode(wave, lengths)
    greedy = Decoder(model, tok, DecodingOptions(strategy="greedy", max_symbols_per_frame=1, second_pass="none")).first_pass(enc)
    beam = Decoder(model, tok, DecodingOptions(strategy="modified_beam", beam_size=1, second_pass="none")).first_pass(enc)
    assert [(r.best.tokens, r.best.frames) for r in beam] == [(r.best.tokens, r.best.frames) for r in greedy]


@pytest.mark.parametrize("strategy", ["greedy", "modified_beam", "beam"])
def test_frames_are_monotonic_within_the_utterance_and_survive_rescoring(setup, strategy):  # noqa: F811
    model, tok, wave, lengths = setup
    first, final = Decoder(model, tok, OPTIONS[strategy]).decode(wave, lengths)
    T = model.encode(wave, lengths).lengths.tolist()
    for b, (r1, r2) in enumerate(zip(first, final)):
        for h in r1.nbest:
            assert h.frames is not None and len(h.frames) == len(h.tokens)
            assert h.frames == sorted(h.frames) and all(0 <= f < T[b] for f in h.frames), (h.frames, T[b])
        by_tokens = {tuple(h.tokens): h.frames for h in r1.nbest}
        assert all(h.frames == by_tokens[tuple(h.tokens)] for h in r2.nbest)  # LAS rescoring keeps them


@pytest.mark.parametrize("strategy", ["greedy", "modified_beam", "beam"])
@pytest.mark.parametrize("chunk", [2560, 1000])
def test_streamed_frames_equal_offline(setup, strategy, chunk):  # noqa: F811
    model, tok, wave, lengths = setup
    opts = OPTIONS[strategy]
    off_first, _ = Decoder(model, tok, opts).decode(wave, lengths)
    _, first, _ = stream(StreamingDecoder(model, tok, opts), wave, lengths, chunk)
    assert [[h.frames for h in r.nbest] for r in first] == [[h.frames for h in r.nbest] for r in off_first]
    assert max(max(h.frames, default=0) for r in first for h in r.nbest) > 10
