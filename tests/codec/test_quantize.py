import math

import pytest
import torch

from sonus.codec.quantize import (
    ResidualVectorQuantizer,
    RVQConfig,
    VectorQuantizer,
    bitrate,
    kmeans,
)


def _x(b=4, d=16, t=50, seed=0):
    return torch.randn(b, d, t, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", [{}, {"ema": False}, {"codebook_dim": 4, "l2_normalize": True, "ema": False}, {"codebook_dim": 4}])
def test_codes_in_range_and_decode_matches_forward(kw):
    cfg = RVQConfig(dim=16, n_q=3, codebook_size=32, **kw)
    rvq = ResidualVectorQuantizer(cfg)
    x = _x()
    rvq.train()
    rvq(x)  # k-means initialisation on the first training batch
    rvq.eval()
    out = rvq(x)
    assert out.codes.shape == (4, 3, 50) and out.codes.dtype == torch.long
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 32
    assert torch.equal(rvq.encode(x), out.codes)
    assert torch.allclose(rvq.decode(out.codes), out.quantized, atol=1e-5)
    if "codebook_dim" in kw:
        return  # an untrained factorized projection need not shrink the residual
    # more quantizers, smaller residual
    errs = [(x - rvq.decode(out.codes[:, :q])).pow(2).mean().item() for q in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2]


def test_straight_through_gradient_reaches_the_input():
    rvq = ResidualVectorQuantizer(RVQConfig(dim=8, n_q=2, codebook_size=16))
    x = _x(2, 8, 10).requires_grad_(True)
    out = rvq(x)
    (out.quantized * torch.arange(10.0)).sum().backward()
    # d quantized / d x is the identity: the gradient equals the upstream gradient
    assert torch.allclose(x.grad, torch.arange(10.0).expand(2, 8, 10), atol=1e-5)


def test_dead_codes_are_restarted_from_batch_vectors():
    cfg = RVQConfig(dim=4, n_q=1, codebook_size=8, kmeans_init=False, dead_threshold=1.0, decay=0.5)
    vq = VectorQuantizer(cfg).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.full((8, 4), 100.0))  # far from every input: all codes unused ...
        vq.codebook[0] = 0.0  # ... but this one
        vq.ema_sum.copy_(vq.codebook)
    x = 0.1 * _x(2, 4, 20)
    vq(x)  # usage of codes 1..7 decays to 0.5 < 1: they restart
    far = (vq.codebook.abs() > 50).any(-1)
    assert not far.any(), vq.codebook
    # restarted codes are batch vectors: each equals some input frame
    frames = x.transpose(1, 2).reshape(-1, 4)
    assert all(((vq.codebook[i] - frames) ** 2).sum(-1).min() < 1e-10 for i in range(1, 8))


def test_quantizer_dropout_uses_fewer_quantizers_for_some_utterances():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(RVQConfig(dim=8, n_q=4, codebook_size=16, quantizer_dropout=1.0)).train()
    x = _x(64, 8, 5)
    out = rvq(x)
    rvq.eval()
    full = rvq(x).quantized
    differs = (out.quantized - full).abs().amax((1, 2)) > 1e-6
    assert differs.any() and not differs.all()  # n_q' = 4 drawn for some, fewer for others


def test_kmeans_finds_separated_clusters_and_bitrate():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    c, sizes = kmeans(x, 3, 10, generator=torch.Generator().manual_seed(1))
    assert sorted(sizes.tolist()) == [50, 50, 50]
    assert torch.cdist(c, centres).min(0).values.max() < 0.1
    assert bitrate(75, 8, 1024) == 6000 and RVQConfig(n_q=4, codebook_size=1024).bits_per_frame == 40
    assert math.isclose(bitrate(50, 2, 1024), 1000)
    with pytest.raises(ValueError, match="decay"):
        RVQConfig(decay=1.5)
