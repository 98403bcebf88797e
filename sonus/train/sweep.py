"""Hyper-parameter sweeps with Optuna: TPE sampler, Hyperband pruning, SQLite storage.

``sonus sweep experiment=sep_dprnn sweep.n_trials=20`` runs trials one after another, each
a normal training run (its own output folder) with the config keys of ``sweep.params``
drawn by the sampler. Every validation reports the monitored metric to Optuna, and the
Hyperband pruner stops trials that trail the others at the same step. The study lives in
an SQLite file: run the same command again after a crash or a reboot and it continues
(trials that were running when the process died are marked failed by the heartbeat and
retried once).

``sweep.params`` maps a config key to a search space::

    training.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    training.weight_decay: {type: float, low: 1.0e-7, high: 1.0e-4, log: true}
    model.params.hidden_size: {type: int, low: 64, high: 256, step: 64}
    model.params.rnn_type: {type: categorical, choices: [LSTM, GRU]}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    study_name: str
    storage: str  # an SQLAlchemy URL, e.g. sqlite:///exp/sweeps/sep_dprnn.db
    metric: str  # a logged validation key, e.g. val/si_sdr
    direction: str  # maximize | minimize
    n_trials: int
    params: Mapping[str, Mapping[str, Any]]
    seed: int = 0
    min_resource: int = 1  # validations a trial gets before Hyperband may prune it
    max_resource: int | str = "auto"
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"sweep.direction must be maximize or minimize, got {self.direction!r}")
        if self.n_trials < 1:
            raise ValueError(f"sweep.n_trials must be >= 1, got {self.n_trials}")
        if not self.params:
            raise ValueError("sweep.params is empty: give at least one config key and its search space")
        for key, space in self.params.items():
            kind = space.get("type")
            if kind in ("float", "int"):
                if "low" not in space or "high" not in space:
                    raise ValueError(f"sweep.params.{key}: type {kind} needs low and high, got {dict(space)}")
            elif kind == "categorical":
                if not space.get("choices"):
                    raise ValueError(f"sweep.params.{key}: type categorical needs choices, got {dict(space)}")
            else:
                raise ValueError(f"sweep.params.{key}: type must be float, int or categorical, got {kind!r}")


def suggest(trial, params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Draw a value for each config key of ``params`` from ``trial``."""
    out: dict[str, Any] = {}
    for key, s in params.items():
        if s["type"] == "float":
            out[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=bool(s.get("log", False)))
        elif s["type"] == "int":
            out[key] = trial.suggest_int(key, int(s["low"]), int(s["high"]), step=int(s.get("step", 1)), log=bool(s.get("log", False)))
        else:
            out[key] = trial.suggest_categorical(key, list(s["choices"]))
    return out


class OptunaPruning(pl.Callback):
    """Report ``metric`` to the trial after every validation; stop the trial when the pruner says so."""

    def __init__(self, trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.best: float | None = None
        self.reports = 0
        self.pruned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        if math.isnan(value):
            return
        maximize = self.trial.study.direction.name == "MAXIMIZE"
        if self.best is None or (value > self.best if maximize else value < self.best):
            self.best = value
        self.trial.report(value, self.reports)
        self.reports += 1
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def run_sweep(cfg: SweepConfig, train: Callable[[dict[str, Any], str, list[pl.Callback]], Any], output_dir: str | Path):
    """Run ``cfg.n_trials`` more trials of the study (creating or continuing it).

    Args:
        train: ``train(overrides, trial_output_dir, callbacks)`` runs one training with the
            drawn config values and the pruning callback.
        output_dir: trial folders go to ``output_dir/trial_NNNN``.

    Returns:
        The Optuna study.
    """
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    if cfg.storage.startswith("sqlite:///"):
        Path(cfg.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = RDBStorage(cfg.storage, heartbeat_interval=60, grace_period=180, failed_trial_callback=RetryFailedTrialCallback(max_retry=1))
    study = optuna.create_study(
        study_name=cfg.study_name, storage=storage, direction=cfg.direction, load_if_exists=True,
        pruner=optuna.pruners.HyperbandPruner(cfg.min_resource, cfg.max_resource, cfg.reduction_factor),
    )  # fmt: skip
    # A fresh seed for each run of the command: a restarted sweep must not replay the draws
    # of the trials it already has (TPE's random start-up trials come from this seed).
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials))
    out = Path(output_dir)

    def objective(trial) -> float:
        values = suggest(trial, cfg.params)
        cb = OptunaPruning(trial, cfg.metric)
        log.info("trial %d: %s", trial.number, values)
        train(values, str(out / f"trial_{trial.number:04d}"), [cb])
        if cb.pruned:
            raise optuna.TrialPruned(f"pruned after {cb.reports} validations (best {cfg.metric} {cb.best})")
        if cb.best is None:
            raise RuntimeError(f"trial {trial.number}: no {cfg.metric} was logged; is sweep.metric a validation key?")
        return cb.best

    done = sum(t.state.is_finished() for t in study.trials)
    log.info("study %s (%s): %d trials finished, running %d more", cfg.study_name, cfg.storage, done, cfg.n_trials)
    study.optimize(objective, n_trials=cfg.n_trials, gc_after_trial=True)
    return study
