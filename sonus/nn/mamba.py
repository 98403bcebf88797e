"""Mamba: the selective state-space layer (Gu & Dao 2023, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces"), in plain PyTorch with mamba-ssm's kernel when it can.

The selective scan is the recurrence, per channel d and state n (discretised by zero-order
hold on A and Euler on B, as in the paper's Algorithm 2 and mamba-ssm's ``selective_scan_fn``):

    dt_t     = softplus(delta_t + delta_bias)                     (softplus when delta_softplus)
    h_t      = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t          h_0 = 0
    y_t      = <C_t, h_t> + D * u_t
    out_t    = y_t * silu(z_t)                                     (when a gate z is given)

:func:`selective_scan` runs it as a parallel scan in pure PyTorch: the sequence is cut into
chunks of ``chunk_size`` steps; inside a chunk a Hillis-Steele scan combines the pairs
(decay, input) in log2(chunk) vectorised steps; a short loop over the chunks carries the state
from one to the next. Every factor it multiplies is a decay exp(dt * A) <= 1, so nothing can
overflow however long the sequence or large dt * |A| (a log-space cumsum needs exp(-sum dt*A),
which does). Memory: only one tile's (chunk, rows, D, N) states exist at a time, and for
backward only the states at chunk starts are kept (each chunk is recomputed), not the
(Bt, D, N, L) states a plain autograd scan would hold. On CUDA with ``mamba_ssm`` importable it
calls mamba-ssm's fused kernel instead. The scan always runs in fp32 (fp64 for fp64 inputs),
autocast or not.

Shapes: Bt batch, D channels (d_inner), N state size (d_state), L sequence length.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

ScanBackend = Literal["auto", "torch", "reference"]

# Set to False to keep mamba-ssm's CUDA kernel out even where it imports (e.g. to compare backends).
MAMBA_SSM_ENABLED: bool = True
_CPU_TILE, _ACCEL_TILE = 2**19, 2**24  # elements of a (chunk, rows, D, N) tile of the parallel scan


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan() -> Callable[..., Tensor] | None:
    """mamba-ssm's ``selective_scan_fn``, imported on first use; None where it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError, RuntimeError):  # not installed, or its CUDA extension does not load
        return None
    return selective_scan_fn


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                  z: Tensor | None, delta_bias: Tensor | None) -> None:  # fmt: skip
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be (Bt, D, L) and equal, got {tuple(u.shape)} and {tuple(delta.shape)}")
    bt, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (D={d}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (bt, n, length):
            raise ValueError(f"{name} must be (Bt, N, L) = {(bt, n, length)}, got {tuple(t.shape)}")
    for name, opt, shape in (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, tuple(u.shape))):
        if opt is not None and tuple(opt.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(opt.shape)}")


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None,
                             delta_softplus: bool = True) -> Tensor:  # fmt: skip
    """The selective scan as a plain loop over L: the slow, obviously right reference.

    Args: u, delta (Bt, D, L); A (D, N); B, C (Bt, N, L); D, delta_bias (D,); z (Bt, D, L).
    Returns: (Bt, D, L) in u's dtype.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u)
    with torch.autocast(u.device.type, enabled=False):
        x, dt, a, b, c = u.to(dtype), delta.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
        if delta_bias is not None:
            dt = dt + delta_bias.to(dtype)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        h = x.new_zeros(x.shape[0], x.shape[1], a.shape[1])  # (Bt, D, N)
        ys = []
        for t in range(x.shape[2]):
            h = torch.exp(dt[:, :, t, None] * a) * h + (dt[:, :, t] * x[:, :, t])[:, :, None] * b[:, None, :, t]
            ys.append((h * c[:, None, :, t]).sum(-1))  # (Bt, D)
        y = torch.stack(ys, dim=-1) if ys else x.new_zeros(x.shape)
        if D is not None:
            y = y + x * D.to(dtype)[:, None]
        if z is not None:
            y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


def _scan_chunk(dt: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk, time first (slices and concatenations along dim 0 are contiguous copies):
    dt, x (K, Bt, D); A (D, N); B, C (K, Bt, N); h (Bt, D, N) the state before the chunk.
    Returns y (K, Bt, D) without the D skip, and the state after the chunk (Bt, D, N)."""
    a = torch.exp(dt[..., None] * A)  # (K, Bt, D, N) decays, all in (0, 1]
    b = (dt * x)[..., None] * B[:, :, None, :]  # (K, Bt, D, N) inputs
    b[0].addcmul_(a[0], h)  # carry the previous chunk's state in (in place: the product saved its inputs, not b)
    k, s = a.shape[0], 1
    while s < k:  # Hillis-Steele: after the step with offset s, b[t] combines steps t-2s+1 .. t
        b = torch.cat([b[:s], torch.addcmul(b[s:], a[s:], b[:-s])])
        if 2 * s < k:  # the last step needs no decays
            a = torch.cat([a[:s], a[s:] * a[:-s]])
        s *= 2
    y = torch.einsum("kbdn,kbn->kbd", b, C)  # (K, Bt, D)
    return y, b[-1].clone()  # a copy: a view would keep all K states alive with the carry


def _tiles(x: Tensor, n: int, chunk: int) -> list[tuple[slice, list[slice]]]:
    """(batch rows, time chunks in order) of each tile of x (L, Bt, D). Rows are independent;
    ~2^19 elements a (chunk, rows, D, N) tile stay in a CPU core's cache (7x faster than one
    big tile at Bt=126, D=512, L=122); accelerators take 2^24."""
    length, bt, d = x.shape
    rows = max(1, (_CPU_TILE if x.device.type == "cpu" else _ACCEL_TILE) // (chunk * d * n))
    chunks = [slice(i, i + chunk) for i in range(0, length, chunk)]
    return [(slice(r, r + rows), chunks) for r in range(0, bt, rows)]


class _ChunkedScan(torch.autograd.Function):
    """dt, x (L, Bt, D); A (D, N); B, C (L, Bt, N) -> y (L, Bt, D) without the D skip.

    Forward keeps only the state at each chunk start (Bt, D, N, L / chunk); backward recomputes
    one chunk at a time, last first, and backpropagates through it with the state's gradient
    carried back: activation checkpointing by hand (torch.utils.checkpoint, tried first, left
    glibc's heap 20x larger than the tensors it held on CPU).
    """

    @staticmethod
    def forward(ctx: Any, dt: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tensor:
        y = torch.empty_like(x)
        tiles = _tiles(x, A.shape[1], chunk)
        starts = x.new_empty(len(tiles[0][1]), x.shape[1], x.shape[2], A.shape[1])  # (L / chunk, Bt, D, N)
        for rows, chunks in tiles:
            h = x.new_zeros(starts[0, rows].shape)
            for j, t in enumerate(chunks):  # the carry loop
                starts[j, rows] = h
                y[t, rows], h = _scan_chunk(dt[t, rows], x[t, rows], A, B[t, rows], C[t, rows], h)
        ctx.save_for_backward(dt, x, A, B, C, starts)
        ctx.chunk = chunk
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        dt, x, A, B, C, starts = ctx.saved_tensors
        grads = [torch.zeros_like(v) for v in (dt, x, B, C)]
        grad_A = torch.zeros_like(A)
        for rows, chunks in _tiles(x, A.shape[1], ctx.chunk):
            grad_h = None  # d loss / d state after the chunk
            for j in reversed(range(len(chunks))):
                t = chunks[j]
                with torch.enable_grad():
                    ins = [v[t, rows].detach().requires_grad_() for v in (dt, x, B, C)]
                    a, h0 = A.detach().requires_grad_(), starts[j, rows].detach().requires_grad_()
                    y, h = _scan_chunk(ins[0], ins[1], a, ins[2], ins[3], h0)
                    outs, gouts = ((y,), (gy[t, rows],)) if grad_h is None else ((y, h), (gy[t, rows], grad_h))
                    *g, g_a, grad_h = torch.autograd.grad(outs, [*ins, a, h0], gouts)
                for buf, gi in zip(grads, g):
                    buf[t, rows] = gi
                grad_A += g_a
        return grads[0], grads[1], grad_A, grads[2], grads[3], None


def _scan_chunked(dt: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int) -> Tensor:
    """dt, x (Bt, D, L); A (D, N); B, C (Bt, N, L) -> y (Bt, D, L) without the D skip."""
    if x.numel() == 0:
        return torch.zeros_like(x)
    dt, x, B, C = (t.permute(2, 0, 1).contiguous() for t in (dt, x, B, C))  # (L, Bt, .) time first
    return _ChunkedScan.apply(dt, x, A, B, C, chunk_size).permute(1, 2, 0)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = True,
                   backend: ScanBackend = "auto", chunk_size: int = 64) -> Tensor:  # fmt: skip
    """The selective scan of mamba-ssm's ``selective_scan_fn`` (see the module docstring).

    Args:
        u, delta: (Bt, D, L) input and (pre-softplus) step size.
        A: (D, N) state matrix (negative real for a decaying state; Mamba passes -exp(A_log)).
        B, C: (Bt, N, L) input-dependent input and output matrices.
        D: (D,) skip; z: (Bt, D, L) gate, the output is multiplied by silu(z); delta_bias: (D,).
        backend: "auto" (mamba-ssm's kernel on CUDA where it imports and ``MAMBA_SSM_ENABLED``;
            on CPU the loop for sequences of at most ``chunk_size`` steps, where it is about 4x
            faster than the parallel scan (SPMamba's intra-frame scans over frequency); else
            "torch"), "torch" (the chunked parallel scan) or "reference" (the loop).
        chunk_size: steps per chunk of the parallel scan.
    Returns: (Bt, D, L) in u's dtype.
    """
    if backend not in ("auto", "torch", "reference"):
        raise ValueError(f"selective_scan backend must be 'auto', 'torch' or 'reference', got {backend!r}")
    if chunk_size < 1:
        raise ValueError(f"selective_scan chunk_size must be >= 1, got {chunk_size}")
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if backend == "reference" or (backend == "auto" and not u.is_cuda and u.shape[-1] <= chunk_size):
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "auto" and MAMBA_SSM_ENABLED and u.is_cuda and (fn := _mamba_ssm_scan()) is not None:
        # the kernel takes u, delta, B, C, z in one dtype and A, D, delta_bias in fp32; it scans in fp32
        dtype = u.dtype
        cast = [None if t is None else t.to(dtype).contiguous() for t in (u, delta, B, C, z)]
        f32 = [None if t is None else t.float().contiguous() for t in (A, D, delta_bias)]
        return fn(cast[0], cast[1], f32[0], cast[2], cast[3], f32[1], cast[4], f32[2], delta_softplus)
    dtype = _compute_dtype(u)
    with torch.autocast(u.device.type, enabled=False):
        x, dt = u.to(dtype), delta.to(dtype)
        if delta_bias is not None:
            dt = dt + delta_bias.to(dtype)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        y = _scan_chunked(dt, x, A.to(dtype), B.to(dtype), C.to(dtype), chunk_size)
        if D is not None:
            y = y + x * D.to(dtype)[:, None]
        if z is not None:
            y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


@dataclass(frozen=True)
class MambaConfig:
    """One Mamba block. d_inner = expand * d_model; dt_rank "auto" = ceil(d_model / 16).
    dt is initialised log-uniform in [dt_min, dt_max], floored at dt_init_floor (the paper's values)."""

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | Literal["auto"] = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"MambaConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"MambaConfig.dt_rank must be 'auto' or an int >= 1, got {self.dt_rank!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if self.dt_init_floor <= 0:
            raise ValueError(f"MambaConfig.dt_init_floor must be > 0, got {self.dt_init_floor}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """dt_rank resolved: ceil(d_model / 16) when "auto"."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)


class Mamba(nn.Module):
    """The Mamba block (Gu & Dao 2023, Fig. 3): (B, L, d_model) -> (B, L, d_model), causal.

    in_proj to (x, z) -> causal depthwise conv1d on x -> SiLU -> x_proj to (dt, B, C) ->
    dt_proj -> selective scan with A = -exp(A_log) -> gated by SiLU(z) -> out_proj.
    Parameter names and shapes follow mamba-ssm's ``mamba_simple.Mamba`` (no biases but the
    conv's and dt_proj's), so its state dicts load here.
    """

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        di, n, r = cfg.d_inner, cfg.d_state, cfg.rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di)  # padded on the left in forward: causal
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di)
        self.out_proj = nn.Linear(di, cfg.d_model, bias=False)
        # S4D-real: A = -(1, 2, ..., N) for every channel
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))  # (D, N)
        self.D = nn.Parameter(torch.ones(di))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -(r**-0.5), r**-0.5)
            lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
            dt = torch.exp(torch.rand(di) * (hi - lo) + lo).clamp(min=cfg.dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt

    def forward(self, x: Tensor, backend: ScanBackend = "auto") -> Tensor:
        """x (B, L, d_model) -> (B, L, d_model); output t depends on inputs 0..t only."""
        n, r = self.cfg.d_state, self.cfg.rank
        xs, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, D, L) each
        xs = F.silu(self.conv1d(F.pad(xs, (self.cfg.d_conv - 1, 0))))  # (B, D, L)
        dt, b, c = self.x_proj(xs.transpose(1, 2)).split([r, n, n], dim=-1)  # (B, L, r), (B, L, N) x2
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, D, L); the bias goes in as delta_bias
        y = selective_scan(xs, dt, -torch.exp(self.A_log.float()), b.transpose(1, 2), c.transpose(1, 2), self.D,
                           z=z, delta_bias=self.dt_proj.bias, delta_softplus=True, backend=backend)  # fmt: skip
        return self.out_proj(y.transpose(1, 2))


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return y.to(x.dtype)


class ResidualMamba(nn.Module):
    """Pre-norm residual Mamba, mamba-ssm's ``Block``: x + Mamba(RMSNorm(x)), (B, L, d) -> (B, L, d)."""

    def __init__(self, cfg: MambaConfig, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, eps)
        self.mixer = Mamba(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mixer(self.norm(x))


class BiMamba(nn.Module):
    """Bidirectional Mamba as in SPMamba (Li et al. 2024): (B, L, d) -> (B, L, 2d).

    Two independent pre-norm residual Mamba blocks (:class:`ResidualMamba`), one over the
    sequence and one over its time reversal (flipped back), concatenated on the feature axis:
    ``[x + M_f(norm(x)), flip(x' + M_b(norm(x')))]`` with x' = flip(x). Position t therefore
    sees the whole sequence. The 2d output replaces a BLSTM's; a following layer mixes the halves.
    """

    def __init__(self, cfg: MambaConfig, eps: float = 1e-5) -> None:
        super().__init__()
        self.forward_block = ResidualMamba(cfg, eps)
        self.backward_block = ResidualMamba(cfg, eps)

    def forward(self, x: Tensor) -> Tensor:
        fwd = self.forward_block(x)
        bwd = self.backward_block(x.flip(1)).flip(1)
        return torch.cat([fwd, bwd], dim=-1)  # (B, L, 2d)
