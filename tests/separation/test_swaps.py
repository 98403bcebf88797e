"""Speaker swaps within a mixture (window_permutations, metrics.swaps) and the summary per
speaker pair (group_by=pair) of `sonus evaluate separation`."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from sonus.data.separation import SeparationExample
from sonus.separation.infer import MetricOptions, Separator, evaluate, speaker_pair
from sonus.separation.loss import window_permutations

SR = 8000


def _tone(freq: float, n: int) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n) / SR)


def test_window_permutations_find_the_swapped_windows():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 10 * 400, generator=g)
    est = 0.3 * ref.clone()  # any scale: the estimates are scaled to their references first
    swapped = [3, 4, 8]
    for w in swapped:
        est[:, w * 400 : (w + 1) * 400] = est[:, w * 400 : (w + 1) * 400].flip(0)
    est += 0.01 * torch.randn(est.shape, generator=g)
    perm, active = window_permutations(est, ref, 400)
    assert perm.shape == (10, 2) and active.all()
    assert [w for w in range(10) if perm[w].tolist() == [1, 0]] == swapped

    ref[1, 400:800] = 0  # source 2 silent in window 1: no order to judge there
    _, active = window_permutations(est, ref, 400)
    assert active.tolist() == [w != 1 for w in range(10)]
    assert window_permutations(est, ref, 300)[0].shape == (14, 2)  # 13 windows and a shorter last one
    with pytest.raises(ValueError, match="window"):
        window_permutations(est, ref, 0)


class _Bands(nn.Module):
    """A 'separator' that always gives the band below 1 kHz as source 1 and the rest as source 2."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))  # for Separator's device and dtype

    def forward(self, mix: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 2, T)
        spec = torch.fft.rfft(mix)
        low = torch.fft.rfftfreq(mix.shape[-1], 1 / SR) < 1000
        return torch.stack([torch.fft.irfft(spec * low, mix.shape[-1]), torch.fft.irfft(spec * ~low, mix.shape[-1])], 1)


def _example(id: str, swap_at: float) -> SeparationExample:
    """Speaker 1 hums low until ``swap_at`` of the way, then high; speaker 2 the other way round,
    so the band separator swaps them there."""
    n = 2 * SR
    k = round(swap_at * n)
    low, high = 0.5 * _tone(300, n), 0.5 * _tone(2000, n)
    s1 = torch.cat([low[:k], high[k:]])
    s2 = torch.cat([high[:k], low[k:]])
    return SeparationExample(id, s1 + s2, torch.stack([s1, s2]))


def test_swaps_and_pairs_in_the_evaluation(tmp_path):
    sep = Separator(_Bands().eval(), SR, "bands")
    examples = [
        _example("6272-1-0001_8629-2-0001", swap_at=0.75),  # a quarter of the windows swapped
        _example("8629-2-0002_6272-1-0002", swap_at=1.0),  # none
        _example("7312-3-0001_8629-2-0003", swap_at=0.5),  # half
    ]
    metrics = MetricOptions(sdr=False, pesq=False, stoi=False, swaps=True, swap_window=0.25)
    summary = evaluate(sep, examples, metrics, tmp_path / "r.csv", group_by="pair")
    with open(tmp_path / "r.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert [float(rows[e.id]["swapped"]) for e in examples] == [0.25, 0.0, 0.5]
    for e in examples:  # putting each window in its best order gives back the sources
        r = rows[e.id]
        assert float(r["si_sdri_window_pit"]) > 30 and r["pair"] == speaker_pair(e.id)
    assert float(rows[examples[0].id]["si_sdri"]) < 10 and float(rows[examples[1].id]["si_sdri"]) > 30
    assert list(summary) == ["6272+8629", "7312+8629", "overall"]  # 8629-..._6272-... joins the first pair
    assert summary["6272+8629"]["n"] == 2 and summary["6272+8629"]["swapped"] == pytest.approx(0.125)
    with open(tmp_path / "r_summary.csv") as f:
        assert next(csv.reader(f))[0] == "pair"

    with pytest.raises(ValueError, match="'mix_007' is not named as LibriMix"):
        evaluate(sep, [_example("mix_007", 1.0)], metrics, tmp_path / "bad.csv", group_by="pair")
    with pytest.raises(ValueError, match="group_by"):
        evaluate(sep, examples, metrics, tmp_path / "bad.csv", group_by="speaker")
