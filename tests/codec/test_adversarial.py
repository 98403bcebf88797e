"""The tokenizer's adversarial stage: discriminator shapes and losses, and a GAN training run."""

from __future__ import annotations

import pytest
import torch

from sonus.cli import main
from sonus.codec.discriminators import (
    DiscriminatorConfig,
    Discriminators,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from tests.codec.test_train import _librispeech, tiny_train_args


@pytest.mark.parametrize("length", [1600, 1603])
def test_every_sub_discriminator_gives_logits_and_features(length):
    d = Discriminators(DiscriminatorConfig(periods=(2, 3), scales=2, channels=2))
    logits, feats = d(torch.randn(3, length))
    assert len(logits) == len(feats) == 4
    for i, (lg, fs) in enumerate(zip(logits, feats, strict=True)):
        assert lg.shape[0] == 3 and lg.dim() == 2
        assert len(fs) == (6 if i < 2 else 8)  # period: 5 convs + post; scale: 7 convs + post
        assert all(f.shape[0] == 3 for f in fs)


def test_losses_on_hand_made_cases():
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert float(discriminator_loss(ones, zeros)) == 0.0  # a perfect discriminator
    assert float(discriminator_loss(zeros, ones)) == 2.0  # the worst one
    assert float(generator_loss(ones)) == 0.0 and float(generator_loss(zeros)) == 1.0
    f = [[torch.randn(2, 4, 7), torch.randn(2, 1, 3)]]
    assert float(feature_matching_loss(f, f)) == 0.0
    shifted = [[f[0][0] + 0.5, f[0][1] - 0.25]]
    assert abs(float(feature_matching_loss(f, shifted)) - (0.5 + 0.25) / 2) < 1e-6


def test_discriminator_learns_to_tell_tones_from_noise():
    torch.manual_seed(0)
    d = Discriminators(DiscriminatorConfig(periods=(2,), scales=1, channels=2))
    opt = torch.optim.Adam(d.parameters(), 3e-3)
    t = torch.arange(1600) / 8000

    def batch():
        f0 = 100 + 200 * torch.rand(4, 1)
        return 0.3 * torch.sin(2 * torch.pi * f0 * t), 0.3 * torch.randn(4, 1600)

    losses = []
    for _ in range(60):
        real, fake = batch()
        loss = discriminator_loss(d(real)[0], d(fake)[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # 2 sub-discriminators: 2.0 at the start (all outputs 0), 1.0 at chance (all 0.5)
    assert sum(losses[-5:]) / 5 < 0.5, losses


def test_gan_training_steps_both_networks_and_counts_tokenizer_steps(tmp_path):
    src = _librispeech(tmp_path / "ls")
    out = tmp_path / "exp"
    gan = ["model.adversarial.enabled=true", "model.adversarial.start_step=2", "model.adversarial.discriminator.channels=2",
           "model.adversarial.discriminator.periods=[2,3]", "model.adversarial.discriminator.scales=2"]  # fmt: skip
    args = tiny_train_args(src, out, epochs=2) + gan + ["training.precision=bf16-mixed"]  # manual clipping of fused AdamW
    assert main(args) == 0
    ck = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(s["param_groups"][0]["fused"] is True for s in ck["optimizer_states"])
    from sonus.data.audio_dataset import split_utterances
    from sonus.data.librimix import librispeech_utterances

    train, _ = split_utterances(librispeech_utterances(src), 0.2, 42)  # configs/train.yaml seed
    assert ck["global_step"] == 2 * (len(train) // 4)  # 2 epochs, drop_last; the discriminator's steps are not counted
    disc = {k: v for k, v in ck["state_dict"].items() if k.startswith("discriminator.")}
    assert disc and len(ck["optimizer_states"]) == 2
    assert ck["optimizer_states"][1]["state"], "the discriminator's optimizer never stepped"
    from sonus.codec.infer import Tokenizer

    tok = Tokenizer.from_checkpoint(out / "last.ckpt")  # the discriminators stay out of the tokenizer
    assert not any(k.startswith("discriminator") for k in tok.model.state_dict())
    assert all(torch.isfinite(torch.tensor(v)) for _, v in ck["curves"]["val/loss"])
