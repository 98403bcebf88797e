"""rnnt_loss against an independent brute-force reference: enumerate every alignment."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sonus.asr.loss import rnnt_loss, rnnt_loss_reference


def _alignments(T: int, U: int):
    """All monotonic paths: sequences of T blanks and U labels that end with a blank."""
    for label_slots in itertools.combinations(range(T - 1 + U), U):
        path, s = [], set(label_slots)
        for i in range(T - 1 + U):
            path.append("y" if i in s else "b")
        yield path + ["b"]


def brute_force_nll(logits: torch.Tensor, targets: list[int], blank: int) -> torch.Tensor:
    """-log sum over alignments of prod of arc probabilities, autograd in fp64. logits: (T, U+1, V)."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    T, U1, _ = lp.shape
    U = len(targets)
    terms = []
    for path in _alignments(T, U):
        t = u = 0
        score = lp.new_zeros(())
        for arc in path:
            if arc == "b":
                score = score + lp[t, u, blank]
                t += 1
            else:
                score = score + lp[t, u, targets[u]]
                u += 1
        terms.append(score)
    return -torch.logsumexp(torch.stack(terms), dim=0)


def _random_case(seed: int, B: int, T: int, U: int, V: int, blank: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g) * 2
    T_b = torch.randint(1, T + 1, (B,), generator=g)
    T_b[0] = T  # at least one full-length sequence
    U_b = torch.randint(0, U + 1, (B,), generator=g)
    U_b[-1] = U
    labels = [v for v in range(V) if v != blank]
    targets = torch.tensor(labels)[torch.randint(0, V - 1, (B, U), generator=g)].int()
    return logits, targets, T_b.int(), U_b.int()


@pytest.mark.parametrize("seed,B,T,U,V,blank", [(0, 3, 4, 3, 5, 0), (1, 4, 5, 2, 6, 0), (2, 2, 3, 4, 4, 3), (3, 5, 6, 3, 7, 0)])
def test_matches_brute_force_loss_and_gradients(seed, B, T, U, V, blank):
    logits, targets, T_b, U_b = _random_case(seed, B, T, U, V, blank)
    x = logits.clone().requires_grad_(True)
    losses = rnnt_loss(x, targets, T_b, U_b, blank=blank, reduction="none")
    losses.sum().backward()

    x_ref = logits.clone().double().requires_grad_(True)
    ref = torch.stack(
        [brute_force_nll(x_ref[b, : T_b[b], : U_b[b] + 1], targets[b, : U_b[b]].tolist(), blank) for b in range(B)]
    )
    ref.sum().backward()
    torch.testing.assert_close(losses.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-5, atol=1e-6)
    # Padding frames and labels get exactly zero gradient.
    for b in range(B):
        assert x.grad[b, T_b[b] :].abs().max().item() == 0 if T_b[b] < T else True
        assert x.grad[b, :, U_b[b] + 1 :].abs().max().item() == 0 if U_b[b] < U else True


def test_reductions_and_torchaudio_signature():
    logits, targets, T_b, U_b = _random_case(7, 4, 5, 3, 6, 0)
    none = rnnt_loss(logits, targets, T_b, U_b, reduction="none")
    assert none.shape == (4,)
    torch.testing.assert_close(rnnt_loss(logits, targets, T_b, U_b, reduction="sum"), none.sum())
    torch.testing.assert_close(rnnt_loss(logits, targets, T_b, U_b), none.mean())
    # Positional call in torchaudio's order: logits, targets, logit_lengths, target_lengths, blank.
    torch.testing.assert_close(rnnt_loss(logits, targets, T_b, U_b, 0), none.mean())
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss(logits, targets, T_b, U_b, reduction="avg")


def test_fp32_under_autocast_and_bf16_input():
    logits, targets, T_b, U_b = _random_case(3, 2, 4, 2, 5, 0)
    ref = rnnt_loss(logits, targets, T_b, U_b)
    x = logits.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rnnt_loss(x, targets, T_b, U_b)
    assert out.dtype == torch.float32
    out.backward()
    assert x.grad.dtype == torch.bfloat16
    assert math.isclose(out.item(), ref.item(), rel_tol=2e-2)


def test_unalignable_sequence_gets_zero_not_nan():
    logits, targets, T_b, U_b = _random_case(5, 3, 4, 2, 5, 0)
    T_b[1] = 0  # no frames: nothing can be emitted
    x = logits.clone().requires_grad_(True)
    with pytest.warns(UserWarning, match="cannot be aligned"):
        losses = rnnt_loss(x, targets, T_b, U_b, reduction="none")
    assert torch.isfinite(losses).all()
    assert losses[1].item() == 0.0
    losses.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[1].abs().max().item() == 0.0
    assert x.grad[0].abs().max().item() > 0.0


def test_gradient_matches_finite_differences():
    logits, targets, T_b, U_b = _random_case(11, 2, 3, 2, 4, 0)
    x = logits.double().requires_grad_(True)
    rnnt_loss(x, targets, T_b, U_b, reduction="sum").backward()
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(12):
        idx = tuple(int(torch.randint(0, n, (1,), generator=g)) for n in x.shape)
        hi, lo = logits.double().clone(), logits.double().clone()
        hi[idx] += eps
        lo[idx] -= eps
        fd = (rnnt_loss(hi, targets, T_b, U_b, reduction="sum") - rnnt_loss(lo, targets, T_b, U_b, reduction="sum")) / (2 * eps)
        assert math.isclose(fd.item(), x.grad[idx].item(), rel_tol=1e-5, abs_tol=1e-7), idx


def test_second_backward_is_a_clear_error():
    logits, targets, T_b, U_b = _random_case(2, 2, 3, 2, 4, 0)
    x = logits.clone().requires_grad_(True)
    loss = rnnt_loss(x, targets, T_b, U_b)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward was already run"):
        loss.backward()


def test_plain_reference_matches_brute_force_and_fast_loss():
    logits, targets, T_b, U_b = _random_case(4, 3, 5, 3, 6, 0)
    x_ref = logits.clone().double().requires_grad_(True)
    ref = rnnt_loss_reference(x_ref, targets, T_b, U_b, reduction="none")
    bf = torch.stack([brute_force_nll(logits[b, : T_b[b], : U_b[b] + 1], targets[b, : U_b[b]].tolist(), 0) for b in range(3)])
    torch.testing.assert_close(ref.double(), bf, rtol=1e-5, atol=1e-5)
    ref.sum().backward()
    x = logits.clone().requires_grad_(True)
    rnnt_loss(x, targets, T_b, U_b, reduction="sum").backward()
    torch.testing.assert_close(x.grad.double(), x_ref.grad.double(), rtol=1e-4, atol=1e-5)


def test_unfused_takes_log_probs_and_gives_their_gradient():
    logits, targets, T_b, U_b = _random_case(6, 2, 4, 2, 5, 0)
    lp = torch.log_softmax(logits, -1).requires_grad_(True)
    loss = rnnt_loss(lp, targets, T_b, U_b, fused_log_softmax=False, reduction="sum")
    torch.testing.assert_close(loss, rnnt_loss(logits, targets, T_b, U_b, reduction="sum"))
    loss.backward()
    # d(-log P)/d lp is minus the arc occupancy: non-positive, zero off the arcs.
    assert lp.grad.max().item() <= 0.0
    assert (lp.grad[..., 0] < 0).any()


def test_fastemit_scales_the_label_arc_gradient():
    """FastEmit's gradient is that of -log P - lambda * sum(label-arc occupancy (fixed) * label log-prob)."""
    logits, targets, T_b, U_b = _random_case(8, 2, 5, 3, 6, 0)
    lam = 0.5
    x = logits.clone().double().requires_grad_(True)
    loss = rnnt_loss(x, targets, T_b, U_b, reduction="sum", fastemit_lambda=lam)
    torch.testing.assert_close(loss, rnnt_loss(logits.double(), targets, T_b, U_b, reduction="sum"))  # value unchanged
    loss.backward()

    # Surrogate through autograd: the label-arc occupancy is d(log P)/d(label log-prob).
    z = logits.clone().double().requires_grad_(True)
    B, T, U1, V = z.shape
    lp = torch.log_softmax(z, -1)
    tgt = torch.cat([targets.long(), torch.zeros(B, 1, dtype=torch.long)], 1)
    label_lp = lp.gather(3, tgt[:, None, :, None].expand(B, T, U1, 1)).squeeze(3)
    y = label_lp.detach().requires_grad_(True)
    lp_y = lp.scatter(3, tgt[:, None, :, None].expand(B, T, U1, 1), y[..., None])  # same values, y as a leaf
    nll = rnnt_loss_reference(lp_y, targets, T_b, U_b, reduction="sum", fused_log_softmax=False)
    (occ,) = torch.autograd.grad(-nll, y)
    occ = occ * (torch.arange(U1)[None, None, :] < U_b[:, None, None])  # column U_b is the final blank, not a label
    surrogate = rnnt_loss_reference(z, targets, T_b, U_b, reduction="sum") - lam * (occ.detach() * label_lp).sum()
    surrogate.backward()
    torch.testing.assert_close(x.grad, z.grad, rtol=1e-6, atol=1e-8)
