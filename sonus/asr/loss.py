"""RNN-Transducer losses: the full loss (a drop-in for ``torchaudio.functional.rnnt_loss``),
the pruned loss of Kuang et al. 2022 (k2/icefall) with its "simple" additive-joiner loss,
FastEmit regularisation (Yu et al. 2021), and a plain autograd reference.

Shapes: B batch, T encoder frames, U target labels, V vocabulary (blank included),
S pruning range (window width along U).

Recursion (log space). With ``b[t,u] = log P(blank | t, u)`` and
``y[t,u] = log P(targets[u] | t, u)``::

    alpha[0, 0] = 0
    alpha[t, u] = logaddexp(alpha[t-1, u] + b[t-1, u],  alpha[t, u-1] + y[t, u-1])
    log P(targets | x) = alpha[T-1, U] + b[T-1, U]

    beta[T-1, U] = b[T-1, U]
    beta[t, u]   = logaddexp(beta[t+1, u] + b[t, u],  beta[t, u+1] + y[t, u])

The lattice is B x T x (U+1); only the two gathered log-probabilities ``b`` and ``y``
enter the recursions. Within one frame ``t`` the ``u`` recursion is a log-cumulative-sum,
so each frame is a handful of vectorised ops (``torch.logcumsumexp``) instead of U.

Memory (the full loss). The B x T x (U+1) x V logits are the big tensor. The forward pass
reads them twice (a log-sum-exp over V, then the gradient) and writes exactly one tensor
of their size: the analytic gradient (softmax minus the occupation of the outgoing arcs).
No log-probabilities are kept and autograd keeps no graph over the 4-D tensor. The backward
pass scales that buffer in place and hands it over, so a second ``backward`` through the
same loss is an error (call the loss again instead).

dtype policy: the loss is computed in fp32 (the recursions in fp64), even under autocast
and for half-precision logits (processed in chunks of utterances so the fp32 copies stay
small); the gradient is returned in the logits' dtype. fp64 logits are computed in fp64.

Sequences that cannot be aligned (``logit_lengths == 0``, or a probability that
underflows to zero) get loss 0 and a zero gradient, with a warning, so one bad
utterance never turns the batch's loss into NaN or inf (``torch.nn.CTCLoss``'s
``zero_infinity=True`` behaviour).

FastEmit: with ``fastemit_lambda = l > 0`` the gradient that flows through label arcs is
scaled by (1 + l) (the regulariser's gradient, as warp-transducer and NeMo apply it);
the returned loss value stays the plain negative log-likelihood.

Pruned RNN-T, in three calls (see ``TwoPassASR.losses``)::

    simple, occ = rnnt_loss_simple(am, lm, targets, T_b, U_b)     # additive joiner, no 4-D tensor
    ranges = prune_ranges(occ, T_b, U_b, S)                        # (B, T) window starts
    logits = joiner(enc[:, :, None], gather_pruned(pred, ranges, S))  # (B, T, S, V)
    pruned = pruned_rnnt_loss(logits, targets, ranges, T_b, U_b)
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")
_BLOCKED = -1.0e4  # log-probability standing in for -inf inside the cumulative sums
_CHUNK_ELEMENTS = 1 << 22  # elements of the 4-D tensor processed at once in fp32 (16 MB)


# --------------------------------------------------------------------------------------
# The lattice
# --------------------------------------------------------------------------------------
def _log_cumsum_forward(a_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """alpha[u] = logaddexp(a_in[u], alpha[u-1] + y[u-1]) for all u at once.

    a_in: (B, U+1) arrivals from the previous frame; y: (B, U+1) finite label log-probs.
    """
    c = torch.cat([y.new_zeros(y.shape[0], 1), torch.cumsum(y[:, :-1], dim=1)], dim=1)  # c[u] = sum_{k<u} y[k]
    return c + torch.logcumsumexp(a_in - c, dim=1)


def _log_cumsum_backward(b_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """beta[u] = logaddexp(b_in[u], beta[u+1] + y[u]) for all u at once (right to left)."""
    c = torch.cat([y.new_zeros(y.shape[0], 1), torch.cumsum(y[:, :-1], dim=1)], dim=1)
    rev = torch.logcumsumexp((b_in + c).flip(1), dim=1).flip(1)
    return rev - c


def rnnt_lattice(
    blank_lp: torch.Tensor, label_lp: torch.Tensor, logit_lengths: torch.Tensor, target_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward variables of the transducer lattice.

    Args:
        blank_lp: (B, T, U+1) log P(blank | t, u); -inf marks an arc that does not exist.
        label_lp: (B, T, U+1) log P(targets[u] | t, u); the last column is unused.
        logit_lengths: (B,) valid frames T_b.
        target_lengths: (B,) valid labels U_b.

    Returns:
        alpha (B, T, U+1), beta (B, T, U+1), log_like (B,). Entries outside a
        sequence's lattice are -inf.
    """
    B, T, U1 = blank_lp.shape
    dev, dt = blank_lp.device, blank_lp.dtype
    neg_inf = torch.tensor(float("-inf"), device=dev, dtype=dt)
    u_idx = torch.arange(U1, device=dev)
    inside_u = u_idx[None, :] <= target_lengths[:, None]  # (B, U+1)
    # A label arc leaves (t, u) only for u < U_b. Missing arcs become a huge negative
    # number rather than -inf, so the cumulative sums stay finite (exp() of it is 0).
    label_lp = torch.where(u_idx[None, None, :] < target_lengths[:, None, None], label_lp, neg_inf)
    label_lp_c = label_lp.clamp(min=_BLOCKED)

    alpha = torch.full((B, T, U1), float("-inf"), device=dev, dtype=dt)
    a_in = torch.full((B, U1), float("-inf"), device=dev, dtype=dt)
    a_in[:, 0] = 0.0
    for t in range(T):
        if t > 0:
            a_in = alpha[:, t - 1] + blank_lp[:, t - 1]
        a = _log_cumsum_forward(a_in, label_lp_c[:, t])
        alpha[:, t] = torch.where(inside_u, a, neg_inf)

    beta = torch.full((B, T, U1), float("-inf"), device=dev, dtype=dt)
    final = torch.where(u_idx[None, :] == target_lengths[:, None], 0.0, float("-inf")).to(dt)  # (B, U+1)
    b_next = torch.full((B, U1), float("-inf"), device=dev, dtype=dt)
    for t in range(T - 1, -1, -1):
        is_last = (logit_lengths - 1 == t)[:, None]
        b_next = torch.where(is_last, final, b_next)  # virtual beta[T_b] = one-hot at U_b
        b_in = blank_lp[:, t] + b_next
        b = _log_cumsum_backward(b_in, label_lp_c[:, t])
        b = torch.where(inside_u & (t < logit_lengths)[:, None], b, neg_inf)
        beta[:, t] = b
        b_next = b

    log_like = beta[:, 0, 0]
    return alpha, beta, log_like


def _arc_occupancy(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    log_like: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    bad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior probability of each blank and label arc, (B, T, U+1) each: the negative
    gradient of the log-likelihood with respect to that arc's log-probability."""
    B, T, U1 = alpha.shape
    u_idx = torch.arange(U1, device=alpha.device)
    t_idx = torch.arange(T, device=alpha.device)
    beta_next_t = torch.cat([beta[:, 1:], beta.new_full((B, 1, U1), float("-inf"))], dim=1)
    final = (t_idx[None, :, None] == (logit_lengths - 1)[:, None, None]) & (u_idx[None, None, :] == target_lengths[:, None, None])
    beta_next_t = torch.where(final, torch.zeros_like(beta_next_t), beta_next_t)
    beta_next_u = torch.cat([beta[:, :, 1:], beta.new_full((B, T, 1), float("-inf"))], dim=2)
    norm = torch.where(bad, torch.zeros_like(log_like), log_like)[:, None, None]
    g_blank = torch.exp(alpha + blank_lp + beta_next_t - norm)
    g_label = torch.exp(alpha + label_lp + beta_next_u - norm)
    g_label = torch.where(u_idx[None, None, :] < target_lengths[:, None, None], g_label, 0.0)
    zero = bad[:, None, None]
    g_blank = torch.where(zero, 0.0, torch.nan_to_num(g_blank, nan=0.0))
    g_label = torch.where(zero, 0.0, torch.nan_to_num(g_label, nan=0.0))
    return g_blank, g_label


def _unalignable(log_like: torch.Tensor, logit_lengths: torch.Tensor, what: str) -> torch.Tensor:
    bad = ~torch.isfinite(log_like) | (logit_lengths <= 0)
    if bool(bad.any()):
        warnings.warn(
            f"{what}: {int(bad.sum())} sequence(s) cannot be aligned (batch index "
            f"{bad.nonzero().flatten().tolist()}); their loss is set to 0 and gradient to 0",
            stacklevel=4,
        )
    return bad


# --------------------------------------------------------------------------------------
# Full and pruned loss: one autograd Function over (B, T, S, V) logits
# --------------------------------------------------------------------------------------
def _chunks(B: int, per_item: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    for b0 in range(0, B, step):
        yield slice(b0, min(B, b0 + step))


class _TransducerLoss(torch.autograd.Function):
    """Negative log-likelihood of a transducer lattice whose arcs come from ``logits``.

    ``logits`` (B, T, S, V) hold the joiner output for lattice nodes (t, u_index[b, t, s]);
    the full loss has S = U+1 and u_index = s, the pruned loss a window per frame.
    """

    @staticmethod
    def forward(ctx, logits, targets, logit_lengths, target_lengths, u_index, blank, clamp, fastemit_lambda, fused=True):
        B, T, S, V = logits.shape
        U1 = targets.shape[1] + 1
        cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
        tgt_pad = torch.cat([targets.long(), targets.new_zeros(B, 1).long()], dim=1)  # (B, U+1)
        full = u_index is None
        if full:
            tgt = tgt_pad[:, None, :].expand(B, T, U1)
        else:
            tgt = tgt_pad.gather(1, u_index.reshape(B, T * S)).reshape(B, T, S)
        tgt_idx = tgt[..., None]  # (B, T, S, 1)

        # Arc log-probabilities: logit - logsumexp over V, a chunk of utterances at a time.
        blank_s = torch.empty(B, T, S, dtype=torch.float64, device=logits.device)
        label_s = torch.empty_like(blank_s)
        lse = torch.empty(B, T, S, dtype=cdt, device=logits.device)
        for c in _chunks(B, T * S * V):
            x = logits[c].to(cdt)
            lse[c] = torch.logsumexp(x, dim=-1) if fused else 0.0  # unfused: x are log-probabilities
            blank_s[c] = (x[..., blank] - lse[c]).double()
            label_s[c] = (x.gather(3, tgt_idx[c]).squeeze(3) - lse[c]).double()
            del x
        if full:
            blank_lp, label_lp = blank_s, label_s
        else:  # scatter the window into the full lattice; everything else has no arcs
            blank_lp = blank_s.new_full((B, T, U1), float("-inf")).scatter_(2, u_index, blank_s)
            label_lp = label_s.new_full((B, T, U1), float("-inf")).scatter_(2, u_index, label_s)

        alpha, beta, log_like = rnnt_lattice(blank_lp, label_lp, logit_lengths, target_lengths)
        bad = _unalignable(log_like, logit_lengths, "rnnt_loss" if full else "pruned_rnnt_loss")
        losses = torch.where(bad, torch.zeros_like(log_like), -log_like)
        g_blank, g_label = _arc_occupancy(alpha, beta, blank_lp, label_lp, log_like, logit_lengths, target_lengths, bad)
        if not full:
            g_blank, g_label = g_blank.gather(2, u_index), g_label.gather(2, u_index)
        if fastemit_lambda:
            g_label = g_label * (1.0 + fastemit_lambda)
        g_blank, g_label = g_blank.to(cdt), g_label.to(cdt)

        # dL/dz = softmax(z) * (g_blank + g_label) - g_blank * 1[v=blank] - g_label * 1[v=y]
        grad = torch.empty_like(logits)
        g_sum = (g_blank + g_label)[..., None]
        for c in _chunks(B, T * S * V):
            g = grad[c] if grad.dtype == cdt else torch.empty(grad[c].shape, dtype=cdt, device=grad.device)
            if fused:
                torch.sub(logits[c].to(cdt), lse[c][..., None], out=g)
                g.exp_().mul_(g_sum[c])
            else:  # the gradient with respect to log-probabilities: only the arcs' own terms
                g.zero_()
            g[..., blank] -= g_blank[c]
            g.scatter_add_(3, tgt_idx[c], -g_label[c][..., None])
            if clamp > 0:
                g.clamp_(-clamp, clamp)
            if g.data_ptr() != grad[c].data_ptr():
                grad[c] = g
        ctx.grad = grad  # handed over (and scaled in place) in backward
        return losses.to(torch.float32 if cdt == torch.float32 else cdt)

    @staticmethod
    def backward(ctx, grad_losses):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("rnnt_loss: backward was already run through this loss; compute the loss again")
        ctx.grad = None
        if not bool((grad_losses == 1).all()):
            grad.mul_(grad_losses.to(grad.dtype)[:, None, None, None])
        return grad, None, None, None, None, None, None, None, None


def _check(logits, targets, logit_lengths, target_lengths, blank, reduction, S=None) -> int:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dim() != 4:
        raise ValueError(f"logits must be 4-D (B, T, U+1 or S, V), got shape {tuple(logits.shape)}")
    B, T, S_, V = logits.shape
    U = targets.shape[1] if targets.dim() == 2 else -1
    if targets.dim() != 2 or targets.shape[0] != B or (S is None and U != S_ - 1):
        want = f"({B}, {S_ - 1})" if S is None else f"({B}, U)"
        raise ValueError(f"targets must be (B, U) = {want}, got {tuple(targets.shape)}")
    if logit_lengths.shape != (B,) or target_lengths.shape != (B,):
        raise ValueError(f"lengths must be ({B},): {tuple(logit_lengths.shape)}, {tuple(target_lengths.shape)}")
    if blank < 0:
        blank += V
    if not 0 <= blank < V:
        raise ValueError(f"blank={blank} out of range for V={V}")
    if B and (int(logit_lengths.max()) > T or int(target_lengths.max()) > U):
        raise ValueError(
            f"lengths exceed the inputs: max logit_length {int(logit_lengths.max())} > T={T} "
            f"or max target_length {int(target_lengths.max())} > U={U}"
        )
    if (target_lengths < 0).any() or (logit_lengths < 0).any():
        raise ValueError("lengths must be >= 0")
    return blank


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    clamp: float = -1,
    reduction: Reduction = "mean",
    fused_log_softmax: bool = True,
    fastemit_lambda: float = 0.0,
) -> torch.Tensor:
    """RNN-T negative log-likelihood with torchaudio's argument order and meaning.

    Args:
        logits: (B, T, U+1, V) joiner outputs, unnormalised; with ``fused_log_softmax=False``
            they must already be log-probabilities and the gradient is taken with respect to them.
        targets: (B, U) int32/int64 labels, padded; must not contain ``blank``.
        logit_lengths: (B,) valid frames per sequence.
        target_lengths: (B,) valid labels per sequence.
        blank: index of the blank symbol (default 0, as in sonus' tokenizers).
        clamp: if > 0, clamp the gradient to [-clamp, clamp].
        reduction: "none" -> (B,); "sum"; "mean" -> sum / B (torchaudio's meaning).
        fastemit_lambda: FastEmit regularisation weight (0: off).

    Returns:
        The loss, fp32, even under autocast.
    """
    blank = _check(logits, targets, logit_lengths, target_lengths, blank, reduction)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        losses = _TransducerLoss.apply(
            logits, targets, logit_lengths.to(logits.device).long(), target_lengths.to(logits.device).long(),
            None, blank, float(clamp), float(fastemit_lambda), bool(fused_log_softmax),
        )  # fmt: skip
    return _reduce(losses, reduction)


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
    blank = _check(logits, targets, logit_lengths, target_lengths, blank, reduction, S=logits.shape[2])
    B, T, S, _ = logits.shape
    if ranges.shape != (B, T):
        raise ValueError(f"ranges must be (B, T) = ({B}, {T}), got {tuple(ranges.shape)}")
    U1 = targets.shape[1] + 1
    u_index = ranges.long()[:, :, None] + torch.arange(S, device=logits.device)
    if int(u_index.max()) >= U1 or int(ranges.min()) < 0:
        raise ValueError(f"ranges + S exceed U+1 = {U1}: windows must lie inside the lattice")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        losses = _TransducerLoss.apply(
            logits, targets, logit_lengths.to(logits.device).long(), target_lengths.to(logits.device).long(),
            u_index, blank, -1.0, float(fastemit_lambda),
        )  # fmt: skip
    return _reduce(losses, reduction)


# --------------------------------------------------------------------------------------
# Simple (additive-joiner) loss and the pruning ranges it gives
# --------------------------------------------------------------------------------------
class _LatticeNLL(torch.autograd.Function):
    """-log P from arc log-probabilities (B, T, U+1) with the analytic gradient (minus the
    arc occupancies). Also returns the node occupancy (B, T, U+1), not differentiable."""

    @staticmethod
    def forward(ctx, blank_lp, label_lp, logit_lengths, target_lengths, fastemit_lambda):
        b64, y64 = blank_lp.double(), label_lp.double()
        alpha, beta, log_like = rnnt_lattice(b64, y64, logit_lengths, target_lengths)
        bad = _unalignable(log_like, logit_lengths, "rnnt_loss_simple")
        g_blank, g_label = _arc_occupancy(alpha, beta, b64, y64, log_like, logit_lengths, target_lengths, bad)
        node_occ = (g_blank + g_label).to(blank_lp.dtype)
        ctx.save_for_backward(-g_blank.to(blank_lp.dtype), (-g_label * (1.0 + fastemit_lambda)).to(label_lp.dtype))
        ctx.mark_non_differentiable(node_occ)
        return torch.where(bad, torch.zeros_like(log_like), -log_like).to(blank_lp.dtype), node_occ

    @staticmethod
    def backward(ctx, grad_losses, _grad_occ):
        gb, gy = ctx.saved_tensors
        s = grad_losses[:, None, None]
        return gb * s, gy * s, None, None, None


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
    B, T, V = am.shape
    if lm.dim() != 3 or lm.shape[0] != B or lm.shape[2] != V:
        raise ValueError(f"lm must be (B, U+1, V) = ({B}, U+1, {V}), got {tuple(lm.shape)}")
    if targets.shape != (B, lm.shape[1] - 1):
        raise ValueError(f"targets must be (B, U) = ({B}, {lm.shape[1] - 1}), got {tuple(targets.shape)}")
    blank = blank % V
    with torch.autocast(device_type=am.device.type, enabled=False):
        am, lm = am.float(), lm.float()
        am_max = am.max(-1, keepdim=True).values.detach()  # (B, T, 1)
        lm_max = lm.max(-1, keepdim=True).values.detach()  # (B, U+1, 1)
        norm = torch.bmm((am - am_max).exp(), (lm - lm_max).exp().transpose(1, 2))  # (B, T, U+1)
        norm = norm.clamp(min=1e-30).log() + am_max + lm_max.transpose(1, 2)
        U1 = lm.shape[1]
        tgt = torch.cat([targets.long(), targets.new_zeros(B, 1).long()], dim=1)  # (B, U+1)
        blank_lp = am[:, :, blank, None] + lm[:, None, :, blank] - norm
        label_lp = am.gather(2, tgt[:, None, :].expand(B, T, U1)) + lm.gather(2, tgt[:, :, None]).transpose(1, 2) - norm
        losses, occ = _LatticeNLL.apply(
            blank_lp, label_lp, logit_lengths.to(am.device).long(), target_lengths.to(am.device).long(), float(fastemit_lambda)
        )
    return _reduce(losses, reduction), occ


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
    idx = ranges.long()[:, :, None] + torch.arange(S, device=pred.device)  # (B, T, S)
    return pred.gather(1, idx.reshape(B, T * S, 1).expand(B, T * S, H)).reshape(B, T, S, H)


# --------------------------------------------------------------------------------------
# Plain reference
# --------------------------------------------------------------------------------------
def rnnt_loss_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: Reduction = "mean",
    fused_log_softmax: bool = True,
) -> torch.Tensor:
    """The textbook implementation: log-softmax, gather, the alpha recursion, all through
    autograd. Slow and memory-hungry; the baseline of ``benchmarks/rnnt_loss.py`` and a
    second opinion in the tests."""
    blank = _check(logits, targets, logit_lengths, target_lengths, blank, reduction)
    B, T, U1, V = logits.shape
    lp = logits.float() if logits.dtype != torch.float64 else logits
    if fused_log_softmax:
        lp = torch.log_softmax(lp, dim=-1)
    tgt = torch.cat([targets.long(), targets.new_zeros(B, 1).long()], dim=1)
    blank_lp = lp[..., blank]
    label_lp = lp.gather(3, tgt[:, None, :, None].expand(B, T, U1, 1)).squeeze(3)
    u_idx = torch.arange(U1, device=logits.device)
    label_lp = torch.where(u_idx[None, None, :] < target_lengths[:, None, None], label_lp, torch.full_like(label_lp, _BLOCKED))
    a_in = torch.full((B, U1), float("-inf"), device=logits.device, dtype=lp.dtype)
    a_in[:, 0] = 0.0
    alphas = []
    for t in range(T):
        if t > 0:
            a_in = alphas[-1] + blank_lp[:, t - 1]
        alphas.append(_log_cumsum_forward(a_in, label_lp[:, t]))
    alpha = torch.stack(alphas, 1)  # (B, T, U+1)
    b_idx = torch.arange(B, device=logits.device)
    t_last = (logit_lengths.long() - 1).clamp(min=0)
    u_last = target_lengths.long()
    losses = -(alpha[b_idx, t_last, u_last] + blank_lp[b_idx, t_last, u_last])
    return _reduce(losses, reduction)
