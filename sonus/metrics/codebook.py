"""Codebook statistics of a tokenizer over a whole folder (not per batch): how much of each
codebook is used, and how evenly (entropy of code frequencies / log2 K)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CodebookUsage:
    """Per quantizer: fraction of the K codes seen at least once, and normalised entropy in [0, 1]."""

    used: list[float]
    entropy: list[float]

    @property
    def mean_used(self) -> float:
        return sum(self.used) / len(self.used)

    @property
    def mean_entropy(self) -> float:
        return sum(self.entropy) / len(self.entropy)


class CodebookCounter:
    """Accumulate code counts over many utterances: ``update(codes (Q, T) or (B, Q, T))``, then ``usage()``."""

    def __init__(self, n_q: int, codebook_size: int) -> None:
        self.counts = torch.zeros(n_q, codebook_size, dtype=torch.long)

    def update(self, codes: torch.Tensor) -> None:
        codes = codes.reshape(-1, *codes.shape[-2:]) if codes.dim() == 3 else codes[None]  # (B, Q', T)
        q = codes.shape[1]
        if q > self.counts.shape[0] or int(codes.max()) >= self.counts.shape[1] or int(codes.min()) < 0:
            raise ValueError(f"codes of shape {tuple(codes.shape)} in [{int(codes.min())}, {int(codes.max())}] do not fit {tuple(self.counts.shape)}")
        for i in range(q):
            self.counts[i] += torch.bincount(codes[:, i].reshape(-1).cpu(), minlength=self.counts.shape[1])

    def usage(self) -> CodebookUsage:
        k = self.counts.shape[1]
        used, entropy = [], []
        for c in self.counts:
            n = int(c.sum())
            if n == 0:
                used.append(0.0)
                entropy.append(0.0)
                continue
            p = c[c > 0].double() / n
            used.append(float((c > 0).sum()) / k)
            entropy.append(float(-(p * p.log2()).sum()) / math.log2(k))
        return CodebookUsage(used, entropy)
