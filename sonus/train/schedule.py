"""Learning-rate schedules: linear warmup then decay, as a multiplier of the base rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

Decay = Literal["noam", "cosine", "exponential", "constant", "budget"]


def warmup_decay(
    warmup_steps: int,
    decay: Decay = "noam",
    total_steps: int | None = None,
    min_ratio: float = 0.05,
    gamma: float = 0.9999,
    budget_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    elapsed: Callable[[], float] | None = None,
) -> Callable[[int], float]:
    """step -> factor in (0, 1]: linear warmup to 1 over ``warmup_steps``, then

    - noam: (warmup / step) ** 0.5
    - cosine: half cosine to ``min_ratio`` at ``total_steps``
    - exponential: gamma ** (step - warmup)
    - constant: 1
    - budget: linear in wall-clock time, from 1 at the first call to ``min_ratio`` after
      ``budget_seconds`` (``training.time_budget_minutes``), the factor staying below the
      warmup ramp. A run with a time budget does not know its step count in advance;
      decaying to the end of the budget, rather than along a fixed step curve, is the
      schedule Li et al. (2020, "Budgeted training") found best at a fixed budget.
      ``elapsed`` gives the seconds of the budget spent (e.g.
      :meth:`~sonus.train.callbacks.TimeBudget.elapsed`, which a resumed run restores);
      without it the clock starts at the first call, in this process.
    """
    if decay not in ("noam", "cosine", "exponential", "constant", "budget"):
        raise ValueError(f"lr decay must be noam, cosine, exponential, constant or budget, got {decay!r}")
    if decay == "cosine" and not total_steps:
        raise ValueError("cosine decay needs total_steps")
    if decay == "budget" and not budget_seconds:
        raise ValueError("budget decay needs a time budget (training.time_budget_minutes)")
    w = max(1, warmup_steps)
    start: list[float] = []  # the clock at the first call (budget decay)

    def factor(step: int) -> float:
        s = step + 1
        if decay == "budget":
            if elapsed is not None:
                spent = elapsed()
            else:
                now = clock()
                if not start:
                    start.append(now)
                spent = now - start[0]
            p = min(1.0, spent / budget_seconds)
            return min(s / w, 1.0 - (1.0 - min_ratio) * p)
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


def budget_seconds(training) -> float | None:
    """``training.time_budget_minutes`` in seconds (None without one), for ``lr_decay=budget``,
    which cannot run without it."""
    seconds = float(training.time_budget_minutes) * 60.0 if training.get("time_budget_minutes") else None
    if training.get("lr_decay") == "budget" and seconds is None:
        raise ValueError("training.lr_decay=budget decays over the time budget: set training.time_budget_minutes")
    return seconds


def optimizer_steps(training, batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run (``training.num_epochs``, ``accumulate_grad_batches``):
    the length of a cosine decay."""
    return batches_per_epoch * int(training.num_epochs) // int(training.get("accumulate_grad_batches", 1))
