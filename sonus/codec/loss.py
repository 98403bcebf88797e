"""Reconstruction losses of the speech tokenizer, as pure functions, summed with config weights.

Shapes: B batch, S samples, M mel bins, T frames. All computed in fp32 with autocast off.

- mel L1 and mel MSE on natural-log mel power (the brief: L1 + 0.5 MSE);
- multi-resolution STFT loss (Yamamoto et al. 2020, Parallel WaveGAN): at each resolution,
  spectral convergence ||S - S_hat||_F / ||S||_F plus the L1 distance of log magnitudes;
- commitment (and, for learned codebooks, codebook) losses from the quantizer (the brief: 0.25).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sonus.codec.model import CodecOutput

# adversarial, feature_matching: the GAN stage's terms (HiFi-GAN: 1 and 2), present only when it runs
DEFAULT_WEIGHTS = {"mel_l1": 1.0, "mel_mse": 0.5, "stft": 1.0, "commitment": 0.25, "codebook": 1.0, "adversarial": 1.0, "feature_matching": 2.0}
# (n_fft, hop) at 24 kHz; scaled with the sample rate
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def stft_loss(estimate: Tensor, reference: Tensor, n_fft: int, hop: int) -> Tensor:
    """Spectral convergence + log-magnitude L1 at one resolution; (B, S) x (B, S) -> scalar."""
    window = torch.hann_window(n_fft, device=estimate.device)
    est = torch.stft(estimate, n_fft, hop, window=window, return_complex=True).abs()
    ref = torch.stft(reference, n_fft, hop, window=window, return_complex=True).abs()
    sc = torch.linalg.norm(ref - est, dim=(1, 2)) / torch.linalg.norm(ref, dim=(1, 2)).clamp_min(1e-7)
    mag = F.l1_loss(torch.log(est.clamp_min(1e-7)), torch.log(ref.clamp_min(1e-7)))
    return sc.mean() + mag


def multi_resolution_stft_loss(estimate: Tensor, reference: Tensor, sample_rate: int, resolutions: Sequence[tuple[int, int]] = STFT_RESOLUTIONS) -> Tensor:
    """Mean of :func:`stft_loss` over ``resolutions`` (given at 24 kHz, scaled to ``sample_rate``)."""
    scale = sample_rate / 24000
    losses = []
    for n_fft, hop in resolutions:
        n = max(64, int(2 ** round(torch.log2(torch.tensor(n_fft * scale)).item())))
        losses.append(stft_loss(estimate, reference, n, max(16, int(hop * scale))))
    return torch.stack(losses).mean()


def codec_losses(out: CodecOutput, wave: Tensor, sample_rate: int) -> dict[str, Tensor]:
    """Every named loss of one reconstruction (fp32): mel_l1, mel_mse, stft (waveform heads), commitment, codebook."""
    with torch.autocast(wave.device.type, enabled=False):
        mel, target = out.mel.float(), out.mel_target.float()
        t = min(mel.shape[-1], target.shape[-1])
        parts = {
            "mel_l1": F.l1_loss(mel[..., :t], target[..., :t]),
            "mel_mse": F.mse_loss(mel[..., :t], target[..., :t]),
            "commitment": out.quantized.commitment.float(),
            "codebook": out.quantized.codebook.float(),
        }
        if out.wave is not None:
            parts["stft"] = multi_resolution_stft_loss(out.wave.float(), wave.float(), sample_rate)
    return parts


def total_loss(parts: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """sum_k weights[k] * parts[k] over the parts present; a weight without a part is ignored."""
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
    return sum(float(weights.get(k, 0.0)) * v for k, v in parts.items())
