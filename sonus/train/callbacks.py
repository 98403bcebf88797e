"""Callbacks shared by every task."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class TimeBudget(pl.Callback):
    """Stop when ``minutes`` are spent, ending with a validation inside the budget.

    After each training step the run stops if one more step and a validation would no
    longer fit; Lightning then validates at once (``trainer.should_stop`` mid-epoch triggers
    a validation), so the best checkpoint reflects all the training that was done and no
    part of the budget is left unused waiting for the next scheduled validation. Unlike
    ``Trainer(max_time=...)``, which stops without validating, nothing trained is lost.
    A validation is assumed to last as long as the last one. In an epoch that would not
    validate (``check_val_every_n_epoch`` > 1) the stop makes it validate too (validation
    every epoch from then on), so every run ends with one.
    """

    def __init__(self, minutes: float) -> None:
        self.budget = minutes * 60.0
        self.start = self.last = 0.0
        self.val_seconds = 0.0  # the last validation's duration
        self._val_start: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = self.last = time.monotonic()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = None if trainer.sanity_checking else time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._val_start is None:
            return
        self.last = time.monotonic()
        self.val_seconds = self.last - self._val_start
        if self.last - self.start >= self.budget:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        step, self.last = now - self.last, now
        if now - self.start + step + self.val_seconds > self.budget:
            trainer.should_stop = True
            every = getattr(trainer, "check_val_every_n_epoch", 1)
            if every is not None and (trainer.current_epoch + 1) % every != 0:
                trainer.check_val_every_n_epoch = 1  # Lightning validates a stopped epoch only if it is due


class SaveLast(pl.Callback):
    """Write ``last.ckpt`` after every training epoch (validation included), atomically.

    Lightning's ``save_last`` skips the file when the best checkpoint was written at the
    same step, so after a crash ``last.ckpt`` could be an epoch behind.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state: last.ckpt is for resuming
