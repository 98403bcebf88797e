"""`sonus sweep`: Optuna trials are real training runs; the SQLite study survives a restart."""

from __future__ import annotations

import optuna
import pytest

from sonus.cli import main
from sonus.train.sweep import SweepConfig
from tests.data.polsess_fixture import make_mini_polsess
from tests.separation.test_train import TINY


def test_sweep_runs_trials_and_continues_the_study(tmp_path):
    root = make_mini_polsess(tmp_path / "polsess", n_per_split=4, seconds=0.5)
    out = tmp_path / "sweep"
    args = [
        "sweep", "experiment=sep_convtasnet", "data=polsess", f"data.root={root}", "data.num_workers=0", *TINY,
        "data.segment_seconds=0.5", f"training.output_dir={out}", "training.num_epochs=2", "training.batch_size=2",
        "training.progress_bar=tqdm", "training.model_summary=false", "wandb.enabled=false", "tensorboard.enabled=false",
        "sweep.n_trials=2", "sweep.study_name=t", "+sweep.params={training.lr: {type: float, low: 1e-4, high: 1e-2, log: true}}",
    ]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 0  # a second run continues the same study
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'sweep.db'}")
    trials = [t for t in study.trials if t.state.is_finished()]
    assert len(trials) == 4
    assert len({t.params["training.lr"] for t in trials}) == 4  # each trial drew its own value
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(t.value is not None for t in complete)
    assert (out / "trial_0000" / "last.ckpt").is_file() and (out / "trial_0003" / "config.yaml").is_file()


def test_sweep_config_errors_name_the_key():
    with pytest.raises(ValueError, match="sweep.params.training.lr"):
        SweepConfig("s", "sqlite:///x.db", "val/si_sdr", "maximize", 1, {"training.lr": {"type": "float", "low": 1e-4}})
    with pytest.raises(ValueError, match="direction"):
        SweepConfig("s", "sqlite:///x.db", "val/si_sdr", "up", 1, {"training.lr": {"type": "categorical", "choices": [1]}})
