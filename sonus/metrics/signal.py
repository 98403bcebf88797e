"""Signal-level quality metrics shared by separation and the codec: SI-SDR, SNR, SDR, PESQ, STOI.

Torch functions (``si_sdr``, ``snr``) are differentiable and serve as losses; they compute
in fp32 with autocast off, because an ``eps`` of 1e-8 is zero in fp16 (the NaN the PolSESS
brief had to patch around). The others score numpy arrays for evaluation and wrap the
reference implementations: BSS Eval SDR with a 512-tap distortion filter,
as mir_eval/museval, computed here), pesq (ITU-T P.862) and pystoi.

SI-SDR (Le Roux et al. 2019, "SDR – half-baked or well done?"), zero-mean signals::

    s_target = <s_hat, s> s / ||s||^2          e = s_hat - s_target
    SI-SDR   = 10 log10(||s_target||^2 / ||e||^2)

SNR = 10 log10(||s||^2 / ||s_hat - s||^2), not scale-invariant.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

EPS = 1e-8


def _mask(x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Zero the padding of x (B, ..., T); also return the (B, 1.., T) mask (None: no padding)."""
    if lengths is None:
        return x, None
    t = torch.arange(x.shape[-1], device=x.device)
    m = (t < lengths.view(-1, *([1] * (x.dim() - 1)))).to(x.dtype)  # (B, 1.., T)
    return x * m, m


def si_sdr(estimate: Tensor, reference: Tensor, lengths: Tensor | None = None, zero_mean: bool = True, eps: float = EPS) -> Tensor:
    """Scale-invariant SDR in dB, (..., T) x (..., T) -> (...).

    Args:
        estimate, reference: broadcastable shapes (B, ..., T).
        lengths: (B,) valid samples of each batch item; samples beyond are ignored.
        zero_mean: subtract each signal's mean first (the usual definition).
    """
    with torch.autocast(estimate.device.type, enabled=False):
        est, m = _mask(estimate.float(), lengths)
        ref, _ = _mask(reference.float(), lengths)
        if zero_mean:
            n = m.sum(-1, keepdim=True) if m is not None else est.shape[-1]
            est = est - est.sum(-1, keepdim=True) / n
            ref = ref - ref.sum(-1, keepdim=True) / n
            if m is not None:
                est, ref = est * m, ref * m
        dot = (est * ref).sum(-1, keepdim=True)
        target = dot * ref / (ref.pow(2).sum(-1, keepdim=True) + eps)
        noise = est - target
        return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def snr(estimate: Tensor, reference: Tensor, lengths: Tensor | None = None, eps: float = EPS) -> Tensor:
    """Signal-to-noise ratio in dB, (..., T) x (..., T) -> (...)."""
    with torch.autocast(estimate.device.type, enabled=False):
        est, _ = _mask(estimate.float(), lengths)
        ref, _ = _mask(reference.float(), lengths)
        return 10 * torch.log10((ref.pow(2).sum(-1) + eps) / ((est - ref).pow(2).sum(-1) + eps))


def bss_sdr(estimates: np.ndarray, references: np.ndarray, filter_length: int = 512) -> np.ndarray:
    """BSS Eval SDR (dB) of (C, T) estimates already matched to (C, T) references -> (C,).

    As ``bss_eval_sources`` (Vincent et al. 2006; mir_eval, museval v4): the target is the
    estimate's projection on ``filter_length`` delayed copies of its reference (a distortion
    filter is allowed), the rest is error. With R the reference's autocorrelation (Toeplitz)
    and b its cross-correlation with the estimate, R h = b and
    SDR = 10 log10(h.b / (|est|^2 - h.b)). A silent reference or estimate gives NaN.
    Equal to fast_bss_eval.sdr to 1e-6 dB; that package is not used: its numpy path breaks on
    numpy 2 and its torch path failed intermittently (lu_solve pivots) in our test runs.
    """
    from scipy.linalg import solve_toeplitz

    est, ref = np.asarray(estimates, np.float64), np.asarray(references, np.float64)
    assert est.shape == ref.shape and est.ndim == 2, (est.shape, ref.shape)
    n = est.shape[-1]
    k = min(filter_length, n)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    out = np.full(len(ref), math.nan)
    for c in range(len(ref)):
        e_energy = float(est[c] @ est[c])
        if not np.any(ref[c]) or e_energy == 0:
            continue
        fr, fe = np.fft.rfft(ref[c], size), np.fft.rfft(est[c], size)
        acf = np.fft.irfft(np.abs(fr) ** 2, size)[:k]  # R's first column
        xcf = np.fft.irfft(np.conj(fr) * fe, size)[:k]  # b[l] = sum_t ref[t] est[t + l]
        acf[0] *= 1 + 1e-10  # diagonal loading, as bss_eval does, for a nearly singular R
        h = solve_toeplitz(acf, xcf)
        target = float(h @ xcf)
        out[c] = 10 * math.log10(max(target, 1e-20) / max(e_energy - target, 1e-20))
    return out


def pesq_score(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """PESQ (ITU-T P.862): narrow band at 8 kHz, wide band at 16 kHz; other rates are resampled to 16 kHz.

    Returns NaN (with a log message) where PESQ finds no speech in the reference.
    """
    from pesq import NoUtterancesError, pesq

    from sonus.audio.io import resample

    est, ref = np.asarray(estimate, np.float32), np.asarray(reference, np.float32)
    if sample_rate not in (8000, 16000):
        est, ref, sample_rate = resample(est, sample_rate, 16000), resample(ref, sample_rate, 16000), 16000
    try:
        return float(pesq(sample_rate, ref, est, "nb" if sample_rate == 8000 else "wb"))
    except NoUtterancesError:
        log.info("PESQ: no utterance detected in the reference; scored NaN")
        return math.nan


def stoi_score(estimate: np.ndarray, reference: np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """STOI (Taal et al. 2011), or extended STOI; pystoi resamples to 10 kHz itself."""
    from pystoi import stoi

    return float(stoi(np.asarray(reference, np.float64), np.asarray(estimate, np.float64), sample_rate, extended=extended))
