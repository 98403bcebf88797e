import pytest
import torch

from sonus.codec.loss import codec_losses, total_loss
from sonus.codec.model import CodecConfig, SpeechTokenizer
from sonus.codec.quantize import RVQConfig
from sonus.metrics.codebook import CodebookCounter


def tiny(**kw) -> CodecConfig:
    base = {"sample_rate": 8000, "hop": 80, "n_fft": 320, "n_mels": 32, "hidden_dim": 32, "encoder_layers": 2,
            "decoder_layers": 2, "rvq": RVQConfig(dim=16, n_q=4, codebook_size=32)}  # fmt: skip
    return CodecConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", [{}, {"downsample": 2}, {"causal": True}, {"head": "mel"}])
def test_tokenize_detokenize_shapes_and_lengths(kw):
    m = SpeechTokenizer(tiny(**kw)).eval()
    for n in (800, 1234, 8000):
        x = 0.1 * torch.randn(2, n)
        codes = m.encode(x)
        frames = -(-(n // 80 + 1) // m.cfg.downsample)
        assert codes.shape == (2, 4, frames) and codes.dtype == torch.long
        assert m.decode(codes, length=n).shape == (2, n)
        assert m.decode(codes[:, :2], length=n).shape == (2, n)  # fewer quantizers: a lower bitrate


def test_causal_codes_do_not_see_the_future():
    m = SpeechTokenizer(tiny(causal=True)).eval()
    x = 0.1 * torch.randn(1, 4000)
    y = x.clone()
    y[:, 2000:] = 0.1 * torch.randn(1, 2000)
    a, b = m.encoder(m.mel(x)), m.encoder(m.mel(y))
    # frames whose STFT window ends before sample 2000 (centred frames: t * hop + n_fft / 2 <= 2000)
    last = (2000 - 160) // 80
    assert torch.allclose(a[..., : last + 1], b[..., : last + 1], atol=1e-5)
    assert not torch.allclose(a, b)


def test_save_load_round_trip(tmp_path):
    m = SpeechTokenizer(tiny())
    m.train()
    m(0.1 * torch.randn(2, 4000))  # k-means initialisation changes the codebooks
    m.eval()
    torch.save({"config": m.cfg.to_dict(), "state_dict": m.state_dict()}, tmp_path / "c.pt")
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    m2 = SpeechTokenizer(CodecConfig.from_dict(ck["config"]))
    m2.load_state_dict(ck["state_dict"])
    m2.eval()
    x = 0.1 * torch.randn(1, 3000)
    assert torch.equal(m.encode(x), m2.encode(x))
    assert torch.allclose(m.decode(m.encode(x)), m2.decode(m2.encode(x)), atol=1e-6)


def test_short_training_lowers_the_reconstruction_loss():
    torch.manual_seed(0)
    m = SpeechTokenizer(tiny())
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    t = torch.arange(4000) / 8000
    # harmonic "voices" with random pitch: structure the codec can learn
    f0 = 100 + 200 * torch.rand(8, 1)
    x = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 6)) * 0.1
    losses = []
    for _ in range(60):
        out = m(x)
        parts = codec_losses(out, x, 8000)
        loss = total_loss(parts, {"mel_l1": 1.0, "mel_mse": 0.5, "stft": 1.0, "commitment": 0.25})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(parts["mel_l1"]))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses[::10]


def test_codebook_statistics_on_a_hand_made_case():
    c = CodebookCounter(n_q=2, codebook_size=4)
    c.update(torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]]))  # (Q, T): quantizer 1 uniform, quantizer 2 one code
    c.update(torch.tensor([[[0, 1, 2, 3], [1, 1, 1, 1]]]))  # (B, Q, T)
    u = c.usage()
    assert u.used == [1.0, 0.5]
    assert u.entropy[0] == pytest.approx(1.0) and u.entropy[1] == pytest.approx(1.0 / 2)  # two codes, equally often: 1 bit of 2
    with pytest.raises(ValueError, match="do not fit"):
        c.update(torch.tensor([[4, 0, 0, 0], [0, 0, 0, 0]]))


@pytest.mark.parametrize("decay", ["cosine", "noam"])
def test_learning_rate_schedules_are_the_shared_ones(decay):
    """training.lr_decay for the codec: the warmup + decay every task uses (cosine by default), per step."""
    from sonus.codec.lightning import CodecLightning, CodecOptimConfig, CodecTrainOptions

    module = CodecLightning(SpeechTokenizer(tiny()), CodecOptimConfig(lr=1e-3, warmup_steps=10, total_steps=50, decay=decay), CodecTrainOptions())
    out = module.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(50):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3) == max(rates)
    final = 0.05e-3 if decay == "cosine" else 1e-3 * (10 / 50) ** 0.5  # noam: (warmup / step) ** 0.5
    assert rates[-1] == pytest.approx(final, rel=0.05)
