"""Callbacks shared by every task."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class TimeBudget(pl.Callback):
    """Stop after a validation when the next training + validation round would overrun ``minutes``.

    Unlike ``Trainer(max_time=...)``, which stops mid-round, the run ends right after a
    validation, so the best checkpoint reflects all the training that was done. The next
    round is expected to last as long as the last one: the first round also holds the
    start-up (workers, the sanity check) and can take twice as long as the others, so
    planning with the longest round would leave minutes of the budget unused.
    """

    def __init__(self, minutes: float) -> None:
        self.budget = minutes * 60.0
        self.start = self.last = 0.0
        self.round = 0.0  # seconds of the last round: training since the previous validation + this one

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = self.last = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        now = time.monotonic()
        self.round, self.last = now - self.last, now
        if now - self.start + self.round > self.budget:
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
