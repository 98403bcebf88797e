import itertools

import pytest
import torch

from sonus.metrics.signal import si_sdr
from sonus.separation.loss import best_permutation, pairwise_metric, pit, reorder


def _sources(b, c, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, t, generator=g)


@pytest.mark.parametrize("c", [2, 3, 4, 5])
def test_pit_finds_the_permutation_and_is_invariant(c):
    refs = _sources(3, c, 400)
    g = torch.Generator().manual_seed(1)
    perms = [torch.randperm(c, generator=g) for _ in range(3)]
    est = torch.stack([refs[b, perms[b]] for b in range(3)]) + 0.05 * torch.randn(3, c, 400, generator=g)
    res = pit(est, refs)
    for b in range(3):  # estimate perm[b, k] is the one made from reference k
        assert torch.equal(res.perm[b], torch.argsort(perms[b]))
    aligned = reorder(est, res.perm)
    assert torch.allclose(res.metric, si_sdr(aligned, refs).mean(-1), atol=1e-5)
    # permuting the references (or the estimates) does not change the loss
    shuffled = refs[:, torch.randperm(c, generator=g)]
    assert torch.allclose(pit(est, shuffled).loss, res.loss, atol=1e-5)
    assert torch.allclose(pit(est[:, torch.randperm(c, generator=g)], refs).loss, res.loss, atol=1e-5)


def test_hungarian_equals_exhaustive_search():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        pw = torch.randn(1, 4, 4, generator=g)
        best = max(itertools.permutations(range(4)), key=lambda p: sum(pw[0, p[k], k].item() for k in range(4)))
        assert best_permutation(pw)[0].tolist() == list(best)


def test_pit_gradient_and_lengths():
    refs = _sources(2, 2, 300)
    est = (refs.flip(1) + 0.1 * _sources(2, 2, 300, seed=5)).requires_grad_(True)
    lengths = torch.tensor([300, 200])
    res = pit(est, refs, lengths=lengths)
    res.loss.mean().backward()
    assert est.grad is not None and torch.isfinite(est.grad).all()
    assert est.grad[1, :, 200:].abs().max() == 0  # padding gets no gradient
    assert res.perm.tolist() == [[1, 0], [1, 0]]


def test_pairwise_rejects_unknown_metric():
    with pytest.raises(ValueError, match="sdr_typo"):
        pairwise_metric(_sources(1, 2, 10), _sources(1, 2, 10), "sdr_typo")
