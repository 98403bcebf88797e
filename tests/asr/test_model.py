"""Model: shapes, gradient routing, save -> load -> same output."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sonus.asr.config import (
    ASRModelConfig,
    EncoderConfig,
    JoinerConfig,
    LASConfig,
    PredictorConfig,
    TransducerLossConfig,
)
from sonus.asr.model import TwoPassASR, load_model, save_model
from sonus.text.tokenizer import CharTokenizer


def small_config(vocab: int, las: bool = True, **enc) -> ASRModelConfig:
    return ASRModelConfig(
        vocab_size=vocab,
        n_mels=40,
        encoder=EncoderConfig(hidden=32, layers=2, **enc),
        predictor=PredictorConfig(hidden=24, embed=16),
        joiner=JoinerConfig(hidden=32),
        las=LASConfig(enabled=las, enc2_hidden=16, dec_hidden=24, embedding_dim=8, attention_dim=16),
    )


def _batch(B=3, vocab=10):
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(B, 16000, generator=g) * 0.1
    wl = torch.tensor([16000, 12000, 8000][:B])
    targets = torch.randint(3, vocab, (B, 5), generator=g)
    tl = torch.tensor([5, 3, 1][:B])
    return wave, wl, targets, tl


def test_shapes_and_losses_finite():
    tok = CharTokenizer("abcdefg")
    model = TwoPassASR(small_config(tok.vocab_size))
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    enc = model.encode(wave, wl)
    assert enc.enc.shape == (3, 25, 32), enc.enc.shape  # 100 frames / 4 -> 25
    assert enc.lengths.tolist() == [25, 19, 13]
    out = model.losses(enc, targets, tl)
    assert torch.isfinite(out.rnnt) and torch.isfinite(out.las)
    assert out.las_output.logits.shape == (3, 6, tok.vocab_size)


def test_gradient_routing():
    """Encoder gets both losses; predictor/joiner only RNN-T; LAS only LAS."""
    tok = CharTokenizer("abcdefg")
    model = TwoPassASR(small_config(tok.vocab_size))
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    out = model.losses(model.encode(wave, wl), targets, tl)
    out.las.backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.predictor.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.joiner.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    model.zero_grad()
    out.rnnt.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.las.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_save_load_same_output(tmp_path):
    tok = CharTokenizer("abcdefg ")
    model = TwoPassASR(small_config(tok.vocab_size, reduction_type="pool")).eval()
    with torch.no_grad():
        model.cmvn.mean.fill_(0.3)  # buffers travel too
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    with torch.no_grad():
        ref = model.losses(model.encode(wave, wl), targets, tl)
    save_model(tmp_path / "m.pt", model, tok)
    loaded, tok2 = load_model(tmp_path / "m.pt")
    assert tok2.encode("bad cafe") == tok.encode("bad cafe")
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        got = loaded.losses(loaded.encode(wave, wl), targets, tl)
    torch.testing.assert_close(got.rnnt, ref.rnnt)
    torch.testing.assert_close(got.las_output.logits, ref.las_output.logits)


def test_padding_does_not_change_an_utterance():
    """A short utterance decodes the same alone as in a padded batch (encoder is causal, LAS packs)."""
    tok = CharTokenizer("abcdefg")
    model = TwoPassASR(small_config(tok.vocab_size)).eval()
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    with torch.no_grad():
        batch = model.losses(model.encode(wave, wl), targets, tl)
        alone = model.losses(model.encode(wave[2:, : wl[2]], wl[2:]), targets[2:, : tl[2]], tl[2:])
    torch.testing.assert_close(batch.las_output.logits[2, : tl[2] + 1], alone.las_output.logits[0], atol=1e-5, rtol=1e-4)


def test_rnnt_only_model_has_no_las():
    tok = CharTokenizer("abc")
    model = TwoPassASR(small_config(tok.vocab_size, las=False))
    assert model.las is None
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    out = model.losses(model.encode(wave, wl), targets, tl)
    assert out.las is None and torch.isfinite(out.rnnt)


def test_load_rejects_missing_or_foreign_checkpoint(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_model(tmp_path / "nope.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="not a sonus ASR checkpoint"):
        load_model(tmp_path / "other.pt")


def test_pruned_loss_model():
    """model.loss=pruned: with a window as wide as the lattice the pruned term is the full loss;
    the simple projections and the joiner all learn; save -> load keeps the loss kind."""
    tok = CharTokenizer("abcdefg")
    full = TwoPassASR(small_config(tok.vocab_size)).eval()
    wide = TransducerLossConfig(kind="pruned", prune_range=6, warmup_steps=100)
    pruned = TwoPassASR(replace(small_config(tok.vocab_size), rnnt_loss=wide)).eval()
    pruned.load_state_dict(full.state_dict(), strict=False)  # same shared weights
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    with torch.no_grad():
        ref = full.losses(full.encode(wave, wl), targets, tl)
        got = pruned.losses(pruned.encode(wave, wl), targets, tl)
    torch.testing.assert_close(got.rnnt_parts["pruned"], ref.rnnt, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.rnnt, 0.5 * got.rnnt_parts["simple"] + got.rnnt_parts["pruned"])

    narrow = TwoPassASR(replace(small_config(tok.vocab_size), rnnt_loss=replace(wide, prune_range=2))).train()
    out = narrow.losses(narrow.encode(wave, wl), targets, tl, step=0)
    torch.testing.assert_close(out.rnnt, out.rnnt_parts["simple"] + 0.1 * out.rnnt_parts["pruned"])  # warm-up start
    out.rnnt.backward()
    for m in (narrow.simple_am, narrow.simple_lm, narrow.joiner, narrow.predictor, narrow.encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_ctc_only_model():
    """transducer=False: no predictor or joiner; the CTC head is the first pass (LAS optional)."""
    tok = CharTokenizer("abcdefg")
    cfg = replace(small_config(tok.vocab_size), transducer=False, ctc_head=True)
    model = TwoPassASR(cfg)
    assert model.predictor is None and model.joiner is None
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    enc = model.encode(wave, wl)
    out = model.losses(enc, targets, tl)
    assert out.rnnt is None and torch.isfinite(out.ctc) and torch.isfinite(out.las)
    out.ctc.backward()
    assert model.encoder.lstm.weight_ih_l0.grad.abs().sum() > 0
    lp = model.ctc_log_probs(enc.enc)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 25))
    with pytest.raises(ValueError, match="needs a first pass"):
        TwoPassASR(replace(cfg, ctc_head=False))
    with pytest.raises(ValueError, match="no CTC head"):
        TwoPassASR(small_config(tok.vocab_size)).ctc_log_probs(enc.enc)


def test_unknown_loss_kind_is_refused():
    with pytest.raises(ValueError, match="model.loss must be 'full' or 'pruned', got 'fast'"):
        TransducerLossConfig(kind="fast")


def test_las_train_fraction_uses_part_of_the_batch_in_training_only():
    tok = CharTokenizer("abcdefg")
    cfg = small_config(tok.vocab_size)
    model = TwoPassASR(replace(cfg, las=replace(cfg.las, train_fraction=0.5)))
    wave, wl, targets, tl = _batch(B=3, vocab=tok.vocab_size)
    enc = model.encode(wave, wl)
    assert model.losses(enc, targets, tl).las_output.logits.shape[0] == 2  # round(3 * 0.5)
    model.eval()
    assert model.losses(model.encode(wave, wl), targets, tl).las_output.logits.shape[0] == 3


def test_lightning_without_las_keeps_the_decoding_options_but_the_second_pass():
    from sonus.asr.decoding import DecodingOptions
    from sonus.asr.lightning import ASRLightning, OptimConfig, TrainOptions

    tok = CharTokenizer("abcdefg")
    model = TwoPassASR(small_config(tok.vocab_size, las=False))
    opts = DecodingOptions(strategy="greedy", beam_size=3, max_symbols_per_frame=4, las_weight=0.3)
    module = ASRLightning(model, tok, OptimConfig(), TrainOptions(loss_weights={"rnnt": 1.0}), opts)
    assert module.decoding.second_pass == "none"
    assert (module.decoding.max_symbols_per_frame, module.decoding.beam_size, module.decoding.strategy) == (4, 3, "greedy")


def test_hybrid_loss_is_the_weighted_sum_and_trains_the_ctc_head():
    """model.loss_weights {rnnt, ctc, las}: the one weighted sum of the named losses
    (L = rnnt + 0.3 ctc + 0.5 las), and the CTC head and the shared encoder get its gradient."""
    from types import SimpleNamespace

    from sonus.asr.decoding import DecodingOptions
    from sonus.asr.lightning import ASRLightning, OptimConfig, TrainOptions

    tok = CharTokenizer("abcdefg")
    model = TwoPassASR(replace(small_config(tok.vocab_size), ctc_head=True))
    weights = {"rnnt": 1.0, "ctc": 0.3, "las": 0.5}
    module = ASRLightning(model, tok, OptimConfig(), TrainOptions(loss_weights=weights), DecodingOptions())
    wave, wl, targets, tl = _batch(vocab=tok.vocab_size)
    batch = SimpleNamespace(wave=wave, wave_lengths=wl, targets=targets, target_lengths=tl)
    total, parts, *_ = module._losses(batch)
    assert set(parts) == {"rnnt", "ctc", "las"} and all(torch.isfinite(v) and v > 0 for v in parts.values())
    torch.testing.assert_close(total, parts["rnnt"] + 0.3 * parts["ctc"] + 0.5 * parts["las"])
    total.backward()
    assert model.ctc.weight.grad.abs().sum() > 0
    with_ctc = model.encoder.lstm.weight_ih_l0.grad.clone()
    model.zero_grad()
    _, parts, *_ = module._losses(batch)
    (parts["rnnt"] + 0.5 * parts["las"]).backward()
    assert not torch.allclose(with_ctc, model.encoder.lstm.weight_ih_l0.grad)  # the CTC term reaches the shared encoder
