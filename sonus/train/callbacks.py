"""Callbacks shared by every task."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class TimeBudget(pl.Callback):
    """Stop after a validation when the next training + validation round would overrun ``minutes``.

    Unlike ``Trainer(max_time=...)``, which stops mid-round, the run ends right after a
    validation, so the best checkpoint reflects all the training that was done.
    """

    def __init__(self, minutes: float) -> None:
        self.budget = minutes * 60.0
        self.start = self.last = 0.0
        self.longest = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = self.last = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)  # one round: training since the last validation + this one
        self.last = now
        if now - self.start + self.longest > self.budget:
            trainer.should_stop = True


class SaveLast(pl.Callback):
    """Write ``last.ckpt`` after every training epoch (validation included), atomically.

    Lightning's ``save_last`` skips the file when the best checkpoint was written at the
    same step, so after a crash ``last.ckpt`` could be an epoch behind.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)
