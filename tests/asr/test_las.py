"""LAS: teacher forcing (one call, parallel where it can be) equals the decoder run step by step."""

from __future__ import annotations

import pytest
import torch

from sonus.asr.config import LASConfig
from sonus.asr.decoding.las import las_score_nbest
from sonus.asr.decoding.types import DecodeResult, Hypothesis
from sonus.asr.las import LAS, LASOutput, las_sequence_logprob
from sonus.text.tokenizer import EOS


def _las(attention: str, input_feeding: bool) -> LAS:
    torch.manual_seed(0)
    cfg = LASConfig(enc2_hidden=8, dec_hidden=12, embedding_dim=6, attention=attention, attention_dim=10, input_feeding=input_feeding, dropout=0.0)
    return LAS(enc_dim=16, vocab_size=9, cfg=cfg).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(3, 7, 16, generator=g)
    lengths = torch.tensor([7, 5, 2])
    targets = torch.randint(3, 9, (3, 4), generator=g)
    return enc, lengths, targets


def _stepwise(las: LAS, enc, lengths, targets) -> LASOutput:
    values, keys, mask = las.listen(enc, lengths)
    state, context, prev = las.initial_state(values, mask)
    inputs = torch.cat([torch.full((targets.shape[0], 1), EOS), targets], dim=1)
    logits, weights = [], []
    for u in range(inputs.shape[1]):
        lg, state, context, prev = las.step(inputs[:, u], state, context, prev, values, keys, mask)
        logits.append(lg)
        weights.append(prev)
    return LASOutput(torch.stack(logits, 1), torch.stack(weights, 1))


@pytest.mark.parametrize("attention", ["location", "dot"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_teacher_forcing_equals_step_by_step(attention, input_feeding):
    las = _las(attention, input_feeding)
    enc, lengths, targets = _inputs()
    with torch.no_grad():
        got, ref = las(enc, lengths, targets), _stepwise(las, enc, lengths, targets)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.attention, ref.attention, atol=1e-6, rtol=1e-5)
    assert float(got.attention[2, :, 2:].abs().max()) == 0.0  # no weight past an utterance's end
    torch.testing.assert_close(got.attention.sum(-1), torch.ones(3, 5))


def test_without_input_feeding_the_decoder_reads_no_context():
    feeding, plain = _las("dot", True), _las("dot", False)
    assert feeding.cell.input_size == 6 + 16 and feeding.rnn is None
    assert plain.rnn.input_size == 6 and plain.cell is None


@pytest.mark.parametrize("input_feeding", [True, False])
def test_rescoring_equals_teacher_forcing_per_hypothesis(input_feeding):
    las = _las("dot", input_feeding)
    enc, lengths, _ = _inputs()
    hyps = [[[3, 4], [5]], [[6, 7, 8]], [[], [4, 4]]]
    results = [DecodeResult([Hypothesis(t, 0.0, 0.0) for t in r]) for r in hyps]
    las_score_nbest(las, enc, lengths, results)
    for b, r in enumerate(results):
        for h in r.nbest:
            t = torch.tensor([h.tokens or [0]])
            tl = torch.tensor([len(h.tokens)])
            with torch.no_grad():
                ref = las_sequence_logprob(las(enc[b : b + 1, : int(lengths[b])], lengths[b : b + 1], t), t, tl)
            assert h.las_score == pytest.approx(float(ref), abs=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_listener_on_the_padded_batch_equals_the_packed_one(training):
    """``padded_bilstm`` (each direction run padded, the backward one on reversed sequences)
    gives what the BiLSTM gives on the packed batch, values and gradients, zeros at padding."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from sonus.asr.las import padded_bilstm

    las = _las("dot", False).train(training)
    enc, lengths, _ = _inputs()
    mask = torch.arange(enc.shape[1])[None, :] < lengths[:, None]
    x1, x2 = enc.clone().requires_grad_(True), enc.clone().requires_grad_(True)
    packed = pack_padded_sequence(x1, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(las.listener(packed)[0], batch_first=True, total_length=enc.shape[1])
    out = padded_bilstm(las.listener, x2, lengths, mask)
    torch.testing.assert_close(out, ref)
    assert (out[~mask] == 0).all()
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (ref * w).sum().backward()
    (out * w).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    with pytest.raises(ValueError, match="one-layer bidirectional"):
        padded_bilstm(torch.nn.LSTM(16, 4, batch_first=True), enc, lengths, mask)
