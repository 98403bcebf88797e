"""Learning-rate schedules: linear warmup then decay, as a multiplier of the base rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

Decay = Literal["noam", "cosine", "exponential", "constant"]


def warmup_decay(warmup_steps: int, decay: Decay = "noam", total_steps: int | None = None, min_ratio: float = 0.05, gamma: float = 0.9999) -> Callable[[int], float]:
    """step -> factor in (0, 1]: linear warmup to 1 over ``warmup_steps``, then

    - noam: (warmup / step) ** 0.5
    - cosine: half cosine to ``min_ratio`` at ``total_steps``
    - exponential: gamma ** (step - warmup)
    - constant: 1
    """
    if decay not in ("noam", "cosine", "exponential", "constant"):
        raise ValueError(f"lr decay must be noam, cosine, exponential or constant, got {decay!r}")
    if decay == "cosine" and not total_steps:
        raise ValueError("cosine decay needs total_steps")
    w = max(1, warmup_steps)

    def factor(step: int) -> float:
        s = step + 1
        if s < w:
            return s / w
        if decay == "noam":
            return max(min_ratio, math.sqrt(w / s))
        if decay == "cosine":
            p = min(1.0, (s - w) / max(1, total_steps - w))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        if decay == "exponential":
            return max(min_ratio, gamma ** (s - w))
        return 1.0

    return factor
