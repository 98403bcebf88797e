"""The transducer lattice: forward/backward recursions and arc occupancies, shared by
every loss in this package.

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

The pruned loss keeps S label positions per frame, u in [starts[t], starts[t] + S): its
lattice is B x T x S, node (t, w) standing for u = starts[t] + w. A blank arc then moves
from window position w to w - (starts[t+1] - starts[t]), a gather per frame, and the
recursions run on rows of S rather than U+1 (icefall/k2 do the same in their kernels).

Both recursions are frame loops of one shape (:func:`scan_frames`). On CUDA each runs as a
single Triton kernel (:mod:`.lattice_triton`): there a loop of small ops costs a kernel
launch per op and frame, most of the loss' time.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch

from sonus.asr.loss import lattice_triton

BLOCKED = -1.0e4  # log-probability standing in for -inf inside the cumulative sums


def pad_targets(targets: torch.Tensor) -> torch.Tensor:
    """(B, U) labels -> (B, U+1) int64 with a 0 after the last, so every node (t, u) has one."""
    return torch.cat([targets.long(), targets.new_zeros(targets.shape[0], 1).long()], dim=1)


def _exclusive_cumsum(y: torch.Tensor) -> torch.Tensor:
    """c[u] = sum_{k<u} y[k] along dim 1."""
    return torch.cat([y.new_zeros(y.shape[0], 1), torch.cumsum(y[:, :-1], dim=1)], dim=1)


def log_cumsum_forward(a_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """alpha[u] = logaddexp(a_in[u], alpha[u-1] + y[u-1]) for all u at once.

    a_in: (B, U+1) arrivals from the previous frame; y: (B, U+1) finite label log-probs.
    """
    c = _exclusive_cumsum(y)
    return c + torch.logcumsumexp(a_in - c, dim=1)


def scan_frames(
    add: torch.Tensor,
    post: torch.Tensor,
    src: torch.Tensor | None,
    maximum: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """(B, T, W) rows ``x[t] = logcumsumexp(max(prev, maximum[t]) + add[t]) + post[t]``, one
    frame after the other, ``prev`` the previous frame's row (forward: ``x[t-1]`` gathered by
    ``src[t-1]``; reverse: ``x[t+1]`` gathered by ``src[t]``; ``src`` (B, T-1, W) or None);
    the first frame's ``prev`` is 0 forward, -inf in reverse. The torch loop;
    :func:`sonus.asr.loss.lattice_triton.scan_frames` is the same as one CUDA kernel."""
    T = add.shape[1]
    out = torch.empty_like(add)
    prev = None
    for t in range(T - 1, -1, -1) if reverse else range(T):
        if prev is None:  # the first frame: max(-inf, m) = m in reverse, 0 + add forward
            v = add[:, t] if not reverse else add[:, t] + (maximum[:, t] if maximum is not None else float("-inf"))
        else:
            v = prev + add[:, t] if maximum is None else torch.maximum(prev, maximum[:, t]).add_(add[:, t])
        row = out[:, t]
        torch.logcumsumexp(v, dim=1, out=row)
        row += post[:, t]
        nxt = t - 1 if reverse else t  # the next frame gathers this row through src[nxt]
        prev = row if src is None or not 0 <= nxt < T - 1 else row.gather(1, src[:, nxt])
    return out


def _nodes(B: int, T: int, W: int, starts: torch.Tensor | None, logit_lengths: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Label position u of each node (B, T, W) (or (1, 1, W)), and the window shifts.

    With ``starts``, node (t, w) is u = starts[t] + w, and a blank arc leaves (t, w) for
    (t+1, w - shift[t]), shift[t] = starts[t+1] - starts[t] (B, T-1), set to 0 from frame
    T_b - 1 on, where only padding follows.
    """
    w_idx = torch.arange(W, device=device)
    if starts is None:
        return w_idx[None, None, :], None
    starts = starts.long()
    shift = starts[:, 1:] - starts[:, :-1]
    shift = shift.masked_fill(torch.arange(T - 1, device=device)[None, :] >= (logit_lengths - 1)[:, None], 0)
    return starts[:, :, None] + w_idx, shift


def rnnt_lattice(
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    starts: torch.Tensor | None = None,
    backend: Literal["auto", "torch", "triton"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward variables of the transducer lattice, whole or in windows.

    Args:
        blank_lp: (B, T, W) log P(blank | t, u); -inf marks an arc that does not exist.
        label_lp: (B, T, W) log P(targets[u] | t, u); the last column is unused.
        logit_lengths: (B,) valid frames T_b.
        target_lengths: (B,) valid labels U_b.
        starts: None for the whole lattice (W = U+1, node (t, w) is u = w), or (B, T) window
            starts: node (t, w) is u = starts[t] + w (the pruned loss). Arcs that leave the
            windows do not exist; so the recursions run on (B, W) rows, not (B, U+1).
        backend: the frame loops': "auto" is the Triton kernel for fp64 CUDA tensors where
            Triton imports (``SONUS_TRITON=0`` turns it off), else the torch loop.

    Returns:
        alpha (B, T, W), beta (B, T, W), log_like (B,). Entries outside a sequence's lattice
        are -inf.
    """
    B, T, W = blank_lp.shape
    dev, dt = blank_lp.device, blank_lp.dtype
    if backend == "auto":
        backend = "triton" if dt == torch.float64 and lattice_triton.available(dev) else "torch"
    scan = lattice_triton.scan_frames if backend == "triton" else scan_frames
    neg_inf = torch.tensor(float("-inf"), device=dev, dtype=dt)
    u, shift = _nodes(B, T, W, starts, logit_lengths, dev)
    if shift is not None and (bool((shift < 0).any()) or bool((shift >= W).any())):  # arc_occupancy takes these windows as checked here
        raise ValueError(f"window starts must not decrease and may rise by at most {W - 1} between frames")
    # A label arc leaves (t, u) only for u < U_b. Missing arcs become a huge negative
    # number rather than -inf, so the cumulative sums stay finite (exp() of it is 0).
    label_lp = torch.where(u < target_lengths[:, None, None], label_lp, neg_inf)
    label_lp_c = label_lp.clamp(min=BLOCKED)
    # The per-frame work is a few ops on (B, W) rows, so everything that does not depend on
    # the previous frame is done for all frames at once: the label log-probs' exclusive
    # cumulative sums, the window shifts, and the masks as additive 0 / -inf terms.
    c = torch.cat([label_lp_c.new_zeros(B, T, 1), torch.cumsum(label_lp_c[:, :, :-1], dim=2)], dim=2)  # (B, T, W)
    outside = torch.zeros(B, u.shape[1], W, device=dev, dtype=dt).masked_fill_(u > target_lengths[:, None, None], float("-inf"))
    w_idx = torch.arange(W, device=dev)
    if shift is not None:  # node (t, w) arrives from (t-1, w + shift[t-1]), if that is in the window
        src = w_idx + shift[:, :, None]  # (B, T-1, W)
        gone = torch.zeros(src.shape, device=dev, dtype=dt).masked_fill_(src >= W, float("-inf"))
        src = src.clamp_(max=W - 1)

    # Forward: alpha[t, w] = logaddexp(a_in[w], alpha[t, w-1] + y[t, w-1]) is a log-cumulative-
    # sum of a_in - c, plus c; a_in = alpha[t-1] + blank[t-1] (shifted), so the blank and c
    # terms are precomputed. The start node is u = 0 (w = -starts[0]: the window must hold it).
    start = torch.where(u[:, 0] == 0, 0.0, float("-inf")).to(dt).expand(B, W)
    blank_in = blank_lp[:, :-1] if shift is None else blank_lp[:, :-1].gather(2, src) + gone
    arrive = torch.cat([start[:, None] - c[:, :1], blank_in - c[:, 1:]], dim=1)  # (B, T, W)
    alpha = scan(arrive, c + outside, None if shift is None else src)

    # Backward: beta[t, w] = logaddexp(b_in[w], beta[t, w+1] + y[t, w]) is a right-to-left
    # log-cumulative-sum of b_in + c, minus c, with b_in = beta[t+1] (shifted) + blank[t]. The
    # loop runs on w reversed (no flips inside it), where the shift is the same gather as
    # forward's. A frame past T_b is -inf; at t = T_b - 1 the arrivals come from the virtual
    # beta[T_b], one-hot at U_b: beta[t+1] is -inf there, so a maximum with that one-hot row
    # (-inf at every other frame) puts it in.
    t_idx = torch.arange(T, device=dev)
    past_end = torch.zeros(B, T, 1, device=dev, dtype=dt).masked_fill_((t_idx[None, :] >= logit_lengths[:, None])[..., None], float("-inf"))
    at_last = (t_idx[None, :] == (logit_lengths - 1)[:, None])[..., None]  # (B, T, 1)
    final_r = torch.where(at_last & (u == target_lengths[:, None, None]), 0.0, float("-inf")).to(dt).flip(2)
    into = blank_lp + c
    if shift is not None:  # (t, w) leaves for (t+1, w - shift[t]): in reversed w, the same gather
        into[:, :-1] += gone.flip(2)
    into_r = into.flip(2)
    out_r = (outside - c + past_end).flip(2)
    beta = scan(into_r, out_r, None if shift is None else src, maximum=final_r, reverse=True).flip(2)

    log_like = beta[:, 0, 0] if starts is None else beta[:, 0, 0].masked_fill(starts[:, 0] != 0, float("-inf"))
    return alpha, beta, log_like


def arc_occupancy(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    blank_lp: torch.Tensor,
    label_lp: torch.Tensor,
    log_like: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    bad: torch.Tensor,
    starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior probability of each blank and label arc, (B, T, W) each: the negative
    gradient of the log-likelihood with respect to that arc's log-probability."""
    B, T, W = alpha.shape
    u, shift = _nodes(B, T, W, starts, logit_lengths, alpha.device)
    t_idx = torch.arange(T, device=alpha.device)
    beta_next_t = beta[:, 1:]
    if shift is not None:  # (t, w) leaves for (t+1, w - shift[t])
        dst = torch.arange(W, device=alpha.device) - shift[:, :, None]
        beta_next_t = beta_next_t.gather(2, dst.clamp(min=0)).masked_fill_(dst < 0, float("-inf"))
    beta_next_t = torch.cat([beta_next_t, beta.new_full((B, 1, W), float("-inf"))], dim=1)
    final = (t_idx[None, :, None] == (logit_lengths - 1)[:, None, None]) & (u == target_lengths[:, None, None])
    beta_next_t = torch.where(final, torch.zeros_like(beta_next_t), beta_next_t)
    beta_next_u = torch.cat([beta[:, :, 1:], beta.new_full((B, T, 1), float("-inf"))], dim=2)
    norm = torch.where(bad, torch.zeros_like(log_like), log_like)[:, None, None]
    g_blank = torch.exp(alpha + blank_lp + beta_next_t - norm)
    g_label = torch.exp(alpha + label_lp + beta_next_u - norm)
    g_label = torch.where(u < target_lengths[:, None, None], g_label, 0.0)
    zero = bad[:, None, None]
    g_blank = torch.where(zero, 0.0, torch.nan_to_num(g_blank, nan=0.0))
    g_label = torch.where(zero, 0.0, torch.nan_to_num(g_label, nan=0.0))
    return g_blank, g_label


def unalignable(log_like: torch.Tensor, logit_lengths: torch.Tensor, what: str) -> torch.Tensor:
    bad = ~torch.isfinite(log_like) | (logit_lengths <= 0)
    if bool(bad.any()):
        warnings.warn(
            f"{what}: {int(bad.sum())} sequence(s) cannot be aligned (batch index "
            f"{bad.nonzero().flatten().tolist()}); their loss is set to 0 and gradient to 0",
            stacklevel=4,
        )
    return bad
