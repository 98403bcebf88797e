"""Residual vector quantization (RVQ) for the speech tokenizer.

Shapes: B batch, D feature channels, T frames, Q quantizers, K codes a codebook, d the
lookup dimension (d = D unless factorized).

A quantizer maps each frame vector to its nearest code (straight-through gradient to the
encoder); RVQ (Zeghidour et al. 2021, SoundStream) quantizes what the previous quantizers
left over, so the first q codes of a frame are a coarser version of all Q. What makes the
codebooks used rather than collapsed:

- EMA updates (van den Oord et al. 2017, appendix): each code moves to the running mean of
  the vectors assigned to it; no codebook gradient. Or learned codebooks with a codebook
  loss (``ema=False``), as DAC does.
- k-means initialisation (SoundStream): the first training batch's vectors, clustered.
- Dead-code restart (Jukebox; EnCodec's ``expire_codes``): a code whose EMA usage falls
  below ``dead_threshold`` vectors a step is replaced by a vector of the current batch.
- Factorized, L2-normalised lookup (Kumar et al. 2023, DAC): project D -> d (e.g. 8) and
  compare unit vectors (cosine similarity), which spreads usage over the codebook.
- Quantizer dropout (SoundStream, DAC): in training, each utterance uses only its first
  n_q' ~ U{1..Q} quantizers with probability ``quantizer_dropout``, so one model serves
  every bitrate from frame_rate x log2 K to frame_rate x Q x log2 K.

Under DDP, k-means initialisation is broadcast from rank 0 and EMA statistics are summed
over ranks before the update, so every replica keeps the same codebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class RVQConfig:
    dim: int = 512  # D, the encoder's output channels
    n_q: int = 8  # Q
    codebook_size: int = 1024  # K
    codebook_dim: int | None = None  # d: factorized lookup when < dim (DAC: 8); None: d = D
    l2_normalize: bool = False  # cosine lookup on unit vectors (DAC)
    ema: bool = True  # EMA codebooks (no codebook gradient); False: learned, with a codebook loss
    decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_threshold: float = 2.0  # EMA vectors a step below which a code is restarted; 0: never
    quantizer_dropout: float = 0.0  # probability an utterance trains with fewer quantizers (DAC: 0.5)

    def __post_init__(self) -> None:
        bad = {k: getattr(self, k) for k in ("dim", "n_q", "codebook_size", "kmeans_iters") if int(getattr(self, k)) < 1}
        if self.codebook_dim is not None and self.codebook_dim < 1:
            bad["codebook_dim"] = self.codebook_dim
        if not 0.0 < self.decay < 1.0:
            bad["decay"] = self.decay
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            bad["quantizer_dropout"] = self.quantizer_dropout
        if self.dead_threshold < 0:
            bad["dead_threshold"] = self.dead_threshold
        if bad:
            raise ValueError(f"RVQConfig: invalid values {bad}")

    @property
    def lookup_dim(self) -> int:
        return self.codebook_dim or self.dim

    @property
    def bits_per_frame(self) -> float:
        return self.n_q * math.log2(self.codebook_size)


def bitrate(frame_rate: float, n_q: int, codebook_size: int) -> float:
    """Bits per second: frame_rate x n_q x log2(codebook_size)."""
    return frame_rate * n_q * math.log2(codebook_size)


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of (M, d) vectors -> (centroids (k, d), sizes (k,)). Seeds are drawn from
    the vectors (with replacement when M < k); an empty cluster keeps its previous centroid."""
    m = x.shape[0]
    idx = torch.randint(m, (k,), generator=generator, device="cpu").to(x.device) if m < k else torch.randperm(m, generator=generator, device="cpu")[:k].to(x.device)
    c = x[idx].clone()
    sizes = torch.zeros(k, device=x.device)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(-1)  # (M,)
        sizes = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        c = torch.where(sizes[:, None] > 0, sums / sizes.clamp_min(1)[:, None], c)
    return c, sizes


def _all_reduce(t: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


@dataclass
class QuantizedResult:
    """quantized: (B, D, T) (straight-through); codes: (B, T) from one quantizer, (B, Q', T) from
    the Q' a residual quantizer used; commitment, codebook: scalar losses (summed over quantizers)."""

    quantized: Tensor
    codes: Tensor
    commitment: Tensor
    codebook: Tensor


class VectorQuantizer(nn.Module):
    """One codebook: (B, D, T) -> nearest code per frame."""

    def __init__(self, cfg: RVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k = cfg.lookup_dim, cfg.codebook_size
        factorized = d != cfg.dim
        self.in_proj = nn.Conv1d(cfg.dim, d, 1) if factorized else nn.Identity()
        self.out_proj = nn.Conv1d(d, cfg.dim, 1) if factorized else nn.Identity()
        init = torch.randn(k, d) / math.sqrt(d)
        if cfg.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initialized", torch.tensor(not cfg.kmeans_init))

    def _lookup(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (M, d) -> (codes (M,), the codebook used for distances (K, d))."""
        cb = self.codebook
        if self.cfg.l2_normalize:
            z, cb = F.normalize(z, dim=-1), F.normalize(cb, dim=-1)
        # ||z - c||^2 = |z|^2 - 2 z.c + |c|^2; |z|^2 does not change the argmin
        dist_ = cb.pow(2).sum(-1)[None] - 2 * z @ cb.t()  # (M, K)
        return dist_.argmin(-1), cb

    def project(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B*T, d) lookup vectors (fp32)."""
        z = self.in_proj(x).float()
        return z.transpose(1, 2).reshape(-1, z.shape[1])

    def decode(self, codes: Tensor) -> Tensor:
        """(B, T) codes -> (B, D, T)."""
        cb = F.normalize(self.codebook, dim=-1) if self.cfg.l2_normalize else self.codebook
        q = F.embedding(codes, cb).transpose(1, 2)  # (B, d, T)
        return self.out_proj(q)

    def encode(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, T) codes."""
        b, _, t = x.shape
        return self._lookup(self.project(x))[0].view(b, t)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> QuantizedResult:
        """x (B, D, T); mask (B, T) bool: frames that take part (padding and dropped utterances do not)."""
        b, _, t = x.shape
        with torch.autocast(x.device.type, enabled=False):
            z = self.project(x)  # (M, d)
            m = torch.ones(z.shape[0], dtype=torch.bool, device=z.device) if mask is None else mask.reshape(-1)
            if self.training and not bool(self.initialized):
                self._kmeans_init(z[m].detach())
            codes, cb = self._lookup(z)
            q = cb[codes]  # (M, d)
            zl = F.normalize(z, dim=-1) if self.cfg.l2_normalize else z
            w = m.float()
            denom = (w.sum() * z.shape[1]).clamp_min(1.0)
            commitment = (((zl - q.detach()) ** 2).sum(-1) * w).sum() / denom
            codebook = (((zl.detach() - q) ** 2).sum(-1) * w).sum() / denom if not self.cfg.ema else z.new_zeros(())
            if self.training and self.cfg.ema:
                self._ema_update(zl.detach(), codes, m)
            q = zl + (q - zl).detach()  # straight-through: the encoder gets the gradient of q
            out = self.out_proj(q.view(b, t, -1).transpose(1, 2))
        return QuantizedResult(out, codes.view(b, t), commitment, codebook)

    @torch.no_grad()
    def _kmeans_init(self, z: Tensor) -> None:
        if z.shape[0] == 0:
            return
        if self.cfg.l2_normalize:
            z = F.normalize(z, dim=-1)
        c, sizes = kmeans(z, self.cfg.codebook_size, self.cfg.kmeans_iters)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(c, 0)
            dist.broadcast(sizes, 0)
        self.codebook.data.copy_(c)
        if self.cfg.ema:
            self.ema_count.copy_(sizes.clamp_min(1.0))
            self.ema_sum.copy_(c * self.ema_count[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: Tensor, codes: Tensor, mask: Tensor) -> None:
        k, decay = self.cfg.codebook_size, self.cfg.decay
        onehot_counts = torch.bincount(codes[mask], minlength=k).float()  # (K,)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes[mask], z[mask])
        _all_reduce(onehot_counts)
        _all_reduce(sums)
        self.ema_count.mul_(decay).add_(onehot_counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / count[:, None])
        if self.cfg.dead_threshold > 0:
            self._restart_dead(z[mask])

    @torch.no_grad()
    def _restart_dead(self, z: Tensor) -> None:
        """Codes used by fewer than ``dead_threshold`` vectors a step (EMA) take batch vectors."""
        dead = self.ema_count < self.cfg.dead_threshold
        n_dead = int(dead.sum())
        if n_dead == 0 or z.shape[0] == 0:
            return
        pick = torch.randint(z.shape[0], (n_dead,), device="cpu").to(z.device)
        new = z[pick]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new, 0)
        self.codebook[dead] = new
        self.ema_sum[dead] = new * self.cfg.dead_threshold
        self.ema_count[dead] = self.cfg.dead_threshold


class ResidualVectorQuantizer(nn.Module):
    """Q quantizers, each on what the previous ones left: (B, D, T) -> QuantizedResult."""

    def __init__(self, cfg: RVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(VectorQuantizer(cfg) for _ in range(cfg.n_q))

    def forward(self, x: Tensor, n_q: int | None = None, lengths: Tensor | None = None) -> QuantizedResult:
        """x (B, D, T); ``n_q`` quantizers (default all); ``lengths`` (B,) valid frames.

        In training with ``quantizer_dropout`` > 0, each utterance is drawn a number of
        quantizers; frames beyond it get no update and no loss from the later quantizers.
        """
        b, _, t = x.shape
        n_q = self.cfg.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.cfg.n_q:
            raise ValueError(f"n_q must be in 1..{self.cfg.n_q}, got {n_q}")
        valid = torch.ones(b, t, dtype=torch.bool, device=x.device)
        if lengths is not None:
            valid = torch.arange(t, device=x.device)[None] < lengths[:, None]
        keep = torch.full((b,), n_q, device=x.device)
        if self.training and self.cfg.quantizer_dropout > 0:
            drop = torch.rand(b, device=x.device) < self.cfg.quantizer_dropout
            keep = torch.where(drop, torch.randint(1, n_q + 1, (b,), device=x.device), keep)
        residual, total = x, torch.zeros_like(x)
        codes, commit, book = [], x.new_zeros((), dtype=torch.float32), x.new_zeros((), dtype=torch.float32)
        for i, layer in enumerate(self.layers[:n_q]):
            active = keep > i  # (B,)
            out = layer(residual, valid & active[:, None])
            q = out.quantized * active[:, None, None].to(out.quantized.dtype)
            total = total + q
            residual = residual - q  # q is straight-through, so d total / d x = I overall (EnCodec, DAC)
            codes.append(out.codes)
            commit = commit + out.commitment
            book = book + out.codebook
        return QuantizedResult(total, torch.stack(codes, 1), commit, book)

    def encode(self, x: Tensor, n_q: int | None = None) -> Tensor:
        """(B, D, T) -> (B, n_q, T) codes."""
        n_q = self.cfg.n_q if n_q is None else n_q
        residual, codes = x, []
        for layer in self.layers[:n_q]:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return torch.stack(codes, 1)

    def decode(self, codes: Tensor) -> Tensor:
        """(B, Q', T) codes (any Q' <= Q: the first Q' quantizers) -> (B, D, T)."""
        if codes.shape[1] > self.cfg.n_q:
            raise ValueError(f"{codes.shape[1]} code streams but the quantizer has {self.cfg.n_q}")
        return sum(layer.decode(codes[:, i]) for i, layer in enumerate(self.layers[: codes.shape[1]]))
