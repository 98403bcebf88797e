"""Callbacks shared by every task."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class TimeBudget(pl.Callback):
    """Stop at an epoch boundary when the next epoch would overrun ``minutes``.

    Unlike ``Trainer(max_time=...)``, which stops mid-epoch, the run ends after a
    validation, so the best checkpoint reflects all the training that was done.
    """

    def __init__(self, minutes: float) -> None:
        self.budget = minutes * 60.0
        self.start = 0.0
        self.epoch_start = 0.0
        self.longest = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = time.monotonic()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        now = time.monotonic()
        self.longest = max(self.longest, now - self.epoch_start)
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
