"""The full RNN-T loss (a drop-in for ``torchaudio.functional.rnnt_loss``), the autograd
Function it shares with the pruned loss, and a plain autograd reference.

Memory. The B x T x (U+1) x V logits are the big tensor. The forward pass reads them twice
(a log-sum-exp over V, then the gradient) and writes exactly one tensor of their size: the
analytic gradient (softmax minus the occupation of the outgoing arcs). No log-probabilities
are kept and autograd keeps no graph over the 4-D tensor. The backward pass scales that
buffer in place and hands it over, so a second ``backward`` through the same loss is an
error (call the loss again instead).

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
"""

from __future__ import annotations

from typing import Literal

import torch

from sonus.asr.loss.lattice import (
    BLOCKED,
    arc_occupancy,
    log_cumsum_forward,
    pad_targets,
    rnnt_lattice,
    unalignable,
)

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")
_CHUNK_ELEMENTS = 1 << 22  # elements of the 4-D tensor processed at once in fp32 (16 MB)


def _chunks(B: int, per_item: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    for b0 in range(0, B, step):
        yield slice(b0, min(B, b0 + step))


def _softmax(x: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """softmax(x) over the last dim in ``dtype``, into ``out`` or into one new buffer (a
    half-precision ``x`` is copied there and normalised in place: no second temporary)."""
    if out is not None:
        return torch.softmax(x, dim=-1, out=out)
    p = torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)
    return torch.softmax(p, dim=-1, out=p)


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
        tgt_pad = pad_targets(targets)  # (B, U+1)
        full = u_index is None
        if full:
            tgt = tgt_pad[:, None, :].expand(B, T, U1)
        else:
            tgt = tgt_pad.gather(1, u_index.reshape(B, T * S)).reshape(B, T, S)
        tgt_idx = tgt[..., None]  # (B, T, S, 1)

        # Arc log-probabilities: logit - logsumexp over V, a chunk of utterances at a time. The
        # pruned loss' S-wide tensor is small: its softmax (one fused kernel) is kept for the
        # gradient pass, in the gradient's own buffer when that is fp32 already, so fp32 memory
        # does not grow; the full loss recomputes it, to keep its memory at that one buffer.
        keep = fused and not full
        grad = torch.empty_like(logits)
        blank_s = torch.empty(B, T, S, dtype=torch.float64, device=logits.device)
        label_s = torch.empty_like(blank_s)
        lse = None if keep else torch.empty(B, T, S, dtype=cdt, device=logits.device)
        kept: list[torch.Tensor] = []
        for c in _chunks(B, T * S * V):
            if keep:
                p = _softmax(logits[c], cdt, grad[c] if grad.dtype == cdt else None)
                kept.append(p)
                p_blank, p_label = p[..., blank], p.gather(3, tgt_idx[c]).squeeze(3)
                if bool((p_blank > 0).all() and (p_label > 0).all()):
                    blank_s[c], label_s[c] = p_blank.log().double(), p_label.log().double()
                    continue
                # an arc's probability underflows in fp32: log Z from the logits, as the full loss does
            x = logits[c].to(cdt)
            off = torch.logsumexp(x, dim=-1) if fused else 0.0  # unfused: x are log-probabilities
            if lse is not None:
                lse[c] = off
            blank_s[c] = (x[..., blank] - off).double()
            label_s[c] = (x.gather(3, tgt_idx[c]).squeeze(3) - off).double()
            del x
        starts = None if full else u_index[:, :, 0]  # the pruned lattice runs on its windows
        alpha, beta, log_like = rnnt_lattice(blank_s, label_s, logit_lengths, target_lengths, starts)
        bad = unalignable(log_like, logit_lengths, "rnnt_loss" if full else "pruned_rnnt_loss")
        losses = torch.where(bad, torch.zeros_like(log_like), -log_like)
        g_blank, g_label = arc_occupancy(alpha, beta, blank_s, label_s, log_like, logit_lengths, target_lengths, bad, starts)
        if fastemit_lambda:
            g_label = g_label * (1.0 + fastemit_lambda)
        g_blank, g_label = g_blank.to(cdt), g_label.to(cdt)

        # dL/dz = softmax(z) * (g_blank + g_label) - g_blank * 1[v=blank] - g_label * 1[v=y]
        g_sum = (g_blank + g_label)[..., None]
        for i, c in enumerate(_chunks(B, T * S * V)):
            if keep:  # the arcs' two entries first, on (B, T, S); then the softmax scaled in place
                g = kept[i]
                at_blank = g[..., blank] * g_sum[c][..., 0] - g_blank[c]
                at_label = g.gather(3, tgt_idx[c]).squeeze(3) * g_sum[c][..., 0] - g_label[c]
                at_label = torch.where(tgt_idx[c][..., 0] == blank, at_label - g_blank[c], at_label)
                g.mul_(g_sum[c])
                g[..., blank] = at_blank
                g.scatter_(3, tgt_idx[c], at_label[..., None])
            else:
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


def check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def check_inputs(logits, targets, logit_lengths, target_lengths, blank, reduction, S=None) -> int:
    """Validate the arguments of a loss over (B, T, U+1 or S, V) logits; returns blank in [0, V)."""
    check_reduction(reduction)
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


def reduce_losses(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def transducer_nll(logits, targets, logit_lengths, target_lengths, u_index, blank, clamp=-1.0, fastemit_lambda=0.0, fused=True):
    """Per-sequence losses (B,) from :class:`_TransducerLoss`, outside autocast."""
    dev = logits.device
    with torch.autocast(device_type=dev.type, enabled=False):
        return _TransducerLoss.apply(
            logits, targets, logit_lengths.to(dev).long(), target_lengths.to(dev).long(),
            u_index, blank, float(clamp), float(fastemit_lambda), bool(fused),
        )  # fmt: skip


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
    blank = check_inputs(logits, targets, logit_lengths, target_lengths, blank, reduction)
    losses = transducer_nll(logits, targets, logit_lengths, target_lengths, None, blank, clamp, fastemit_lambda, fused_log_softmax)
    return reduce_losses(losses, reduction)


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
    blank = check_inputs(logits, targets, logit_lengths, target_lengths, blank, reduction)
    B, T, U1, _ = logits.shape
    lp = logits.float() if logits.dtype != torch.float64 else logits
    if fused_log_softmax:
        lp = torch.log_softmax(lp, dim=-1)
    tgt = pad_targets(targets)
    blank_lp = lp[..., blank]
    label_lp = lp.gather(3, tgt[:, None, :, None].expand(B, T, U1, 1)).squeeze(3)
    u_idx = torch.arange(U1, device=logits.device)
    label_lp = torch.where(u_idx[None, None, :] < target_lengths[:, None, None], label_lp, torch.full_like(label_lp, BLOCKED))
    a_in = torch.full((B, U1), float("-inf"), device=logits.device, dtype=lp.dtype)
    a_in[:, 0] = 0.0
    alphas = []
    for t in range(T):
        if t > 0:
            a_in = alphas[-1] + blank_lp[:, t - 1]
        alphas.append(log_cumsum_forward(a_in, label_lp[:, t]))
    alpha = torch.stack(alphas, 1)  # (B, T, U+1)
    b_idx = torch.arange(B, device=logits.device)
    t_last = (logit_lengths.long() - 1).clamp(min=0)
    u_last = target_lengths.long()
    losses = -(alpha[b_idx, t_last, u_last] + blank_lp[b_idx, t_last, u_last])
    return reduce_losses(losses, reduction)
