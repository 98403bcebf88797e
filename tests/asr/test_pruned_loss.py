"""Pruned RNN-T (Kuang et al. 2022): the simple loss, the ranges, the pruned loss."""

from __future__ import annotations

import math

import pytest
import torch

from sonus.asr.loss import (
    gather_pruned,
    prune_ranges,
    pruned_rnnt_loss,
    rnnt_loss,
    rnnt_loss_reference,
    rnnt_loss_simple,
)
from sonus.asr.loss.lattice import arc_occupancy, rnnt_lattice


def _case(seed: int, B: int = 3, T: int = 7, U: int = 4, V: int = 6, H: int = 5):
    g = torch.Generator().manual_seed(seed)
    T_b = torch.randint(U, T + 1, (B,), generator=g)
    T_b[0] = T
    U_b = torch.randint(1, U + 1, (B,), generator=g)
    U_b[-1] = U
    targets = torch.randint(1, V, (B, U), generator=g)
    enc = torch.randn(B, T, H, generator=g)
    pred = torch.randn(B, U + 1, H, generator=g)
    w = torch.randn(H, V, generator=g)
    return targets, T_b, U_b, enc, pred, w


def test_simple_loss_equals_full_loss_of_the_additive_joiner():
    g = torch.Generator().manual_seed(0)
    B, T, U, V = 3, 6, 4, 7
    am = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    lm = torch.randn(B, U + 1, V, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(1, V, (B, U), generator=g)
    T_b, U_b = torch.tensor([6, 4, 5]), torch.tensor([4, 2, 3])
    a, l_ = am.clone().requires_grad_(True), lm.clone().requires_grad_(True)
    simple, occ = rnnt_loss_simple(a, l_, targets, T_b, U_b, reduction="sum")
    simple.backward()
    a2, l2 = am.clone().requires_grad_(True), lm.clone().requires_grad_(True)
    full = rnnt_loss_reference(a2[:, :, None, :] + l2[:, None, :, :], targets, T_b, U_b, reduction="sum")
    full.backward()
    torch.testing.assert_close(simple.double(), full.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad.double(), a2.grad.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l_.grad.double(), l2.grad.double(), rtol=1e-4, atol=1e-5)
    # Node occupancy: every alignment passes through (0, 0) and (T_b - 1, U_b).
    for b in range(B):
        assert math.isclose(occ[b, 0, 0].item(), 1.0, rel_tol=1e-5)
        assert math.isclose(occ[b, T_b[b] - 1, U_b[b]].item(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_prune_ranges_keep_the_lattice_connected(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, U, S = 4, 9, 8, 3
    occ = torch.rand(B, T, U + 1, generator=g)
    T_b, U_b = torch.tensor([9, 7, 9, 5]), torch.tensor([8, 5, 2, 8])
    s = prune_ranges(occ, T_b, U_b, S)
    assert s.shape == (B, T)
    for b in range(B):
        sb = s[b, : T_b[b]]
        assert sb[0] == 0
        assert (sb[1:] >= sb[:-1]).all() and (sb[1:] - sb[:-1] <= S - 1).all()
        assert sb[-1] <= U_b[b] <= sb[-1] + S - 1  # the final node is in the last window
        assert (s[b] + S - 1 <= U).all()


def test_ranges_follow_the_occupancy():
    """A sharp diagonal alignment is covered by windows centred on it."""
    B, T, U, S = 1, 8, 7, 3
    occ = torch.zeros(B, T, U + 1)
    for t in range(T):
        occ[0, t, min(t, U)] = 1.0
    s = prune_ranges(occ, torch.tensor([T]), torch.tensor([U]), S)
    for t in range(T):
        assert s[0, t] <= min(t, U) < s[0, t] + S


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pruned_loss_with_full_window_equals_full_loss(dtype):
    """The pruned loss keeps its softmax for the gradient, the full loss recomputes it:
    on the same logits both give the same loss and gradient, also from bf16 logits."""
    targets, T_b, U_b, enc, pred, w = _case(1)
    B, T, U1 = enc.shape[0], enc.shape[1], pred.shape[1]
    logits = (torch.tanh(enc[:, :, None] + pred[:, None]) @ w).to(dtype)  # (B, T, U+1, V), u = s
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    full = rnnt_loss(a, targets, T_b, U_b, reduction="none")
    pruned = pruned_rnnt_loss(b, targets, torch.zeros(B, T, dtype=torch.long), T_b, U_b, reduction="none")
    assert full.dtype == pruned.dtype == torch.float32
    torch.testing.assert_close(pruned, full)
    (full * torch.arange(1.0, B + 1)).sum().backward()
    (pruned * torch.arange(1.0, B + 1)).sum().backward()
    assert a.grad.dtype == b.grad.dtype == dtype
    torch.testing.assert_close(b.grad, a.grad)
    assert U1 == logits.shape[2] and float(a.grad.abs().sum()) > 0


def test_pruned_loss_with_an_arc_whose_probability_underflows_fp32():
    """An arc of log-probability -150 has probability 0 in fp32: the kept softmax cannot give
    its log, so the loss takes it from the logits, as the full loss does."""
    targets, T_b, U_b, enc, pred, w = _case(4)
    B, T = enc.shape[:2]
    logits = torch.tanh(enc[:, :, None] + pred[:, None]) @ w
    logits[0, :, 0].scatter_(1, targets[0, :1].expand(T, 1), -150.0)  # (b 0, u 0): label arc nearly impossible
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    full = rnnt_loss(a, targets, T_b, U_b, reduction="none")
    pruned = pruned_rnnt_loss(b, targets, torch.zeros(B, T, dtype=torch.long), T_b, U_b, reduction="none")
    assert torch.isfinite(full).all() and full[0] > 140
    torch.testing.assert_close(pruned, full)
    full.sum().backward()
    pruned.sum().backward()
    torch.testing.assert_close(b.grad, a.grad)


@pytest.mark.parametrize("seed", range(4))
def test_windowed_lattice_equals_the_whole_lattice_with_the_rest_blocked(seed):
    """The pruned loss runs its recursions on the (B, T, S) windows: same likelihood and arc
    occupancies as the (B, T, U+1) lattice whose arcs outside the windows are -inf."""
    g = torch.Generator().manual_seed(seed)
    B, T, U, S = 4, 9, 6, 3
    T_b = torch.randint(U // 2, T + 1, (B,), generator=g)
    T_b[0] = T
    U_b = torch.randint(1, U + 1, (B,), generator=g)
    U_b[1] = U
    ranges = prune_ranges(torch.rand(B, T, U + 1, generator=g), T_b, U_b, S)
    u_index = ranges[:, :, None] + torch.arange(S)
    blank = torch.randn(B, T, S, generator=g, dtype=torch.float64).sub(1.0)
    label = torch.randn(B, T, S, generator=g, dtype=torch.float64).sub(1.0)
    whole = [torch.full((B, T, U + 1), float("-inf"), dtype=torch.float64).scatter_(2, u_index, x) for x in (blank, label)]
    _, _, ll_whole = rnnt_lattice(*whole, T_b, U_b)
    alpha, beta, ll = rnnt_lattice(blank, label, T_b, U_b, ranges)
    torch.testing.assert_close(ll, ll_whole)
    assert torch.isfinite(ll).any()
    bad = ~torch.isfinite(ll)
    occ_whole = arc_occupancy(*rnnt_lattice(*whole, T_b, U_b)[:2], *whole, ll_whole, T_b, U_b, bad)
    occ = arc_occupancy(alpha, beta, blank, label, ll, T_b, U_b, bad, ranges)
    for a, b in zip(occ, occ_whole, strict=True):
        torch.testing.assert_close(a, b.gather(2, u_index))


def test_gather_pruned_takes_the_window_of_each_frame():
    pred = torch.randn(2, 6, 3)
    ranges = torch.tensor([[0, 1, 3], [2, 2, 4]])
    out = gather_pruned(pred, ranges, 2)
    for b in range(2):
        for t in range(3):
            torch.testing.assert_close(out[b, t], pred[b, ranges[b, t] : ranges[b, t] + 2])


def test_pruned_loss_bounds_the_full_loss_and_has_the_right_gradient():
    targets, T_b, U_b, enc, pred, w = _case(2, T=8, U=5)
    S = 3
    joint = lambda e, p: torch.tanh(e + p) @ w.to(e.dtype)
    full = rnnt_loss(joint(enc[:, :, None], pred[:, None]), targets, T_b, U_b, reduction="none")
    _, occ = rnnt_loss_simple(enc @ w, pred @ w, targets, T_b, U_b)
    ranges = prune_ranges(occ, T_b, U_b, S)
    p = pred.double().requires_grad_(True)
    loss = pruned_rnnt_loss(joint(enc.double()[:, :, None], gather_pruned(p, ranges, S)), targets, ranges, T_b, U_b, reduction="none")
    assert (loss.float() >= full - 1e-4).all()  # fewer paths: a lower likelihood
    assert torch.isfinite(loss).all() and (loss > 0).all()
    loss.sum().backward()
    eps, g = 1e-4, torch.Generator().manual_seed(0)  # blocked arcs (-1e4) cost the loss ~1e-11 of precision
    for _ in range(8):
        idx = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in p.shape)
        hi, lo = pred.double().clone(), pred.double().clone()
        hi[idx] += eps
        lo[idx] -= eps
        f = lambda q: pruned_rnnt_loss(joint(enc.double()[:, :, None], gather_pruned(q, ranges, S)), targets, ranges, T_b, U_b, reduction="sum")
        fd = (f(hi) - f(lo)) / (2 * eps)
        assert math.isclose(fd.item(), p.grad[idx].item(), rel_tol=1e-5, abs_tol=1e-7), idx


def test_pruned_rejects_windows_outside_the_lattice():
    targets, T_b, U_b, enc, _pred, w = _case(3)
    ranges = torch.full((enc.shape[0], enc.shape[1]), 3, dtype=torch.long)
    logits = torch.randn(enc.shape[0], enc.shape[1], 3, w.shape[1])
    with pytest.raises(ValueError, match="inside the lattice"):
        pruned_rnnt_loss(logits, targets, ranges, T_b, U_b)


@pytest.mark.parametrize("bad", ["falls", "jumps"])
def test_windowed_lattice_rejects_windows_it_cannot_link(bad):
    """A blank arc leads from window t to window t+1 only if the start does not fall and rises
    by less than the width; frames past a sequence's end may do anything."""
    B, T, W = 2, 5, 3
    blank, label = torch.zeros(B, T, W, dtype=torch.float64), torch.zeros(B, T, W, dtype=torch.float64)
    T_b, U_b = torch.tensor([5, 3]), torch.tensor([4, 2])
    starts = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 1, 0, 9]])  # row 1 falls and jumps past its end only
    rnnt_lattice(blank, label, T_b, U_b, starts)
    starts[0, 3] = 0 if bad == "falls" else 4  # 1 -> 0, or 1 -> 4 (a rise of W)
    with pytest.raises(ValueError, match="window starts"):
        rnnt_lattice(blank, label, T_b, U_b, starts)


def test_simple_loss_rejects_an_unknown_reduction():
    targets, T_b, U_b, enc, pred, w = _case(4)
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss_simple(enc @ w, pred @ w, targets, T_b, U_b, reduction="avg")
