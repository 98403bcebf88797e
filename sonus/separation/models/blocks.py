"""Building blocks shared by the time-domain separators (Conv-TasNet, DPRNN, SepFormer).

All three follow the encoder-masker-decoder layout of Conv-TasNet (Luo & Mesgarani 2019):
a learned 1-D conv filterbank turns the waveform into frames, a masker estimates one mask
per source over those frames, and a transposed-conv filterbank turns each masked
representation back into a waveform. DPRNN (Luo, Chen & Yoshioka 2020) and SepFormer
(Subakan et al. 2021) share the dual-path masker: frames cut into overlapping chunks, a
stack of blocks alternating a model inside each chunk and one across chunks, overlap-add.

Shapes: B batch, T samples, N filters, F encoder frames, D masker channels, K chunk
length (frames), S chunks, C sources.

dtype policy: norms and the softmax over sources compute in fp32 and hand back the input
dtype, so the models run under ``torch.autocast`` with bf16/fp16 activations.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["gLN", "cLN", "BN"]
MaskAct = Literal["relu", "sigmoid", "softmax"]
EPS = 1e-8  # the Conv-TasNet paper's epsilon in gLN/cLN


# --- config checks ------------------------------------------------------------------------


def require_positive(cfg: object, *names: str) -> None:
    """Raise ValueError naming every field of ``cfg`` in ``names`` that is not an int > 0."""
    values = {n: getattr(cfg, n) for n in names}
    bad = {n: v for n, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v <= 0}
    if bad:
        raise ValueError(f"{type(cfg).__name__}: fields must be positive integers, got {bad}")


def require_choice(cfg: object, name: str, choices: object) -> None:
    """Raise ValueError when field ``name`` of ``cfg`` is not one of the ``Literal`` ``choices``."""
    value, options = getattr(cfg, name), get_args(choices)
    if value not in options:
        raise ValueError(f"{type(cfg).__name__}: {name}={value!r} is not one of {options}")


# --- learned filterbank -------------------------------------------------------------------


class Encoder(nn.Module):
    """Learned analysis filterbank: mix (B, T) -> ReLU(conv) frames (B, N, F).

    Hop is ``kernel_size // 2``. The mixture is zero-padded by one hop on the left and
    by one hop plus whatever completes the last frame on the right, so that every real
    sample is covered by the same number of frames; :class:`Decoder` crops the same way.
    Any T >= 1 works: F = (T + 2 * hop + extra - kernel_size) // hop + 1.
    """

    def __init__(self, n_filters: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 2:
            raise ValueError(f"encoder kernel_size must be >= 2 (hop = kernel_size // 2), got {kernel_size}")
        self.kernel_size, self.stride = kernel_size, kernel_size // 2
        self.conv = nn.Conv1d(1, n_filters, kernel_size, stride=self.stride, bias=False)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        assert mix.dim() == 2 and mix.shape[-1] >= 1, f"mix must be (B, T) with T >= 1, got {tuple(mix.shape)}"
        T, L, S = mix.shape[-1], self.kernel_size, self.stride
        extra = -(T + 2 * S - L) % S  # T + 2S >= L since L <= 2S + 1
        x = F.pad(mix[:, None], (S, S + extra))  # (B, 1, S + T + S + extra)
        return F.relu(self.conv(x))  # (B, N, F)


class Decoder(nn.Module):
    """Learned synthesis filterbank: masked frames (B, C, N, F) -> waveforms (B, C, T).

    The inverse of :class:`Encoder`'s framing: transposed conv with the same kernel and
    hop, then the encoder's left pad dropped and the output cropped to ``length`` = T.
    """

    def __init__(self, n_filters: int, kernel_size: int) -> None:
        super().__init__()
        self.stride = kernel_size // 2
        self.conv = nn.ConvTranspose1d(n_filters, 1, kernel_size, stride=self.stride, bias=False)

    def forward(self, frames: torch.Tensor, length: int) -> torch.Tensor:
        B, C, N, Fr = frames.shape
        y = self.conv(frames.reshape(B * C, N, Fr))  # (B*C, 1, T_padded)
        assert y.shape[-1] >= self.stride + length, (y.shape, self.stride, length)
        return y[:, 0, self.stride : self.stride + length].reshape(B, C, length)


# --- normalisation ------------------------------------------------------------------------


class GlobalLayerNorm(nn.Module):
    """gLN (Conv-TasNet): normalise (B, N, ...) over every axis but the batch, then a
    per-channel gain and bias. Sees the whole utterance, so it is not causal."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        xf = x.float()
        mean = xf.mean(dims, keepdim=True)
        var = (xf - mean).pow(2).mean(dims, keepdim=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (xf - mean) * torch.rsqrt(var + EPS) * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class CumulativeLayerNorm(nn.Module):
    """cLN (Conv-TasNet): normalise (B, N, T) at frame t with the mean and variance of all
    channels over frames 0..t, then a per-channel gain and bias. Causal."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 3, f"cLN expects (B, N, T), got {tuple(x.shape)}"
        xf = x.float()
        count = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=torch.float32) * x.shape[1]  # (T,)
        mean = xf.sum(1, keepdim=True).cumsum(-1) / count  # (B, 1, T)
        var = (xf.pow(2).sum(1, keepdim=True).cumsum(-1) / count - mean.pow(2)).clamp_min(0.0)
        y = (xf - mean) * torch.rsqrt(var + EPS) * self.weight[:, None] + self.bias[:, None]
        return y.to(x.dtype)


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over (B, N, T) that computes in fp32 under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """The normalisation ``kind`` ("gLN" | "cLN" | "BN") over ``channels``."""
    norms = {"gLN": GlobalLayerNorm, "cLN": CumulativeLayerNorm, "BN": BatchNorm}
    if kind not in norms:
        raise ValueError(f"unknown norm {kind!r}; choose one of {tuple(norms)}")
    return norms[kind](channels)


def bottleneck(norm: NormKind, n_in: int, n_out: int) -> nn.Sequential:
    """Normalise the encoder frames, then a 1x1 conv: (B, n_in, F) -> (B, n_out, F)."""
    return nn.Sequential(make_norm(norm, n_in), nn.Conv1d(n_in, n_out, 1))


# --- mask head ----------------------------------------------------------------------------


class OutputGate(nn.Module):
    """DPRNN/SepFormer output gate, (B*C, D, F) -> (B*C, N, F): tanh(conv) * sigmoid(conv),
    then a 1x1 conv to the N filters."""

    def __init__(self, channels: int, n_filters: int) -> None:
        super().__init__()
        self.tanh_conv, self.sigmoid_conv = nn.Conv1d(channels, channels, 1), nn.Conv1d(channels, channels, 1)
        self.out = nn.Conv1d(channels, n_filters, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.tanh_conv(x)) * torch.sigmoid(self.sigmoid_conv(x)))


class MaskHead(nn.Module):
    """Masker features (B, D, F) -> one mask per source (B, C, N, F).

    A 1x1 conv to C x ``hidden`` channels, then per source either straight to the masks
    (Conv-TasNet, ``hidden == n_filters``) or, with ``gated``, through :class:`OutputGate`
    (DPRNN, SepFormer). Last the mask nonlinearity; "softmax" normalises across the C
    sources (in fp32).
    """

    def __init__(self, in_channels: int, n_src: int, n_filters: int, act: MaskAct, gated: bool) -> None:
        super().__init__()
        if act not in get_args(MaskAct):
            raise ValueError(f"unknown mask activation {act!r}; choose one of {get_args(MaskAct)}")
        hidden = in_channels if gated else n_filters
        self.n_src, self.n_filters, self.act = n_src, n_filters, act
        self.proj = nn.Conv1d(in_channels, n_src * hidden, 1)
        self.gate = OutputGate(hidden, n_filters) if gated else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, Fr = x.shape
        y = self.gate(self.proj(x).reshape(B * self.n_src, -1, Fr))  # (B*C, N, F)
        y = y.reshape(B, self.n_src, self.n_filters, Fr)
        if self.act == "softmax":
            return torch.softmax(y.float(), dim=1).to(y.dtype)
        return torch.sigmoid(y) if self.act == "sigmoid" else F.relu(y)


# --- dual-path processing -----------------------------------------------------------------


def _chunk_padding(length: int, chunk: int, hop: int) -> tuple[int, int]:
    """(left, right) zero padding so the chunks tile ``length`` frames with the edges covered
    as often as the middle: ``chunk - hop`` on both sides, plus what completes the last chunk."""
    left = chunk - hop
    total = max(length + 2 * left, chunk)
    total += -(total - chunk) % hop
    return left, total - length - left


def segment(x: torch.Tensor, chunk: int, hop: int) -> torch.Tensor:
    """Cut frames (B, D, T) into overlapping chunks (B, D, K, S), K = ``chunk``.

    Chunk s holds frames ``s * hop - (chunk - hop)`` onwards (zeros outside 0..T-1), so
    with hop = K/2 every frame lies in exactly two chunks. :func:`overlap_add` inverts it.
    """
    if not 0 < hop <= chunk:
        raise ValueError(f"need 0 < hop <= chunk, got hop={hop}, chunk={chunk}")
    left, right = _chunk_padding(x.shape[-1], chunk, hop)
    return F.pad(x, (left, right)).unfold(-1, chunk, hop).transpose(-1, -2)  # (B, D, K, S)


def overlap_add(chunks: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    """Chunks (B, D, K, S) back to frames (B, D, T), T = ``length``: the overlapping chunks
    are summed and each frame divided by the number of chunks that hold it (an average),
    so ``overlap_add(segment(x, K, hop), hop, T) == x``. Averaging, unlike a plain sum,
    commutes with a following 1x1 conv (bias included) and keeps the scale of x for any hop.
    """
    B, D, K, S = chunks.shape
    left, right = _chunk_padding(length, K, hop)
    total = left + length + right
    assert (S - 1) * hop + K == total, (chunks.shape, hop, length)
    fold = {"output_size": (1, total), "kernel_size": (1, K), "stride": (1, hop)}
    y = F.fold(chunks.reshape(B, D * K, S), **fold)[:, :, 0]  # (B, D, total)
    count = F.fold(chunks.new_ones(1, K, S), **fold)[:, :, 0]  # (1, 1, total): chunks per frame
    return (y / count)[..., left : left + length]


class DualPathBlock(nn.Module):
    """One dual-path block on chunks (B, D, K, S) -> (B, D, K, S).

    ``intra`` runs along each chunk, (B*S, K, D) -> (B*S, K, D); ``inter`` along the chunk
    index at every position, (B*K, S, D) -> (B*K, S, D). Each is followed by gLN over
    (D, K, S) and a residual connection (DPRNN; SepFormer's intra/inter transformers).
    """

    def __init__(self, intra: nn.Module, inter: nn.Module, channels: int) -> None:
        super().__init__()
        self.intra, self.inter = intra, inter
        self.intra_norm, self.inter_norm = GlobalLayerNorm(channels), GlobalLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, D, K, S = x.shape
        h = self.intra(x.permute(0, 3, 2, 1).reshape(B * S, K, D))  # (B*S, K, D)
        x = x + self.intra_norm(h.reshape(B, S, K, D).permute(0, 3, 2, 1))
        h = self.inter(x.permute(0, 2, 3, 1).reshape(B * K, S, D))  # (B*K, S, D)
        return x + self.inter_norm(h.reshape(B, K, S, D).permute(0, 3, 1, 2))


class DualPathMasker(nn.Module):
    """Encoder frames (B, N, F) -> masks (B, C, N, F) through dual-path blocks.

    gLN + 1x1 bottleneck N -> D, :func:`segment` into chunks of ``chunk`` frames with hop
    ``chunk // 2``, the ``blocks``, PReLU, :func:`overlap_add`, gated :class:`MaskHead`.
    """

    def __init__(self, n_filters: int, channels: int, chunk: int, blocks: list[DualPathBlock], n_src: int, act: MaskAct) -> None:
        super().__init__()
        if chunk < 2:
            raise ValueError(f"dual-path chunk must be >= 2 (hop = chunk // 2), got {chunk}")
        self.chunk, self.hop = chunk, chunk // 2
        self.bottleneck = bottleneck("gLN", n_filters, channels)
        self.blocks = nn.ModuleList(blocks)
        self.prelu = nn.PReLU()
        self.head = MaskHead(channels, n_src, n_filters, act, gated=True)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = segment(self.bottleneck(frames), self.chunk, self.hop)  # (B, D, K, S)
        for block in self.blocks:
            x = block(x)
        # PReLU before the overlap-add, the head's 1x1 conv after it: the same as both before,
        # since an averaging overlap-add commutes with a 1x1 conv; cheaper on F than on K*S frames.
        return self.head(overlap_add(self.prelu(x), self.hop, frames.shape[-1]))  # (B, C, N, F)


def separate(encoder: Encoder, masker: nn.Module, decoder: Decoder, mix: torch.Tensor) -> torch.Tensor:
    """The encoder-masker-decoder pass: mix (B, T) -> estimates (B, C, T)."""
    if mix.dim() != 2 or mix.shape[-1] < 1:
        raise ValueError(f"mix must be (B, T) with T >= 1, got shape {tuple(mix.shape)}")
    frames = encoder(mix)  # (B, N, F)
    masks = masker(frames)  # (B, C, N, F)
    return decoder(masks * frames[:, None], mix.shape[-1])
