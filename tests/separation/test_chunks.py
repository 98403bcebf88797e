"""Chunked separation: chunks put back in one consistent source order, and the lr budget decay."""

from __future__ import annotations

import itertools

import pytest
import torch

from sonus.separation.infer import stitch_chunks
from sonus.separation.lightning import SepOptimConfig


class SwappingOracle(torch.nn.Module):
    """Returns the true sources of the samples it is given, in a random order on every call:
    what a model trained on short crops does over a long recording, at worst. The input is
    the sample index, so the oracle knows where a chunk starts."""

    def __init__(self, sources: torch.Tensor, seed: int = 0) -> None:
        super().__init__()
        self.sources = sources  # (B, C, T)
        self.gen = torch.Generator().manual_seed(seed)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        start, n = int(x[0, 0]), x.shape[-1]
        out = self.sources[..., start : start + n]
        perm = torch.randperm(out.shape[1], generator=self.gen)
        return out[:, perm]


@pytest.mark.parametrize("n_src", [2, 3])
def test_stitched_chunks_keep_one_source_order(n_src):
    torch.manual_seed(0)
    b, total = 2, 10_000
    sources = torch.randn(b, n_src, total)
    oracle = SwappingOracle(sources)
    position = torch.arange(total, dtype=torch.float32).expand(b, total)
    out = stitch_chunks(oracle, position, chunk=3000, overlap=1000)
    assert oracle.calls == 5  # starts 0, 2000, 4000, 6000 and the last at 7000
    assert out.shape == sources.shape
    for i in range(b):  # one order for the whole signal: some permutation of the sources, exactly
        first = [int(torch.argmin((sources[i, :, :100] - out[i, c, :100]).abs().sum(-1))) for c in range(n_src)]
        assert sorted(first) == list(range(n_src))
        torch.testing.assert_close(out[i], sources[i, first], rtol=1e-4, atol=1e-4)


def test_chunking_without_stitching_would_mix_orders():
    # the test above can fail: cross-fading the oracle's raw outputs (no reordering) does not give the sources
    torch.manual_seed(0)
    sources = torch.randn(1, 2, 10_000)
    oracle = SwappingOracle(sources, seed=1)
    starts = (0, 2000, 4000, 6000, 7000)
    pieces = [oracle(torch.arange(s, s + 3000, dtype=torch.float32)[None]) for s in starts]
    orders = {int(torch.argmin((sources[0, :, s : s + 100] - p[0, 0, :100]).abs().sum(-1))) for s, p in zip(starts, pieces)}
    assert orders == {0, 1}


def test_short_inputs_go_in_one_pass_and_bad_overlap_is_named():
    sources = torch.randn(1, 2, 2000)
    oracle = SwappingOracle(sources)
    out = stitch_chunks(oracle, torch.arange(2000, dtype=torch.float32)[None], chunk=3000, overlap=1000)
    assert oracle.calls == 1 and out.shape == (1, 2, 2000)
    with pytest.raises(ValueError, match="overlap"):
        stitch_chunks(oracle, torch.zeros(1, 5000), chunk=3000, overlap=3000)


def test_budget_decay_needs_a_budget():
    with pytest.raises(ValueError, match="time_budget_minutes"):
        SepOptimConfig(decay="budget")
    with pytest.raises(ValueError, match="total_steps"):
        SepOptimConfig(decay="cosine")
    with pytest.raises(ValueError, match="plateau, noam, cosine"):
        SepOptimConfig(decay="step")  # type: ignore[arg-type]


def test_budget_decay_schedules_per_step_without_a_plateau():
    from sonus.separation.lightning import SeparationLightning, SepTrainOptions

    model = torch.nn.Linear(2, 2)
    module = SeparationLightning(model, SepOptimConfig(lr=1e-3, decay="budget", budget_seconds=60.0), SepTrainOptions())
    out = module.configure_optimizers()
    sched = out["lr_scheduler"]
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LambdaLR) and sched["interval"] == "step"
    assert out["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3)  # full rate at the start of the budget
    plateau = SeparationLightning(model, SepOptimConfig(), SepTrainOptions()).configure_optimizers()[1][0]["scheduler"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)


@pytest.mark.parametrize("decay", ["noam", "cosine"])
def test_step_schedules_of_every_task_drive_separation(decay):
    """The warmup + noam / cosine decay ASR uses, per optimizer step: warmup to the full rate,
    then down (cosine to 5% at total_steps)."""
    from sonus.separation.lightning import SeparationLightning, SepTrainOptions

    model = torch.nn.Linear(2, 2)
    cfg = SepOptimConfig(lr=1e-3, warmup_steps=10, decay=decay, total_steps=100)
    out = SeparationLightning(model, cfg, SepTrainOptions()).configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(1e-4) and max(rates) == pytest.approx(1e-3) == rates[9]
    assert rates[-1] < 0.5e-3 and all(a >= b for a, b in itertools.pairwise(rates[9:]))
    if decay == "cosine":
        assert rates[-1] == pytest.approx(0.05e-3, rel=0.05)
