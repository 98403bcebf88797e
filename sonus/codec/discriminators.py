"""Discriminators of the tokenizer's optional adversarial stage (HiFi-GAN, Kong et al. 2020).

- multi-period (MPD): the waveform folded into (S / p, p) for each period p, seen by 2-D
  convolutions that stride along the folded time axis only, so each looks at samples p apart
  (periodic structure: pitch, harmonics);
- multi-scale (MSD, MelGAN): 1-D grouped convolutions on the waveform at full rate and
  average-pooled by 2 and 4 (structure at several time scales).

Every sub-discriminator returns its logits and the feature maps of every layer, for the
feature-matching loss. ``channels`` scales the widths: 32 gives HiFi-GAN's sizes (MPD 32 to
1024 channels, MSD 128 to 1024); 8 is a CPU-sized quarter.

Shapes: B batch, S samples; inputs are (B, 1, S).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

Features = list[Tensor]


@dataclass(frozen=True)
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    scales: int = 3  # MSD: the waveform, then average-pooled by 2, 4, ...
    channels: int = 32  # width multiplier (32: HiFi-GAN)

    def __post_init__(self) -> None:
        object.__setattr__(self, "periods", tuple(int(p) for p in self.periods))
        bad = {}
        if any(p < 2 for p in self.periods):
            bad["periods"] = self.periods
        if self.scales < 0:
            bad["scales"] = self.scales
        if self.channels < 1:
            bad["channels"] = self.channels
        if not self.periods and self.scales == 0:
            bad["periods/scales"] = "no discriminator: give periods or scales > 0"
        if bad:
            raise ValueError(f"DiscriminatorConfig: invalid values {bad}")


def _run_layers(convs: nn.ModuleList, post: nn.Module, x: Tensor) -> tuple[Tensor, Features]:
    """Convolutions with leaky ReLU (0.1), then ``post``: (flattened logits, every layer's output)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, channels: int) -> None:
        super().__init__()
        self.period = period
        widths = [1, channels, 4 * channels, 16 * channels, 32 * channels, 32 * channels]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)))
            for i, (c_in, c_out) in enumerate(pairwise(widths))
        )
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        """(B, 1, S) -> logits (B, N) and the feature maps."""
        pad = -x.shape[-1] % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect" if pad < x.shape[-1] else "constant")
        return _run_layers(self.convs, self.post, x.view(x.shape[0], 1, -1, self.period))  # (B, 1, S / p, p)


class ScaleDiscriminator(nn.Module):
    # (out width as a multiple of ``channels``, kernel, stride, groups) after a first 15-tap conv
    LAYERS = ((4, 41, 2, 4), (8, 41, 2, 16), (16, 41, 4, 16), (32, 41, 4, 16), (32, 41, 1, 16), (32, 5, 1, 1))

    def __init__(self, channels: int) -> None:
        super().__init__()
        convs, c_in = [weight_norm(nn.Conv1d(1, 4 * channels, 15, padding=7))], 4 * channels
        for mult, k, s, g in self.LAYERS:
            c_out = mult * channels
            convs.append(weight_norm(nn.Conv1d(c_in, c_out, k, s, groups=g if c_in % g == 0 and c_out % g == 0 else 1, padding=k // 2)))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.post = weight_norm(nn.Conv1d(c_in, 1, 3, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, Features]:
        """(B, 1, S) -> logits (B, N) and the feature maps."""
        return _run_layers(self.convs, self.post, x)


class Discriminators(nn.Module):
    """Every period and scale sub-discriminator; ``forward`` returns their logits and features."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.period = nn.ModuleList(PeriodDiscriminator(p, cfg.channels) for p in cfg.periods)
        self.scale = nn.ModuleList(ScaleDiscriminator(cfg.channels) for _ in range(cfg.scales))

    def forward(self, wave: Tensor) -> tuple[list[Tensor], list[Features]]:
        """(B, S) -> a list of logits (B, N_i) and a list of feature-map lists, one per sub-discriminator."""
        x = wave.float()[:, None]
        outs = [d(x) for d in self.period]
        for i, d in enumerate(self.scale):
            outs.append(d(x if i == 0 else F.avg_pool1d(x, 2**i * 2, 2**i, padding=2**i)))
        return [o[0] for o in outs], [o[1] for o in outs]


def discriminator_loss(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """LSGAN (Mao et al. 2017), as HiFi-GAN: sum over sub-discriminators of E[(1 - D(x))^2] + E[D(G(z))^2]."""
    return sum(torch.mean((1 - r.float()) ** 2) + torch.mean(f.float() ** 2) for r, f in zip(real, fake, strict=True))


def generator_loss(fake: list[Tensor]) -> Tensor:
    """LSGAN generator term: sum over sub-discriminators of E[(1 - D(G(z)))^2]."""
    return sum(torch.mean((1 - f.float()) ** 2) for f in fake)


def feature_matching_loss(real: list[Features], fake: list[Features]) -> Tensor:
    """Mean over layers of L1(features of the reconstruction, features of the input), summed over
    sub-discriminators (HiFi-GAN); the input's features are constants."""
    total = []
    for rs, fs in zip(real, fake, strict=True):
        total.append(torch.stack([F.l1_loss(f.float(), r.detach().float()) for r, f in zip(rs, fs, strict=True)]).mean())
    return torch.stack(total).sum()
