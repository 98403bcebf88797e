"""Mamba: the parallel selective scan against the sequential loop (values and gradients), its
stability on long sequences, the block's causality and the bidirectional block's two-way view."""

from __future__ import annotations

import pytest
import torch

from sonus.nn import mamba
from sonus.nn.mamba import (
    BiMamba,
    Mamba,
    MambaConfig,
    selective_scan,
    selective_scan_reference,
)


def _inputs(bt: int, d: int, n: int, length: int, dtype=torch.float64, seed: int = 0, dt_shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {"u": r(bt, d, length), "delta": r(bt, d, length) + dt_shift, "A": -torch.rand(d, n, generator=g, dtype=dtype) * 4,
            "B": r(bt, n, length), "C": r(bt, n, length), "D": r(d), "z": r(bt, d, length), "delta_bias": r(d) * 0.5}  # fmt: skip


@pytest.mark.parametrize("length,chunk", [(1, 4), (37, 8), (64, 16), (100, 64), (130, 64)])
@pytest.mark.parametrize("optional", [(), ("D",), ("z", "delta_bias"), ("D", "z", "delta_bias")])
@pytest.mark.parametrize("softplus", [True, False])
def test_parallel_scan_equals_the_loop(length, chunk, optional, softplus):
    x = _inputs(2, 3, 4, length)
    x = {k: v for k, v in x.items() if k in ("u", "delta", "A", "B", "C") or k in optional}
    if not softplus:
        x["delta"] = x["delta"].abs() * 0.5  # a step size must be positive without the softplus
    want = selective_scan_reference(**x, delta_softplus=softplus)
    got = selective_scan(**x, delta_softplus=softplus, backend="torch", chunk_size=chunk)
    assert got.shape == (2, 3, length) and got.dtype == torch.float64, (got.shape, got.dtype)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length,chunk,tile", [(45, 16, 2**19), (16, 16, 2**19), (45, 16, 1)])
def test_parallel_scan_gradients_equal_the_loop(length, chunk, tile, monkeypatch):
    """Gradients w.r.t. every input, through the recomputed chunks; tile 1: one batch row a tile."""
    monkeypatch.setattr(mamba, "_CPU_TILE", tile)
    x = {k: v.requires_grad_() for k, v in _inputs(3, 3, 4, length, seed=1).items()}
    gy = torch.randn(3, 3, length, dtype=torch.float64)
    ys, grads = [], []
    for fn in (selective_scan_reference, lambda **kw: selective_scan(**kw, backend="torch", chunk_size=chunk)):
        ys.append(fn(**x))
        grads.append(torch.autograd.grad((ys[-1] * gy).sum(), list(x.values())))
    torch.testing.assert_close(ys[1], ys[0], rtol=1e-10, atol=1e-10)
    for name, got, want in zip(x, grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d/d{name}: {m}")


def test_scan_is_fp32_under_autocast_and_returns_the_input_dtype():
    x = _inputs(1, 4, 3, 50, dtype=torch.float32)
    want = selective_scan_reference(**x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(**x, backend="torch")
        low = selective_scan(**{k: v.bfloat16() for k, v in x.items()}, backend="torch")
    assert got.dtype == torch.float32 and low.dtype == torch.bfloat16, (got.dtype, low.dtype)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_long_sequence_with_large_steps_stays_finite_and_exact():
    """L = 4096 with dt * |A| up to ~300 a step: a log-space cumsum would overflow exp(-sum dt*A)."""
    x = _inputs(1, 2, 4, 4096, dtype=torch.float32, seed=2, dt_shift=20.0)
    x["A"] = x["A"] * 4
    got = selective_scan(**x, backend="torch")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, selective_scan_reference(**x), rtol=1e-4, atol=1e-4)
    xg = {k: v.clone().requires_grad_() for k, v in x.items()}
    selective_scan(**xg, backend="torch").square().mean().backward()
    assert all(torch.isfinite(v.grad).all() for v in xg.values())


def test_bad_shapes_and_backend_are_refused_with_the_values():
    x = _inputs(2, 3, 4, 10)
    with pytest.raises(ValueError, match=r"B must be \(Bt, N, L\) = \(2, 4, 10\)"):
        selective_scan(**{**x, "B": x["B"][:, :, :9]})
    with pytest.raises(ValueError, match="'cuda'"):
        selective_scan(**x, backend="cuda")  # type: ignore[arg-type]


def test_auto_backend_on_cpu_never_calls_mamba_ssm(monkeypatch):
    called = []
    monkeypatch.setattr(mamba, "_mamba_ssm_scan", lambda: called.append(1) or None)
    x = _inputs(1, 2, 3, 20)
    torch.testing.assert_close(selective_scan(**x), selective_scan_reference(**x))
    assert not called


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", "torch"])  # auto: mamba-ssm's kernel where it imports
def test_cuda_scan_equals_the_loop(backend):
    x = {k: v.float().requires_grad_() for k, v in _inputs(2, 16, 8, 300, seed=3).items()}
    xc = {k: v.detach().cuda().requires_grad_() for k, v in x.items()}
    gy = torch.randn(2, 16, 300)
    want = selective_scan_reference(**x)
    got = selective_scan(**xc, backend=backend)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    (want * gy).sum().backward()
    (got * gy.cuda()).sum().backward()
    for k, v in x.items():
        torch.testing.assert_close(xc[k].grad.cpu(), v.grad, rtol=1e-3, atol=1e-3, msg=lambda m, k=k: f"d/d{k}: {m}")


def _block(cls, d=8):
    torch.manual_seed(0)
    return cls(MambaConfig(d_model=d, d_state=4, d_conv=3, expand=2)).double()


def test_mamba_block_is_causal_and_matches_the_reference_backend():
    m = _block(Mamba)
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 25:] += torch.randn(2, 15, 8, dtype=torch.float64)
    with torch.no_grad():
        y, y2, ref = m(x), m(x2), m(x, backend="reference")
    assert y.shape == (2, 40, 8), y.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    assert (y[:, :25] - y2[:, :25]).abs().max() == 0, "an output saw a later input"
    assert (y[:, 25:] - y2[:, 25:]).abs().amax(-1).min() > 0


def test_mamba_dt_init_is_the_papers():
    cfg = MambaConfig(d_model=64, dt_min=0.01, dt_max=0.05)
    m = Mamba(cfg)
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert cfg.rank == 4 and m.dt_proj.weight.shape == (128, 4), (cfg.rank, m.dt_proj.weight.shape)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6, (dt.min(), dt.max())
    torch.testing.assert_close(-torch.exp(m.A_log.detach()), -torch.arange(1.0, 17.0).expand(128, 16))  # S4D-real


def test_bimamba_sees_the_future_and_doubles_the_width():
    m = _block(BiMamba)
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 20:] += 1.0
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    assert y.shape == (2, 30, 16), y.shape
    assert (y[:, :20, :8] - y2[:, :20, :8]).abs().max() == 0  # the forward half is causal
    assert (y[:, :20, 8:] - y2[:, :20, 8:]).abs().amax(-1).min() > 0  # the backward half reads ahead


@pytest.mark.parametrize("bad", [{"d_model": 0}, {"d_model": 8, "dt_rank": 0}, {"d_model": 8, "dt_min": 0.2}])
def test_config_errors_name_the_values(bad):
    with pytest.raises(ValueError, match=str(list(bad.values())[-1])):
        MambaConfig(**bad)
