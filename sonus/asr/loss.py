"""RNN-Transducer loss (Graves 2012), a drop-in for ``torchaudio.functional.rnnt_loss``.

Shapes: B batch, T encoder frames, U target labels, V vocabulary (blank included).

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

The gradient with respect to the logits is analytic (softmax minus the occupation of
the outgoing arcs), computed in the forward pass, so autograd keeps no graph over the
B x T x (U+1) x V tensor.

dtype policy: the loss is always computed in fp32 (the recursions in fp64), even under
autocast; the gradient is returned in the logits' dtype.

Sequences that cannot be aligned (``logit_lengths == 0``, or a probability that
underflows to zero) get loss 0 and a zero gradient, with a warning, so one bad
utterance never turns the batch's loss into NaN or inf (``torch.nn.CTCLoss``'s
``zero_infinity=True`` behaviour).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")


def _log_cumsum_forward(a_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """alpha[u] = logaddexp(a_in[u], alpha[u-1] + y[u-1]) for all u at once.

    a_in: (B, U+1) arrivals from the previous frame; y: (B, U+1) label log-probs.
    """
    c = torch.zeros_like(y)
    c[:, 1:] = torch.cumsum(y[:, :-1], dim=1)  # c[u] = sum_{k<u} y[k]
    return c + torch.logcumsumexp(a_in - c, dim=1)


def _log_cumsum_backward(b_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """beta[u] = logaddexp(b_in[u], beta[u+1] + y[u]) for all u at once (right to left)."""
    c = torch.zeros_like(y)
    c[:, 1:] = torch.cumsum(y[:, :-1], dim=1)
    rev = torch.logcumsumexp((b_in + c).flip(1), dim=1).flip(1)
    return rev - c


def rnnt_lattice(
    blank_lp: torch.Tensor, label_lp: torch.Tensor, logit_lengths: torch.Tensor, target_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward variables of the transducer lattice.

    Args:
        blank_lp: (B, T, U+1) log P(blank | t, u).
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
    # A label arc leaves (t, u) only for u < U_b.
    label_lp = torch.where((u_idx[None, None, :] < target_lengths[:, None, None]), label_lp, neg_inf)
    label_lp_c = torch.where(torch.isinf(label_lp), torch.zeros_like(label_lp), label_lp)  # for cumsum

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


class _RNNTLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, logit_lengths, target_lengths, blank, clamp, fused_log_softmax):
        B, T, U1, V = logits.shape
        x = logits.float()
        if fused_log_softmax:
            log_probs = torch.log_softmax(x, dim=-1)
        else:
            log_probs = x
        tgt = targets.long()
        if U1 > 1:
            tgt_pad = torch.cat([tgt, tgt.new_zeros(B, 1)], dim=1)  # (B, U+1)
        else:
            tgt_pad = tgt.new_zeros(B, 1)
        tgt_idx = tgt_pad[:, None, :, None].expand(B, T, U1, 1)
        label_lp = log_probs.gather(3, tgt_idx).squeeze(3).double()  # (B, T, U+1)
        blank_lp = log_probs[..., blank].double()  # (B, T, U+1)
        alpha, beta, log_like = rnnt_lattice(blank_lp, label_lp, logit_lengths, target_lengths)

        bad = ~torch.isfinite(log_like) | (logit_lengths <= 0)
        if bool(bad.any()):
            warnings.warn(
                f"rnnt_loss: {int(bad.sum())} sequence(s) cannot be aligned (batch index "
                f"{bad.nonzero().flatten().tolist()}); their loss is set to 0 and gradient to 0",
                stacklevel=3,
            )
        ll = torch.where(bad, torch.zeros_like(log_like), log_like)
        losses = -ll

        # Occupation of the arcs leaving (t, u): posterior mass flowing through them.
        beta_next_t = torch.cat([beta[:, 1:], beta.new_full((B, 1, U1), float("-inf"))], dim=1)
        u_idx = torch.arange(U1, device=logits.device)
        t_idx = torch.arange(T, device=logits.device)
        final = (t_idx[None, :, None] == (logit_lengths - 1)[:, None, None]) & (
            u_idx[None, None, :] == target_lengths[:, None, None]
        )
        beta_next_t = torch.where(final, torch.zeros_like(beta_next_t), beta_next_t)
        beta_next_u = torch.cat([beta[:, :, 1:], beta.new_full((B, T, 1), float("-inf"))], dim=2)
        norm = ll[:, None, None]
        g_blank = torch.exp(alpha + blank_lp + beta_next_t - norm)  # (B, T, U+1)
        g_label = torch.exp(alpha + label_lp + beta_next_u - norm)
        g_label = torch.where(u_idx[None, None, :] < target_lengths[:, None, None], g_label, 0.0)
        zero = bad[:, None, None]
        g_blank = torch.where(zero, 0.0, torch.nan_to_num(g_blank, nan=0.0)).float()
        g_label = torch.where(zero, 0.0, torch.nan_to_num(g_label, nan=0.0)).float()

        # dL/dz = softmax(z) * (g_blank + g_label) - g_blank * 1[v=blank] - g_label * 1[v=y_u]
        if fused_log_softmax:
            grad = log_probs.exp_().mul_((g_blank + g_label).unsqueeze(-1))  # reuses log_probs' memory
        else:
            grad = torch.zeros_like(x)
        grad[..., blank] -= g_blank
        grad.scatter_add_(3, tgt_idx, -g_label.unsqueeze(-1))
        if clamp > 0:
            grad.clamp_(-clamp, clamp)
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return losses.float()

    @staticmethod
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        g = grad * grad_losses.to(grad.dtype)[:, None, None, None]
        return g.to(ctx.logits_dtype), None, None, None, None, None, None


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    clamp: float = -1,
    reduction: Reduction = "mean",
    fused_log_softmax: bool = True,
) -> torch.Tensor:
    """RNN-T negative log-likelihood with torchaudio's argument order and meaning.

    Args:
        logits: (B, T, U+1, V) joiner outputs (unnormalised unless ``fused_log_softmax=False``,
            in which case they must already be log-probabilities).
        targets: (B, U) int32/int64 labels, padded; must not contain ``blank``.
        logit_lengths: (B,) valid frames per sequence.
        target_lengths: (B,) valid labels per sequence.
        blank: index of the blank symbol (default 0, as in sonus' tokenizers).
        clamp: if > 0, clamp the gradient to [-clamp, clamp].
        reduction: "none" -> (B,); "sum"; "mean" -> sum / B (torchaudio's meaning).

    Returns:
        The loss, fp32, even under autocast.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, T, U+1, V), got shape {tuple(logits.shape)}")
    B, T, U1, V = logits.shape
    if targets.dim() != 2 or targets.shape[0] != B or targets.shape[1] != U1 - 1:
        raise ValueError(f"targets must be (B, U) = ({B}, {U1 - 1}), got {tuple(targets.shape)}")
    if logit_lengths.shape != (B,) or target_lengths.shape != (B,):
        raise ValueError(f"lengths must be ({B},): {tuple(logit_lengths.shape)}, {tuple(target_lengths.shape)}")
    if not 0 <= blank < V:
        blank = blank % V if -V <= blank < 0 else blank
        if not 0 <= blank < V:
            raise ValueError(f"blank={blank} out of range for V={V}")
    if int(logit_lengths.max()) > T or int(target_lengths.max()) > U1 - 1:
        raise ValueError(
            f"lengths exceed the logits: max logit_length {int(logit_lengths.max())} > T={T} "
            f"or max target_length {int(target_lengths.max())} > U={U1 - 1}"
        )
    if (target_lengths < 0).any() or (logit_lengths < 0).any():
        raise ValueError("lengths must be >= 0")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        losses = _RNNTLoss.apply(
            logits,
            targets,
            logit_lengths.to(logits.device).long(),
            target_lengths.to(logits.device).long(),
            blank,
            float(clamp),
            fused_log_softmax,
        )
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.mean()
