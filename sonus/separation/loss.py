"""Separation losses: permutation-invariant training (PIT) around SI-SDR and SNR.

Shapes: B batch, C sources, T samples. Losses are computed in fp32 with autocast off.

The metrics themselves (SI-SDR, SNR) live in :mod:`sonus.metrics.signal`; here they are
negated into losses.

Permutation-invariant training (Yu et al. 2017; Kolbaek et al. 2017): the loss of a
mixture is that of the best assignment of estimates to references. All C! permutations
are scored for C <= 3; beyond that the Hungarian algorithm finds the best assignment on
the pairwise loss matrix in O(C^3) (as asteroid's PITLossWrapper does for many sources).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from sonus.metrics.signal import si_sdr, snr

Metric = Literal["si_sdr", "snr"]


METRICS = {"si_sdr": si_sdr, "snr": snr}


def pairwise_metric(estimates: Tensor, references: Tensor, metric: Metric = "si_sdr", lengths: Tensor | None = None) -> Tensor:
    """(B, C, T) x (B, C, T) -> (B, C_est, C_ref): the metric of every estimate against every reference."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {get_args(Metric)}, got {metric!r}")
    assert estimates.dim() == 3 and estimates.shape == references.shape, (estimates.shape, references.shape)
    return METRICS[metric](estimates.unsqueeze(2), references.unsqueeze(1), lengths)  # broadcast to (B, C, C, T)


@dataclass(frozen=True)
class PITResult:
    """The best assignment per mixture.

    loss: (B,) negative mean metric under the best permutation (to minimise).
    metric: (B,) mean metric (dB) under the best permutation.
    perm: (B, C) long; estimate ``perm[b, c]`` goes with reference ``c``.
    """

    loss: Tensor
    metric: Tensor
    perm: Tensor


def best_permutation(pairwise: Tensor) -> Tensor:
    """(B, C_est, C_ref) matrix of a metric to maximise -> (B, C) best estimate index per reference.

    Exhaustive for C <= 3, the Hungarian algorithm (scipy) beyond.
    """
    b, c, c2 = pairwise.shape
    assert c == c2, pairwise.shape
    if c <= 3:
        perms = torch.tensor(list(itertools.permutations(range(c))), device=pairwise.device)  # (P, C)
        # score[b, p] = sum_c pairwise[b, perms[p, c], c]
        score = pairwise[:, perms, torch.arange(c, device=pairwise.device)].sum(-1)  # (B, P)
        return perms[score.argmax(-1)]
    from scipy.optimize import linear_sum_assignment

    cost = -pairwise.detach().float().cpu().numpy()
    out = torch.empty(b, c, dtype=torch.long)
    for i in range(b):
        est_idx, ref_idx = linear_sum_assignment(cost[i])
        out[i, torch.as_tensor(ref_idx)] = torch.as_tensor(est_idx)
    return out.to(pairwise.device)


def pit(estimates: Tensor, references: Tensor, metric: Metric = "si_sdr", lengths: Tensor | None = None) -> PITResult:
    """Permutation-invariant metric of (B, C, T) estimates against (B, C, T) references."""
    pw = pairwise_metric(estimates, references, metric, lengths)  # (B, C, C)
    perm = best_permutation(pw)  # (B, C)
    best = pw.gather(1, perm.unsqueeze(1)).squeeze(1)  # (B, C): pw[b, perm[b, c], c]
    value = best.mean(-1)
    return PITResult(loss=-value, metric=value, perm=perm)


def reorder(estimates: Tensor, perm: Tensor) -> Tensor:
    """Estimates (B, C, T) put in reference order: out[b, c] = estimates[b, perm[b, c]]."""
    return estimates.gather(1, perm.unsqueeze(-1).expand(-1, -1, estimates.shape[-1]))


def window_permutations(estimates: Tensor, references: Tensor, window: int, active_db: float = 20.0) -> tuple[Tensor, Tensor]:
    """Where a model swaps its sources within one recording: the best order of each window.

    Utterance-level PIT picks one order for a whole recording; a model that loses track of
    who is who keeps it only for stretches. The (C, T) ``estimates``, already in
    ``references`` order, are each scaled to their reference (least squares over the whole
    recording, as the SI-SDR of the recording sees them) and cut into windows of ``window``
    samples (the last one shorter); in each window the order with the least squared error
    wins (exhaustive for C <= 3, else the Hungarian algorithm).

    Returns:
        perm: (W, C) long, the best order of each window (``perm[w, c]``: the estimate that
            goes with reference ``c`` there); rows other than ``0..C-1`` are swaps.
        active: (W,) bool, windows where every reference speaks: its energy there is within
            ``active_db`` of its mean over windows. Only there does a swap mean something;
            where a source is silent, the order is decided by leakage alone.
    """
    assert estimates.dim() == 2 and estimates.shape == references.shape, (estimates.shape, references.shape)
    if window < 1:
        raise ValueError(f"window_permutations: window must be at least 1 sample, got {window}")
    est = scaled_to(estimates.float(), references.float())
    perms, energies = [], []
    for e, r in zip(est.split(window, dim=-1), references.float().split(window, dim=-1)):
        error = (e.unsqueeze(1) - r.unsqueeze(0)).pow(2).sum(-1)  # (C_est, C_ref)
        perms.append(best_permutation(-error.unsqueeze(0))[0])
        energies.append(r.pow(2).mean(-1))  # (C,)
    energy = torch.stack(energies)  # (W, C)
    floor = energy.mean(0) * 10 ** (-active_db / 10)
    return torch.stack(perms), (energy > floor).all(-1)


def scaled_to(estimates: Tensor, references: Tensor, eps: float = 1e-8) -> Tensor:
    """(C, T) estimates each times the gain that brings it closest to its reference (least squares)."""
    gain = (estimates * references).sum(-1, keepdim=True) / (estimates.pow(2).sum(-1, keepdim=True) + eps)
    return estimates * gain
