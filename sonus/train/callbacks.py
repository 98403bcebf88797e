"""Callbacks shared by every task."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint, EMAWeightAveraging

log = logging.getLogger(__name__)


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

    The time spent is saved in checkpoints (like Lightning's ``Timer``): a resumed run
    spends what is left of the budget, and a finished run started again stops at once.
    :meth:`elapsed` is the clock of ``training.lr_decay=budget``, so the learning rate
    resumes where it was too.
    """

    def __init__(self, minutes: float) -> None:
        self.budget = minutes * 60.0
        self.start = self.last = 0.0
        self.val_seconds = 0.0  # the last validation's duration
        self._val_start: float | None = None
        self._spent = 0.0  # seconds spent before this process (restored from a checkpoint)
        self._started = False

    def elapsed(self) -> float:
        """Seconds of the budget spent, by earlier runs of this training included."""
        return time.monotonic() - self.start if self._started else self._spent

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed(), "val_seconds": self.val_seconds}

    def load_state_dict(self, state: dict) -> None:
        self._spent = float(state.get("elapsed", 0.0))
        self.val_seconds = float(state.get("val_seconds", 0.0))

    def on_fit_start(self, trainer, pl_module) -> None:
        self.last = time.monotonic()
        self.start, self._started = self.last - self._spent, True

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


def budget_clock(module: pl.LightningModule) -> Callable[[], float] | None:
    """The seconds-spent clock of the trainer's :class:`TimeBudget` (which a resumed run
    restores), for ``lr_decay=budget``; None without a trainer or a budget."""
    trainer = module._trainer
    budget = None if trainer is None else next((cb for cb in trainer.callbacks if isinstance(cb, TimeBudget)), None)
    return None if budget is None else budget.elapsed


def set_loader_epoch(loaders, trainer) -> None:
    """Tell each loader's batch sampler and dataset the epoch the trainer's fit loop is at (the
    number Lightning gives a DataLoader's ``sampler``), where they have a ``set_epoch``.

    The dataset's epoch reaches the workers because training loaders that need it are not
    persistent: workers copy the dataset when an epoch's iteration starts, after this call.
    """
    epoch = trainer.fit_loop.epoch_progress.current.processed
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        for part in (getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)):
            if callable(getattr(part, "set_epoch", None)):
                part.set_epoch(epoch)


class SamplerEpoch(pl.Callback):
    """Tell the training loader's batch sampler and dataset which epoch starts.

    Lightning calls ``set_epoch`` on ``loader.sampler`` and on ``loader.batch_sampler.sampler``
    but not on a batch sampler that draws the indices itself, as
    :class:`~sonus.data.sampler.DurationBucketSampler` does: without this callback every
    epoch would replay the first epoch's batches in the same order. Datasets that draw per
    epoch (dynamic mixing, MM-IPC variants, random codec segments) learn it here too. A run's
    first epoch draws its batches before any epoch hook (when the trainer sets up its data),
    so for a resumed run :class:`~sonus.train.trainer.RunData` sets that epoch.
    """

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        set_loader_epoch(trainer.train_dataloader, trainer)


class EMA(EMAWeightAveraging):
    """Validate and checkpoint an exponential moving average of the weights (``training.ema_decay``),
    updated after every optimizer step from ``training.ema_start_step`` on.

    Before its first update the average is still a copy of the initial weights, and Lightning's
    callback would validate and save those (random) weights, so early validations and a
    ``best.ckpt`` or ``last.ckpt`` written then would hold an untrained model. Until the average
    starts, this one validates and saves the weights being trained; a checkpoint written then
    resumes as one without averaging (the average starts from the current weights at its first
    update, as in an uninterrupted run).
    """

    def _started(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._started():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._started():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._started():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._started():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if "current_model_state" in checkpoint or self._average_model is None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class SaveLast(Checkpoint):
    """Keep ``last.ckpt`` current, written atomically, for resuming a run that stopped or crashed.

    It is written after every validation, every ``every_minutes`` of training (at an optimizer
    step, so no accumulated gradient is lost), when ``max_steps`` ends the run, and after every
    training epoch that ran all its batches. A checkpoint written mid-epoch resumes mid-epoch:
    Lightning restores the loop's position and :class:`~sonus.train.trainer.RunData` starts the
    training loader after the batches that epoch already trained on (:func:`resume_loader_position`),
    so a crash at minute 13 of a one-epoch, 14-minute run loses at most ``every_minutes``.
    An epoch cut short (time budget, ``max_steps``, early stopping) is not written again at its
    end: Lightning would count it finished there, and a resumed run would skip its other batches.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so that Lightning runs it after the other
    callbacks (the time budget, early stopping) and the file holds their latest state. Lightning's
    own ``save_last`` skips the file when the best checkpoint was written at the same step, so after
    a crash its ``last.ckpt`` could be behind.
    """

    def __init__(self, path: str, every_minutes: float | None = None) -> None:
        if every_minutes is not None and every_minutes < 0:
            raise ValueError(f"training.last_every_minutes must be >= 0 or null, got {every_minutes}")
        self.path = path
        self.every = None if every_minutes is None else every_minutes * 60.0
        self._last = time.monotonic()
        self._fresh = False  # written since the last training batch started

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state: last.ckpt is for resuming
        self._last, self._fresh = time.monotonic(), True

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = time.monotonic()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._fresh = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        due = self.every is not None and time.monotonic() - self._last >= self.every
        if trainer.world_size > 1:  # every rank must enter save_checkpoint, or its barrier hangs
            due = trainer.strategy.broadcast(due)
        if due or 0 < trainer.max_steps <= trainer.global_step:
            self._save(trainer)

    @staticmethod
    def _epoch_done(trainer: pl.Trainer) -> bool:
        return trainer.fit_loop.epoch_loop.batch_progress.current.completed >= trainer.num_training_batches

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if not self._epoch_done(trainer):  # (at an epoch's last batch, the epoch's end writes it)
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._epoch_done(trainer) or not self._fresh:
            self._save(trainer)


def resume_loader_position(loaders, trainer: pl.Trainer) -> None:
    """After Lightning restored a checkpoint written mid-epoch, make the training loaders start
    after the batches that epoch already trained on, as an uninterrupted run would go on.

    Lightning counts those batches as fetched but cannot skip them in a loader without a
    ``state_dict``: the epoch would start over, and end early, on batches already trained on.
    A batch sampler with ``resume(batches)`` (:class:`~sonus.data.sampler.DurationBucketSampler`)
    or a sampler with ``resume(items)`` (:class:`~sonus.data.sampler.EpochSampler`) skips them.
    """
    epoch = trainer.fit_loop.epoch_progress.current
    if epoch.processed >= epoch.started:  # a new run, or the checkpoint ended an epoch
        return
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        batch_sampler, sampler = getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)
        if callable(getattr(batch_sampler, "resume", None)):
            batch_sampler.resume(done)
        elif callable(getattr(sampler, "resume", None)) and getattr(loader, "batch_size", None):
            sampler.resume(done * loader.batch_size)
        else:
            log.warning("the training loader cannot skip the %d batches this epoch already trained on: the epoch starts over", done)
