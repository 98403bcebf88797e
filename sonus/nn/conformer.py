"""Streaming Conformer encoder (Gulati et al. 2020) with chunk-wise limited attention.

Each block: half feed-forward, self-attention, convolution module, half feed-forward,
LayerNorm (the macaron layout). What makes it stream:

- Subsampling x4 by two stride-2 convolutions that are causal in time: output frame j
  sees input frames 4j-3 .. 4j+3 and nothing later. Or ``stack``: each group of r frames
  (``subsampling_factor``, 4 by default) concatenated and projected.
- Attention is chunk-wise (WeNet's dynamic-chunk mask, fixed): frame i sees every frame
  of its own chunk and of ``left_chunks`` chunks before it (all of them when -1), never a
  later chunk. Positions are relative: rotary embeddings (Su et al. 2021) make the
  attention score depend on i - j only.
- The convolution module's depthwise convolution is causal, and its norm is a LayerNorm
  (BatchNorm statistics would differ between a batch and a stream).

So a stream fed chunk by chunk through :meth:`ConformerEncoder.step` (cached keys and
values, convolution context) gives the frames of the offline pass over the same input.

Shapes: B batch, T input frames, F features, T' = T // r encoder frames (r = 4 unless stacking), D d_model,
H heads, C chunk size in encoder frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConformerConfig:
    d_model: int = 256
    layers: int = 8
    heads: int = 4
    ff_mult: int = 4
    conv_kernel: int = 15
    subsampling: Literal["conv2d", "stack"] = "conv2d"  # stack: ``subsampling_factor`` frames concatenated, then a linear layer
    subsampling_factor: int = 4  # feature frames per encoder frame (conv2d: 4 only)
    subsampling_channels: int = 64  # conv2d: channels of the two stride-2 convolutions
    chunk_size: int = 4  # encoder frames a chunk (4 x 40 ms = 160 ms); 0: full attention (not streaming)
    left_chunks: int = -1  # chunks of left context each chunk sees; -1: all
    dropout: float = 0.1


def chunking_from_att_context(left: int, right: int) -> tuple[int, int]:
    """NeMo's ``att_context_size=[left, right]`` (encoder frames; its ``chunked_limited`` style, which
    streams) as ``(chunk_size, left_chunks)``: each frame sees the rest of its chunk of ``right + 1``
    frames and ``left`` frames before the chunk. ``[-1, -1]`` is full attention (``(0, -1)``).

    Raises:
        ValueError: ``left`` is not a whole number of chunks, or a bound is below -1.
    """
    if left < -1 or right < -1:
        raise ValueError(f"model.conformer.att_context_size=[{left}, {right}]: each bound is a frame count >= 0, or -1 (unlimited)")
    if right == -1:
        if left != -1:
            raise ValueError(f"model.conformer.att_context_size=[{left}, -1]: an unlimited right context does not stream; use [-1, -1] for full attention")
        return 0, -1
    chunk = right + 1
    if left != -1 and left % chunk:
        raise ValueError(f"model.conformer.att_context_size=[{left}, {right}]: the left context must be a multiple of the chunk, right + 1 = {chunk}")
    return chunk, -1 if left == -1 else left // chunk


@dataclass
class ConformerState:
    """What a stream carries between calls. ``kv`` holds each layer's rotated keys and values
    of the frames still in the left context; ``conv`` each layer's last ``kernel - 1`` inputs."""

    pending: torch.Tensor  # (B, <r, F) input frames waiting to complete a group of r (the subsampling factor)
    sub: list[torch.Tensor]  # the subsampling convolutions' last input frame: (B, 1, F), (B, C, 1, F/2)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (B, H, t, D/H) each
    conv: list[torch.Tensor]  # per layer: (B, D, kernel - 1)
    offset: int  # encoder frames emitted so far (the rotary position of the next one)
    ready: torch.Tensor  # (B, <C, F') subsampled frames waiting to complete a chunk


class CausalSubsampling(nn.Module):
    """(B, T, F) -> (B, T // 4, D): two 3x3 stride-2 convolutions, causal in time."""

    def __init__(self, in_dim: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=(0, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=(0, 1))
        f = (in_dim + 1) // 2
        f = (f + 1) // 2
        self.proj = nn.Linear(channels * f, d_model)

    def forward(self, x: torch.Tensor, ctx: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, T, F), T a multiple of 4 when streaming; ``ctx``: the last input frame of
        each convolution from the previous call (None: zeros, the start of an utterance)."""
        x = x[:, None]  # (B, 1, T, F)
        h1 = x.new_zeros(x.shape[0], 1, 1, x.shape[-1]) if ctx is None else ctx[0]
        a = torch.cat([h1, x], dim=2)
        y = F.relu(self.conv1(a))  # (B, C, T/2, F/2)
        h2 = y.new_zeros(y.shape[0], y.shape[1], 1, y.shape[-1]) if ctx is None else ctx[1]
        b = torch.cat([h2, y], dim=2)
        z = F.relu(self.conv2(b))  # (B, C, T/4, F/4)
        B, C, T4, F4 = z.shape
        return self.proj(z.permute(0, 2, 1, 3).reshape(B, T4, C * F4)), [a[:, :, -1:], b[:, :, -1:]]


class StackSubsampling(nn.Module):
    """(B, T, F) -> (B, T // r, D): each group of r frames concatenated and projected."""

    def __init__(self, in_dim: int, d_model: int, factor: int = 4) -> None:
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(factor * in_dim, d_model)

    def forward(self, x: torch.Tensor, ctx: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, T, F = x.shape
        r = self.factor
        return self.proj(x[:, : T - T % r].reshape(B, T // r, r * F)), []


def rotary(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, d) by positions (T,): pairs (x_i, x_{i+d/2}) turn by pos * 10000^(-2i/d)."""
    d = x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float32) * 2 / d)
    ang = pos.float()[:, None] * inv[None, :]  # (T, d/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def chunk_mask(T: int, lengths: torch.Tensor, chunk: int, left_chunks: int, offset: int | torch.Tensor = 0, past: int = 0) -> torch.Tensor:
    """(B, 1, T, past + T) bool: query i (absolute frame offset + i) may see key j.

    Keys are the ``past`` cached frames followed by the T new ones; a key is visible when
    it is valid (within ``lengths``, counted over the new frames; a cached frame at an
    absolute position < 0 is the zero padding of a fixed-size cache, never valid), not in a
    later chunk, and at most ``left_chunks`` chunks back. ``offset`` may be a 0-d tensor (the
    exported streaming graph takes it as an input)."""
    q = offset + torch.arange(T, device=lengths.device)
    k = offset - past + torch.arange(past + T, device=lengths.device)
    if chunk > 0:
        # clamped: ONNX integer division truncates towards zero; keys < 0 are invalid anyway
        qc, kc = torch.div(q, chunk, rounding_mode="floor"), torch.div(k.clamp(min=0), chunk, rounding_mode="floor")
        ok = kc[None, :] <= qc[:, None]
        if left_chunks >= 0:
            ok = ok & (kc[None, :] >= qc[:, None] - left_chunks)  # not &=: ONNX has no in-place and
    else:
        ok = torch.ones(T, past + T, dtype=torch.bool, device=lengths.device)
    valid = ((k[None, :] - offset) < lengths[:, None]) & (k[None, :] >= 0)  # (B, past+T): cached keys are valid
    return (ok[None] & valid[:, None, :])[:, None]


class FeedForward(nn.Module):
    def __init__(self, d: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, d * mult), nn.SiLU(), nn.Dropout(dropout), nn.Linear(d * mult, d), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"conformer d_model {d} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, D), mask (B, 1, T, t + T), pos (T,) -> (B, T, D) and the keys/values seen."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
        q, k = rotary(q, pos), rotary(k, pos)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        att = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, T, t+T)
        att = torch.softmax(att.float().masked_fill(~mask, -1e9), dim=-1).to(v.dtype)  # finite: padding rows see no key
        y = torch.matmul(F.dropout(att, self.dropout, self.training), v)  # (B, H, T, d)
        return self.drop(self.out(y.transpose(1, 2).reshape(B, T, D))), (k, v)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, causal depthwise conv, LayerNorm, SiLU, pointwise conv."""

    def __init__(self, d: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, kernel, groups=d)
        self.dw_norm = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.context = kernel - 1

    def forward(self, x: torch.Tensor, valid: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), valid (B, T, 1); cache (B, D, kernel-1) -> (B, T, D), new cache."""
        h = F.glu(self.pw1(self.norm(x)), dim=-1) * valid  # padding must not leak into later utterance frames
        h = h.transpose(1, 2)  # (B, D, T)
        ctx = h.new_zeros(h.shape[0], h.shape[1], self.context) if cache is None else cache.to(h.dtype)
        h = torch.cat([ctx, h], dim=2)
        new_cache = h[:, :, h.shape[2] - self.context :]
        y = self.dw(h).transpose(1, 2)  # (B, T, D)
        return self.drop(self.pw2(F.silu(self.dw_norm(y)))), new_cache


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.attn = SelfAttention(d, cfg.heads, cfg.dropout)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x, mask, pos, valid, kv=None, conv=None):
        x = x + 0.5 * self.ff1(x)
        a, kv = self.attn(x, mask, pos, kv)
        x = x + a
        c, conv = self.conv(x, valid, conv)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.norm(x), kv, conv


class ConformerEncoder(nn.Module):
    """Log-mel (B, T, F) -> (B, T // r, D). ``forward`` is the offline pass with the
    streaming attention mask; ``step`` the same computation chunk by chunk."""

    def __init__(self, in_dim: int, cfg: ConformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.subsampling not in ("conv2d", "stack"):
            raise ValueError(f"conformer subsampling must be 'conv2d' or 'stack', got {cfg.subsampling!r}")
        if cfg.subsampling_factor < 1 or (cfg.subsampling == "conv2d" and cfg.subsampling_factor != 4):
            raise ValueError(
                f"conformer subsampling_factor must be 4 with conv2d subsampling, >= 1 with stack; got {cfg.subsampling_factor}"
            )
        if cfg.subsampling == "conv2d":
            self.subsample = CausalSubsampling(in_dim, cfg.subsampling_channels, cfg.d_model)
        else:
            self.subsample = StackSubsampling(in_dim, cfg.d_model, cfg.subsampling_factor)
        self.reduction = cfg.subsampling_factor  # feature frames per encoder frame
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.layers))
        self.out_dim = cfg.d_model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F), lengths (B,) -> (B, T', D), (B,). Frames past a length are garbage."""
        y, _ = self.subsample(x)
        lengths = self.output_lengths(lengths)
        T = y.shape[1]
        mask = chunk_mask(T, lengths, self.cfg.chunk_size, self.cfg.left_chunks)
        valid = (torch.arange(T, device=y.device)[None, :] < lengths[:, None])[..., None].to(y.dtype)
        pos = torch.arange(T, device=y.device)
        y = self.drop(y)
        for blk in self.blocks:
            y, _, _ = blk(y, mask, pos, valid)
        return y, lengths

    def output_lengths(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder frames (B,) of ``frames`` (B,) input frames: a partial last group is dropped."""
        return torch.div(frames, self.reduction, rounding_mode="floor")  # conv2d's floor(floor(T/2)/2) too

    def initial_state(self, batch: int, device: torch.device, feat_dim: int) -> ConformerState:
        return ConformerState(
            pending=torch.zeros(batch, 0, feat_dim, device=device), sub=None, kv=[None] * len(self.blocks),
            conv=[None] * len(self.blocks), offset=0, ready=torch.zeros(batch, 0, self.out_dim, device=device),
        )  # fmt: skip

    def step(self, x: torch.Tensor, state: ConformerState, final: bool = False) -> tuple[torch.Tensor, ConformerState]:
        """Streaming: x (B, t, F) new frames -> (B, t', D) encoder frames of every chunk now complete
        (with ``final``, also of the last partial chunk; leftover input frames short of a group are dropped as offline)."""
        x = torch.cat([state.pending, x], dim=1)
        n = (x.shape[1] // self.reduction) * self.reduction
        sub, ctx = state.sub, state.sub
        if n:
            y, ctx = self.subsample(x[:, :n], sub)
            ready = torch.cat([state.ready, y], dim=1)
        else:
            ready = state.ready
        C = self.cfg.chunk_size
        take = ready.shape[1] if (final or C <= 0) else (ready.shape[1] // C) * C
        st = ConformerState(x[:, n:], ctx, list(state.kv), list(state.conv), state.offset, ready[:, take:])
        if take == 0:
            return ready[:, :0], st
        y = ready[:, :take]
        B, T = y.shape[:2]
        past = 0 if st.kv[0] is None else st.kv[0][0].shape[2]
        lengths = torch.full((B,), T, dtype=torch.long, device=y.device)
        mask = chunk_mask(T, lengths, C, self.cfg.left_chunks, st.offset, past)
        pos = torch.arange(st.offset, st.offset + T, device=y.device)
        valid = y.new_ones(B, T, 1)
        for i, blk in enumerate(self.blocks):
            y, kv, st.conv[i] = blk(y, mask, pos, valid, st.kv[i], st.conv[i])
            st.kv[i] = self._trim(kv, st.offset + T)
        st.offset += T
        return y, st

    def _trim(self, kv: tuple[torch.Tensor, torch.Tensor], end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep only the keys/values a later chunk can still see."""
        C, L = self.cfg.chunk_size, self.cfg.left_chunks
        if C <= 0 or L < 0:
            return kv
        keep = min(kv[0].shape[2], L * C + end % C)  # full left chunks plus the current partial one
        start = kv[0].shape[2] - keep  # not [-keep:]: with keep = 0 that would keep everything
        return kv[0][:, :, start:], kv[1][:, :, start:]
