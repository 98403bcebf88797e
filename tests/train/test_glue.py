"""The shared training glue: schedules, plots, checkpoint I/O, the time budget."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from sonus.audio.augment import NoiseConfig, NoiseMixer, speed_perturb
from sonus.train.callbacks import SamplerEpoch, TimeBudget
from sonus.train.checkpoint import AtomicCheckpointIO
from sonus.train.plots import plot_attention, plot_curves
from sonus.train.schedule import budget_seconds, warmup_decay


def test_warmup_then_decay():
    f = warmup_decay(100, "noam")
    assert f(0) == pytest.approx(0.01) and f(99) == pytest.approx(1.0)
    assert f(399) == pytest.approx(0.5)  # sqrt(100 / 400)
    c = warmup_decay(10, "cosine", total_steps=110, min_ratio=0.1)
    assert c(9) == pytest.approx(1.0) and c(109) == pytest.approx(0.1, abs=1e-6)
    assert warmup_decay(10, "constant")(1000) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        warmup_decay(10, "cosine")
    with pytest.raises(ValueError, match="lr decay"):
        warmup_decay(10, "linear")
    with pytest.raises(ValueError, match="time budget"):
        warmup_decay(10, "budget")


def test_budget_seconds_from_the_training_config():
    from omegaconf import OmegaConf

    assert budget_seconds(OmegaConf.create({"time_budget_minutes": 14, "lr_decay": "budget"})) == 840.0
    assert budget_seconds(OmegaConf.create({"time_budget_minutes": None, "lr_decay": "plateau"})) is None
    with pytest.raises(ValueError, match="training.time_budget_minutes"):
        budget_seconds(OmegaConf.create({"time_budget_minutes": None, "lr_decay": "budget"}))


def test_budget_decay_follows_the_clock():
    now = [100.0]
    f = warmup_decay(10, "budget", budget_seconds=60.0, min_ratio=0.1, clock=lambda: now[0])
    assert f(0) == pytest.approx(0.1)  # warmup ramp; the clock starts here
    now[0] = 130.0  # half the budget gone
    assert f(4) == pytest.approx(0.5)  # still warming up: the ramp is lower
    assert f(50) == pytest.approx(0.55)  # 1 - 0.9 * 0.5
    now[0] = 200.0  # past the budget
    assert f(51) == pytest.approx(0.1)


def test_plots_are_png(tmp_path):
    a = plot_attention(torch.rand(5, 30).numpy(), tmp_path / "a.png", "t", ["a", "b", "c", "d", "</s>"])
    c = plot_curves({"train": [(0, 3.0), (10, 2.0)], "val": [(10, 2.5)]}, tmp_path / "c.png")
    for p in (a, c):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Evil:
    """A pickled object in a checkpoint: weights_only loading must refuse it."""


def test_atomic_checkpoint_round_trip_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    ck = {"state_dict": {"w": torch.arange(3.0)}, "epoch": 2, "name": "x"}
    io.save_checkpoint(ck, tmp_path / "last.ckpt")
    assert not list(tmp_path.glob("*.tmp"))
    got = io.load_checkpoint(tmp_path / "last.ckpt")
    assert got["epoch"] == 2 and torch.equal(got["state_dict"]["w"], ck["state_dict"]["w"])

    torch.save({"obj": _Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError):  # a pickled object is refused, never executed
        io.load_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        io.load_checkpoint(tmp_path / "nope.ckpt")


def test_time_budget_stops_so_that_the_last_validation_fits(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("sonus.train.callbacks.time.monotonic", lambda: now[0])
    cb = TimeBudget(minutes=2)  # 120 s
    trainer = SimpleNamespace(sanity_checking=False, should_stop=False, check_val_every_n_epoch=1, current_epoch=0)
    cb.on_fit_start(trainer, None)

    def steps(n, seconds=1.0):
        for _ in range(n):
            now[0] += seconds
            cb.on_train_batch_end(trainer, None, None, None, 0)
            if trainer.should_stop:
                return

    steps(50)  # t = 50
    cb.on_validation_start(trainer, None)
    now[0] += 20.0  # a validation takes 20 s
    cb.on_validation_end(trainer, None)  # t = 70
    assert not trainer.should_stop and cb.val_seconds == 20.0
    now[0] += 1.0  # the first step after a validation is timed from its end
    steps(100)
    assert trainer.should_stop and now[0] == 100.0  # a 20 s validation now ends at 120; one more 1 s step would overrun


def test_time_budget_resumes_what_is_left(monkeypatch):
    """The spent time is checkpointed: a resumed run spends the rest, and the budget lr decay,
    which reads the callback's clock, goes on from where it was."""
    now = [0.0]
    monkeypatch.setattr("sonus.train.callbacks.time.monotonic", lambda: now[0])
    trainer = SimpleNamespace(sanity_checking=False, should_stop=False, check_val_every_n_epoch=1, current_epoch=0)
    first = TimeBudget(minutes=2)
    assert first.elapsed() == 0.0  # not started
    first.on_fit_start(trainer, None)
    now[0] += 90.0
    state = first.state_dict()
    assert state["elapsed"] == 90.0

    now[0] = 5000.0  # another process, much later
    second = TimeBudget(minutes=2)
    second.load_state_dict(state)
    lr = warmup_decay(1, "budget", budget_seconds=120.0, min_ratio=0.1, elapsed=second.elapsed)
    assert lr(10) == pytest.approx(1 - 0.9 * 0.75)  # before fit starts: where the first run stopped
    second.on_fit_start(trainer, None)
    now[0] += 6.0
    assert second.elapsed() == 96.0 and lr(11) == pytest.approx(1 - 0.9 * 0.8)
    while not trainer.should_stop:
        now[0] += 1.0
        second.on_train_batch_end(trainer, None, None, None, 0)
    assert now[0] - 5000.0 == 30.0  # the 30 s that were left, no more (another 1 s step would overrun)

    trainer.should_stop = False
    done = TimeBudget(minutes=2)
    done.load_state_dict(second.state_dict())  # a finished run started again
    done.on_fit_start(trainer, None)
    now[0] += 1.0
    done.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop


def test_time_budget_in_an_epoch_without_validation_still_ends_with_one(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("sonus.train.callbacks.time.monotonic", lambda: now[0])
    cb = TimeBudget(minutes=1)
    trainer = SimpleNamespace(sanity_checking=False, should_stop=False, check_val_every_n_epoch=2, current_epoch=0)
    cb.on_fit_start(trainer, None)
    cb.val_seconds = 30.0
    while not trainer.should_stop:
        now[0] += 2.0
        cb.on_train_batch_end(trainer, None, None, None, 0)
    assert now[0] == 30.0  # time kept for the validation, although epoch 0 was not due one ...
    assert trainer.check_val_every_n_epoch == 1  # ... which Lightning now runs


def test_time_budget_run_ends_with_a_validation_in_lightning(tmp_path):
    """The real Trainer: a run stopped by the budget in an epoch not due a validation validates."""
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin, self.val_steps = torch.nn.Linear(2, 1), []

        def training_step(self, batch, i):
            return self.lin(batch[0]).pow(2).mean()

        def validation_step(self, batch, i):
            self.val_steps.append(self.global_step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 2)), batch_size=4)  # 10 steps an epoch
    model, cb = Tiny(), TimeBudget(minutes=1e-9)  # spent after the first step
    trainer = pl.Trainer(max_epochs=4, check_val_every_n_epoch=2, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data, data)
    assert trainer.global_step == 1 and model.val_steps and set(model.val_steps) == {1}


def test_speed_perturb_changes_length_and_pitch():
    sr = 16000
    t = torch.arange(sr) / sr
    wave = torch.sin(2 * math.pi * 500 * t)
    fast = speed_perturb(wave, 1.1, sr)
    assert abs(fast.shape[0] - round(sr / 1.1)) <= 2
    peak = torch.fft.rfft(fast).abs().argmax().item() * sr / fast.shape[0]
    assert abs(peak - 550) < 5
    assert speed_perturb(wave, 1.0, sr) is wave


def test_noise_mixer_hits_the_snr_range(tmp_path):
    g = np.random.default_rng(0)
    sf.write(tmp_path / "hum.wav", 0.1 * np.sin(np.arange(8000) * 0.3).astype(np.float32), 16000)  # shorter than speech: looped
    sf.write(tmp_path / "hiss.wav", (0.05 * g.standard_normal(48000)).astype(np.float32), 16000)
    torch.manual_seed(0)
    speech = torch.from_numpy((0.3 * g.standard_normal(20000)).astype(np.float32))
    mixer = NoiseMixer(NoiseConfig(str(tmp_path), prob=1.0, snr_db=(5.0, 10.0)), 16000)
    assert len(mixer.files) == 2
    for _ in range(10):
        noisy = mixer(speech)
        assert noisy.shape == speech.shape
        snr = 10 * math.log10(float(speech.square().mean()) / float((noisy - speech).square().mean()))
        assert 5.0 - 1e-3 <= snr <= 10.0 + 1e-3, snr
    assert NoiseMixer(NoiseConfig(str(tmp_path), prob=0.0), 16000)(speech) is speech
    with pytest.raises(FileNotFoundError, match="noise folder not found"):
        NoiseMixer(NoiseConfig(str(tmp_path / "none")), 16000)
    with pytest.raises(ValueError, match="prob must be in"):
        NoiseMixer(NoiseConfig(str(tmp_path), prob=1.5), 16000)


@pytest.mark.parametrize("workers", [0, 1])
def test_duration_sampler_reshuffles_every_epoch_in_lightning(tmp_path, workers):
    """Lightning does not reach a batch sampler's set_epoch: SamplerEpoch does, before the
    epoch's batches are drawn (with persistent workers too), so epochs differ and each
    matches the sampler's own order for that epoch."""
    import lightning.pytorch as pl

    from sonus.data.sampler import DurationBucketSampler

    class Record(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin, self.seen = torch.nn.Linear(1, 1), []

        def training_step(self, batch, i):
            self.seen.append((self.current_epoch, batch[0][:, 0].long().tolist()))
            return self.lin(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    durations = [1.0 + (i % 7) / 7 for i in range(48)]
    sampler = DurationBucketSampler(durations, max_duration=8.0, num_buckets=3, seed=5)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(48.0)[:, None]), batch_sampler=sampler,
                                       num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
    model = Record()
    trainer = pl.Trainer(max_epochs=3, callbacks=[SamplerEpoch()], logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    epochs = [[b for e, b in model.seen if e == k] for k in range(3)]
    for k, got in enumerate(epochs):
        sampler.set_epoch(k)
        assert got == sampler._batches()
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_dataset_learns_each_epoch_in_its_workers(tmp_path):
    """SamplerEpoch (and, for the first epoch, RunData) pass the epoch to a dataset with
    set_epoch (dynamic mixing, codec segments): items drawn in a (non-persistent) worker see
    the epoch they belong to."""
    import lightning.pytorch as pl

    from sonus.train.trainer import RunData

    class EpochData(torch.utils.data.Dataset):
        epoch = -1

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.tensor([float(self.epoch)])

    class Record(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin, self.seen = torch.nn.Linear(1, 1), []

        def training_step(self, batch, i):
            self.seen.append((self.current_epoch, batch[:, 0].long().tolist()))
            return self.lin(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Record()
    trainer = pl.Trainer(max_epochs=3, callbacks=[SamplerEpoch()], logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    loader = torch.utils.data.DataLoader(EpochData(), batch_size=4, num_workers=1)
    trainer.fit(model, datamodule=RunData(loader, loader))
    assert model.seen == [(e, [e] * 4) for e in range(3) for _ in range(2)]


def test_ema_validates_and_saves_the_trained_weights_until_it_starts(tmp_path):
    """training.ema_decay with ema_start_step: before the average's first update, validation,
    checkpoints and the end of training use the weights being trained, not the initial ones
    Lightning's average holds until then; after it, the average."""
    import lightning.pytorch as pl

    from sonus.train.callbacks import EMA

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin, self.seen = torch.nn.Linear(2, 1), {}  # global step -> the weights validated

        def training_step(self, batch, i):
            return (self.lin(batch[0]) - 1).pow(2).mean()

        def validation_step(self, batch, i):
            self.seen[self.global_step] = self.lin.weight.detach().clone()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trained: dict[int, torch.Tensor] = {}

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            trained[trainer.global_step] = module.lin.weight.detach().clone()

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 2)), batch_size=4)

    def fit(steps: int) -> tuple[Tiny, torch.Tensor, pl.Trainer]:
        torch.manual_seed(0)
        model = Tiny()
        init = model.lin.weight.detach().clone()
        trainer = pl.Trainer(max_steps=steps, val_check_interval=2, callbacks=[EMA(decay=0.5, update_starting_at_step=4), Record()],
                             logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
        trainer.fit(model, data, data)
        return model, init, trainer

    model, init, trainer = fit(3)  # ends before the average's first update
    assert torch.equal(model.seen[2], trained[2]) and not torch.equal(model.seen[2], init)
    assert torch.equal(model.lin.weight, trained[3])
    trainer.save_checkpoint(tmp_path / "early.ckpt")
    early = torch.load(tmp_path / "early.ckpt", weights_only=True)
    assert torch.equal(early["state_dict"]["lin.weight"], trained[3]) and "current_model_state" not in early

    model, init, trainer = fit(8)
    assert torch.equal(model.seen[2], trained[2])
    assert not torch.allclose(model.seen[8], trained[8])  # the average
    assert torch.equal(model.lin.weight, model.seen[8])  # training ends on the average


def test_build_trainer_adds_top_k_and_early_stopping(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from sonus.cli import compose
    from sonus.train.trainer import build_trainer

    cfg = compose("train", ["wandb.enabled=false", "tensorboard.enabled=false", "training.early_stopping={patience: 2}"])
    trainer = build_trainer(cfg, tmp_path, monitor="val/select")
    es = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    assert len(es) == 1 and es[0].patience == 2 and es[0].monitor == "val/select"
    ck = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == "val_loss"]
    assert len(ck) == 1 and ck[0].save_top_k == 3 and ck[0].filename == "rnnt-{epoch:02d}-{val_loss:.2f}"


def test_adam_uses_the_fused_kernel_and_matches_the_loop():
    from sonus.train.optim import adam

    torch.manual_seed(0)
    nets = [torch.nn.Linear(5, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = adam(nets[0].parameters(), 1e-2, 0.1, decoupled=True)
    loop = adam(nets[1].parameters(), 1e-2, 0.1, decoupled=True, fused=False)
    assert isinstance(fused, torch.optim.AdamW) and fused.param_groups[0]["fused"] is True
    assert not loop.param_groups[0]["fused"]
    x = torch.randn(8, 5)
    for _ in range(5):
        for net, opt in zip(nets, (fused, loop)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b)
    assert type(adam([torch.nn.Parameter(torch.ones(2))], 1e-3)) is torch.optim.Adam
