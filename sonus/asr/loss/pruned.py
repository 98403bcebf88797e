"""Pruned RNN-T (Kuang et al. 2022, as in k2/icefall), in three calls (see
``sonus.asr.model.transducer_loss``)::

    simple, occ = rnnt_loss_simple(am, lm, targets, T_b, U_b)     # additive joiner, no 4-D tensor
    ranges = prune_ranges(occ, T_b, U_b, S)                        # (B, T) window starts
    logits = joiner(enc[:, :, None], gather_pruned(pred, ranges, S))  # (B, T, S, V)
    pruned = pruned_rnnt_loss(logits, targets, ranges, T_b, U_b)

Shapes: B batch, T encoder frames, U target labels, V vocabulary, S pruning range.
"""

from __future__ import annotations

import torch

from sonus.asr.loss.lattice import arc_occupancy, pad_targets, rnnt_lattice, unalignable
from sonus.asr.loss.rnnt import (
    Reduction,
    check_inputs,
    check_reduction,
    reduce_losses,
    transducer_nll,
)


def pruned_rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ranges: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: Reduction = "mean",
    fastemit_lambda: float = 0.0,
) -> torch.Tensor:
    """Transducer loss on a pruned lattice (Kuang et al. 2022): at frame t only the nodes
    u in [ranges[b, t], ranges[b, t] + S) exist.

    Args:
        logits: (B, T, S, V) joiner outputs at those nodes (see :func:`gather_pruned`).
        targets: (B, U) labels; ranges: (B, T) window starts from :func:`prune_ranges`.
    """
    blank = check_inputs(logits, targets, logit_lengths, target_lengths, blank, reduction, S=logits.shape[2])
    B, T, S, _ = logits.shape
    if ranges.shape != (B, T):
        raise ValueError(f"ranges must be (B, T) = ({B}, {T}), got {tuple(ranges.shape)}")
    U1 = targets.shape[1] + 1
    u_index = ranges.long()[:, :, None] + torch.arange(S, device=logits.device)
    if int(u_index.max()) >= U1 or int(ranges.min()) < 0:
        raise ValueError(f"ranges + S exceed U+1 = {U1}: windows must lie inside the lattice")
    losses = transducer_nll(logits, targets, logit_lengths, target_lengths, u_index, blank, fastemit_lambda=fastemit_lambda)
    return reduce_losses(losses, reduction)


class _LatticeNLL(torch.autograd.Function):
    """-log P from arc log-probabilities (B, T, U+1) with the analytic gradient (minus the
    arc occupancies). Also returns the node occupancy (B, T, U+1), not differentiable."""

    @staticmethod
    def forward(ctx, blank_lp, label_lp, logit_lengths, target_lengths, fastemit_lambda):
        b64, y64 = blank_lp.double(), label_lp.double()
        alpha, beta, log_like = rnnt_lattice(b64, y64, logit_lengths, target_lengths)
        bad = unalignable(log_like, logit_lengths, "rnnt_loss_simple")
        g_blank, g_label = arc_occupancy(alpha, beta, b64, y64, log_like, logit_lengths, target_lengths, bad)
        node_occ = (g_blank + g_label).to(blank_lp.dtype)
        ctx.save_for_backward(-g_blank.to(blank_lp.dtype), (-g_label * (1.0 + fastemit_lambda)).to(label_lp.dtype))
        ctx.mark_non_differentiable(node_occ)
        return torch.where(bad, torch.zeros_like(log_like), -log_like).to(blank_lp.dtype), node_occ

    @staticmethod
    def backward(ctx, grad_losses, _grad_occ):
        gb, gy = ctx.saved_tensors
        s = grad_losses[:, None, None]
        return gb * s, gy * s, None, None, None


class _SimpleArcs(torch.autograd.Function):
    """Arc log-probabilities of the additive joiner, (B, T, U+1) each:

        blank_lp[b, t, u] = am[b, t, blank] + lm[b, u, blank] - norm[b, t, u]
        label_lp[b, t, u] = am[b, t, y_u] + lm[b, u, y_u] - norm[b, t, u]
        norm[b, t, u] = log sum_v exp(am[b, t, v] + lm[b, u, v])

    ``norm`` is one batched matrix product of the shifted exponentials, and the gradient is
    written out, so autograd keeps no (B, T, V) intermediate. With E_am = exp(am - max),
    E_lm = exp(lm - max), G = -(g_blank + g_label) * exp(max_am + max_lm - norm):

        d/d am = E_am * (G @ E_lm) + the gathered terms scattered back,
        d/d lm = E_lm * (G^T @ E_am) + the same, summed over t.
    """

    @staticmethod
    def forward(ctx, am, lm, tgt, blank):
        B, T, _ = am.shape
        U1 = lm.shape[1]
        am_max = am.max(-1, keepdim=True).values  # (B, T, 1)
        lm_max = lm.max(-1, keepdim=True).values  # (B, U+1, 1)
        norm = torch.bmm((am - am_max).exp_(), (lm - lm_max).exp_().transpose(1, 2))  # (B, T, U+1)
        norm = norm.clamp_(min=1e-30).log_().add_(am_max).add_(lm_max.transpose(1, 2))
        blank_lp = am[:, :, blank, None] + lm[:, None, :, blank] - norm
        label_lp = am.gather(2, tgt[:, None, :].expand(B, T, U1)) + lm.gather(2, tgt[:, :, None]).transpose(1, 2) - norm
        ctx.blank = blank
        ctx.save_for_backward(am, lm, tgt, am_max, lm_max, norm)
        return blank_lp, label_lp

    @staticmethod
    def backward(ctx, g_blank, g_label):
        am, lm, tgt, am_max, lm_max, norm = ctx.saved_tensors
        B, T, _ = am.shape
        blank = ctx.blank
        g = -(g_blank + g_label) * (am_max + lm_max.transpose(1, 2) - norm).exp()  # (B, T, U+1)
        e_am = (am - am_max).exp_()
        grad_lm = torch.bmm(g.transpose(1, 2), e_am).mul_((lm - lm_max).exp_())  # (B, U+1, V)
        grad_am = torch.bmm(g, (lm - lm_max).exp_()).mul_(e_am)  # (B, T, V)
        del e_am
        grad_am[:, :, blank] += g_blank.sum(2)
        grad_am.scatter_add_(2, tgt[:, None, :].expand(B, T, tgt.shape[1]), g_label)
        grad_lm[:, :, blank] += g_blank.sum(1)
        grad_lm.scatter_add_(2, tgt[:, :, None], g_label.sum(1)[:, :, None])
        return grad_am, grad_lm, None, None


def rnnt_loss_simple(
    am: torch.Tensor,
    lm: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: Reduction = "mean",
    fastemit_lambda: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transducer loss of the additive joiner ``logits[b, t, u] = am[b, t] + lm[b, u]``
    without building the (B, T, U+1, V) tensor: its log-normaliser is
    ``log(exp(am) @ exp(lm)^T)``, one batched matrix product.

    Args:
        am: (B, T, V) encoder-side logits; lm: (B, U+1, V) prediction-side logits.

    Returns:
        (loss, node occupancy (B, T, U+1)): the occupancy, the posterior probability that
        the alignment passes through (t, u), is what :func:`prune_ranges` reads.
    """
    check_reduction(reduction)
    B, _, V = am.shape
    if lm.dim() != 3 or lm.shape[0] != B or lm.shape[2] != V:
        raise ValueError(f"lm must be (B, U+1, V) = ({B}, U+1, {V}), got {tuple(lm.shape)}")
    if targets.shape != (B, lm.shape[1] - 1):
        raise ValueError(f"targets must be (B, U) = ({B}, {lm.shape[1] - 1}), got {tuple(targets.shape)}")
    blank = blank % V
    with torch.autocast(device_type=am.device.type, enabled=False):
        am, lm = am.float(), lm.float()
        blank_lp, label_lp = _SimpleArcs.apply(am, lm, pad_targets(targets), blank)  # (B, T, U+1) each
        losses, occ = _LatticeNLL.apply(
            blank_lp, label_lp, logit_lengths.to(am.device).long(), target_lengths.to(am.device).long(), float(fastemit_lambda)
        )
    return reduce_losses(losses, reduction), occ


def prune_ranges(occupancy: torch.Tensor, logit_lengths: torch.Tensor, target_lengths: torch.Tensor, S: int) -> torch.Tensor:
    """Window starts (B, T) for the pruned loss: at each frame the S consecutive label
    positions holding the most alignment mass, adjusted so the pruned lattice stays connected.

    Guarantees, per sequence: starts[0] = 0 (where feasible), non-decreasing, jumps of at most
    S - 1 between frames, the last valid frame's window contains U_b, and every window
    lies inside [0, U] so it can index the (B, U+1) prediction outputs.
    """
    B, T, U1 = occupancy.shape
    S = min(S, U1)
    dev = occupancy.device
    top = (target_lengths.long() - S + 1).clamp(min=0)[:, None]  # (B, 1) highest start that stays inside U_b
    csum = torch.cat([occupancy.new_zeros(B, T, 1), occupancy.float().cumsum(2)], dim=2)  # (B, T, U+2)
    window = csum[:, :, S:] - csum[:, :, : U1 - S + 1]  # (B, T, U+2-S): mass of [s, s+S)
    s = torch.minimum(window.argmax(2), top)
    t_idx = torch.arange(T, device=dev)[None, :]
    step = S - 1
    # Reachable from (0, 0) with jumps of at most S - 1, and still able to reach U_b at the
    # last frame (where the window must hold U_b).
    last = (logit_lengths.long() - 1)[:, None]
    s = torch.minimum(s, t_idx * step)
    s = torch.maximum(s, top - (last - t_idx).clamp(min=0) * step)
    s = torch.where(t_idx >= last, top.expand(B, T), s)
    s = torch.cummax(s, dim=1).values  # non-decreasing
    # Raise earlier starts so no jump exceeds S - 1: s'[t] = max_{k >= t} (s[k] - (k - t)(S - 1)).
    shifted = s - t_idx * step
    s = torch.flip(torch.cummax(torch.flip(shifted, [1]), dim=1).values, [1]) + t_idx * step
    s[:, 0] = 0  # changes s only when U_b > (T_b - 1)(S - 1) + S - 1: that sequence gets loss 0 and a warning
    return s


def gather_pruned(pred: torch.Tensor, ranges: torch.Tensor, S: int) -> torch.Tensor:
    """(B, U+1, H) prediction-side features -> (B, T, S, H) at u = ranges[b, t] + s."""
    B, U1, H = pred.shape
    T = ranges.shape[1]
    S = min(S, U1)
    # Rows of the flattened (B * (U+1), H) matrix: index_select's backward (index_add_) runs
    # about 10x faster on CPU than gather's scatter_add_ along dim 1.
    rows = ranges.long()[:, :, None] + torch.arange(S, device=pred.device) + (torch.arange(B, device=pred.device) * U1)[:, None, None]
    return pred.reshape(B * U1, H).index_select(0, rows.reshape(-1)).reshape(B, T, S, H)
