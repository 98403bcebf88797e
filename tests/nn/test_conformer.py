"""Streaming Conformer: chunked streaming equals the offline pass, no look past a chunk,
padding-invariant, and usable as the two-pass model's encoder."""

from __future__ import annotations

import pytest
import torch

from sonus.asr.config import EncoderConfig
from sonus.asr.model import TwoPassASR, load_model, save_model
from sonus.nn.conformer import ConformerConfig, ConformerEncoder, chunk_mask
from sonus.text.tokenizer import CharTokenizer
from tests.asr.test_model import _batch, small_config


def _encoder(subsampling: str, left_chunks: int, chunk: int = 4, factor: int = 4) -> ConformerEncoder:
    torch.manual_seed(0)
    cfg = ConformerConfig(d_model=32, layers=2, heads=4, conv_kernel=5, subsampling=subsampling, subsampling_channels=8,
                          subsampling_factor=factor, chunk_size=chunk, left_chunks=left_chunks, dropout=0.0)  # fmt: skip
    return ConformerEncoder(40, cfg).eval()


def _stream(enc: ConformerEncoder, x: torch.Tensor, pieces: list[int]) -> torch.Tensor:
    state, out, i = enc.initial_state(x.shape[0], x.device, x.shape[2]), [], 0
    for n in pieces:
        y, state = enc.step(x[:, i : i + n], state)
        out.append(y)
        i += n
    y, state = enc.step(x[:, i:], state, final=True)
    return torch.cat(out + [y], dim=1)


@pytest.mark.parametrize("subsampling", ["conv2d", "stack"])
@pytest.mark.parametrize("left_chunks", [-1, 0, 1])
def test_chunked_stream_equals_offline(subsampling, left_chunks):
    enc = _encoder(subsampling, left_chunks)
    x = torch.randn(2, 203, 40)
    with torch.no_grad():
        offline, lengths = enc(x, torch.tensor([203, 203]))
        streamed = _stream(enc, x, [16, 7, 9, 30, 16, 1, 50])  # pieces that do not line up with chunks
    assert lengths.tolist() == [50, 50] and streamed.shape == offline.shape, (streamed.shape, offline.shape)
    torch.testing.assert_close(streamed, offline, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [6, 8])
def test_stacking_other_factors_streams_like_offline(factor):
    enc = _encoder("stack", 1, factor=factor)
    x = torch.randn(2, 203, 40)
    with torch.no_grad():
        offline, lengths = enc(x, torch.tensor([203, 203]))
        streamed = _stream(enc, x, [16, 7, 9, 30, 16, 1, 50])
    assert lengths.tolist() == [203 // factor] * 2 and streamed.shape == offline.shape
    assert enc.output_lengths(torch.tensor([150, factor - 1])).tolist() == [150 // factor, 0]
    torch.testing.assert_close(streamed, offline, rtol=1e-5, atol=1e-5)


def test_conv2d_subsampling_is_x4_only():
    with pytest.raises(ValueError, match="subsampling_factor"):
        _encoder("conv2d", -1, factor=8)


@pytest.mark.parametrize("left_chunks", [0, 2])
def test_stream_cache_holds_only_what_a_later_chunk_sees(left_chunks):
    enc, chunk = _encoder("stack", left_chunks), 4
    x = torch.randn(1, 4 * 23, 40)  # 23 encoder frames: 5 whole chunks and 3 frames of a sixth
    state = enc.initial_state(1, x.device, 40)
    with torch.no_grad():
        _, state = enc.step(x, state)  # the 5 whole chunks
        assert state.offset == 20 and {kv[0].shape[2] for kv in state.kv} == {left_chunks * chunk}
        _, state = enc.step(x[:, :0], state, final=True)  # and the partial one
    assert state.offset == 23 and {kv[0].shape[2] for kv in state.kv} == {left_chunks * chunk + 3}


def test_no_frame_sees_a_later_chunk():
    """Changing the input of chunk c changes no output of an earlier chunk, but does change chunk c."""
    enc = _encoder("conv2d", -1)
    x = torch.randn(1, 96, 40)  # 24 encoder frames, 6 chunks of 4
    x2 = x.clone()
    x2[:, 64:] += 1.0  # input frames 64.. feed encoder frames 16.. (chunk 4 on)
    with torch.no_grad():
        a, _ = enc(x, torch.tensor([96]))
        b, _ = enc(x2, torch.tensor([96]))
    diff = (a - b).abs().amax(-1)[0]  # (T',)
    assert diff[:15].max() == 0, diff  # frame 15 sees input 63 at most (4j + 3)
    assert diff[16:].min() > 0, diff


def test_padding_does_not_change_an_utterance():
    enc = _encoder("conv2d", 2)
    x = torch.randn(2, 160, 40)
    with torch.no_grad():
        both, lengths = enc(x, torch.tensor([160, 97]))
        alone, _ = enc(x[1:, :97], torch.tensor([97]))
    assert lengths.tolist() == [40, 24]
    torch.testing.assert_close(both[1, :24], alone[0], rtol=1e-5, atol=1e-5)


def test_chunk_mask():
    m = chunk_mask(6, torch.tensor([6, 5]), chunk=2, left_chunks=1)[:, 0]  # (B, T, T)
    expect = torch.tensor([
        [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1],
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(m[0], expect)
    assert torch.equal(m[1], expect & torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool))  # key 5 is padding


def test_two_pass_model_with_conformer_trains_and_reloads(tmp_path):
    tok = CharTokenizer("abcdefg")
    conf = ConformerConfig(d_model=32, layers=2, heads=4, conv_kernel=5, subsampling="stack", chunk_size=4)
    cfg = small_config(tok.vocab_size)
    cfg = type(cfg)(**{**cfg.__dict__, "encoder": EncoderConfig(kind="conformer", conformer=conf)})
    torch.manual_seed(0)
    model = TwoPassASR(cfg, specaug=None, gain=None)
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = model.losses(model.encode(wave, wl), targets, tl)
        loss = out.rnnt + out.las
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    save_model(tmp_path / "m.pt", model, tok)
    loaded, _ = load_model(tmp_path / "m.pt")
    assert loaded.cfg.encoder.kind == "conformer" and loaded.cfg.encoder.conformer == conf
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(wave, wl).enc, model.encode(wave, wl).enc)


def test_nemo_att_context_size_maps_to_chunks():
    """NeMo's att_context_size=[left, right] (chunked_limited): chunks of right + 1 frames,
    left / (right + 1) chunks back; through the config as model.conformer.att_context_size."""
    from sonus.asr.train import conformer_config_from
    from sonus.cli import compose
    from sonus.nn.conformer import chunking_from_att_context

    assert chunking_from_att_context(16, 3) == (4, 4)
    assert chunking_from_att_context(-1, 1) == (2, -1)
    assert chunking_from_att_context(0, 0) == (1, 0)
    assert chunking_from_att_context(-1, -1) == (0, -1)
    for bad, match in (((10, 3), "multiple of the chunk"), ((8, -1), "does not stream"), ((-2, 3), ">= 0, or -1")):
        with pytest.raises(ValueError, match=match):
            chunking_from_att_context(*bad)
    cfg = compose("train", ["model.encoder=conformer", "model.conformer.att_context_size=[24,5]"])
    c = conformer_config_from(cfg.model)
    assert (c.chunk_size, c.left_chunks) == (6, 4)
    c = conformer_config_from(compose("train", ["model.encoder=conformer"]).model)
    assert (c.chunk_size, c.left_chunks) == (4, -1)  # the config's own keys when it is not given
