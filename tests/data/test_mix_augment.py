"""Dynamic mixing's voice augmentations: the random equaliser and short sources strung to the crop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sonus.audio.augment import random_eq
from sonus.data.dynamic_mix import DynamicMixDataset
from sonus.data.librimix import MixConfig
from sonus.separation.config import build_dataset
from tests.data.test_librimix import make_librispeech, make_noise

SR = 8000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_librispeech(tmp_path_factory.mktemp("librispeech"))  # 6 speakers x 3 utterances of 0.6-1.0 s


def _gain_at(out: np.ndarray, wave: np.ndarray, hz: int) -> float:
    """Output/input amplitude ratio of the bin at ``hz`` (1 Hz bins: one second at SR)."""
    return float(np.abs(np.fft.rfft(out))[hz] / np.abs(np.fft.rfft(wave))[hz])


def test_random_eq_is_linear_in_db_over_log_frequency():
    t = np.arange(SR) / SR
    wave = sum(np.sin(2 * np.pi * f * t) for f in (50, 1000, 2000)).astype(np.float32)
    g0, g1 = np.random.default_rng(7).uniform(-6, 6, size=2)  # the draws random_eq makes with bands=2
    out = random_eq(wave, np.random.default_rng(7), SR, max_db=6.0, bands=2)  # knots at 100 Hz and 4 kHz
    assert out.shape == wave.shape and out.dtype == np.float32
    for hz in (1000, 2000):
        want = g0 + (g1 - g0) * math.log(hz / 100) / math.log(SR / 2 / 100)
        assert 20 * math.log10(_gain_at(out, wave, hz)) == pytest.approx(want, abs=1e-3)
    assert 20 * math.log10(_gain_at(out, wave, 50)) == pytest.approx(g0, abs=1e-3)  # flat below the first knot
    np.testing.assert_allclose(random_eq(wave, np.random.default_rng(0), SR, max_db=0.0), wave, atol=1e-5)
    with pytest.raises(ValueError, match="bands >= 2"):
        random_eq(wave, np.random.default_rng(0), SR, bands=1)


def test_fill_strings_short_utterances_to_the_crop(corpus):
    cfg = MixConfig(sample_rate=SR, mode="min", segment=2.5)  # every utterance is 0.6-1.0 s
    plain = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=6, seed=1)
    filled = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=6, seed=1, fill=True)
    again = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=6, seed=1, fill=True)
    for i in range(6):
        assert plain[i].mix.shape[0] <= SR  # the shorter source's length
        assert filled[i].mix.shape[0] == int(2.5 * SR)
        assert filled.draw(i) == plain.draw(i)  # the same speakers and first utterances
        assert np.array_equal(filled[i].mix.numpy(), again[i].mix.numpy())
    # With speed perturbation the fill leaves room for the fastest factor.
    fast = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=6, seed=1, fill=True, speed_factors=[1.2])
    assert all(fast[i].mix.shape[0] == int(2.5 * SR) for i in range(6))
    with pytest.raises(ValueError, match="segment is None"):
        DynamicMixDataset.from_librispeech(corpus, MixConfig(sample_rate=SR), num_items=2, fill=True)


def test_random_eq_changes_sources_and_the_mixture_stays_their_sum(corpus, tmp_path):
    noise = make_noise(tmp_path / "noise")
    cfg = MixConfig(sample_rate=SR, mode="min", noise=str(noise))
    plain = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=4, seed=3)
    eq = DynamicMixDataset.from_librispeech(corpus, cfg, num_items=4, seed=3, eq_db=6.0)
    for i in range(4):
        _, m = eq.mixture(i)
        example = eq[i]
        np.testing.assert_allclose(example.mix.numpy(), m.images.sum(0) + m.noise, atol=1e-5)
        assert np.array_equal(example.sources.numpy(), m.sources)
        assert example.mix.shape == plain[i].mix.shape and not np.allclose(example.mix.numpy(), plain[i].mix.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="eq_db"):
        DynamicMixDataset.from_librispeech(corpus, cfg, num_items=4, eq_db=-1.0)


def test_config_keys_reach_the_dataset(corpus):
    d = {"kind": "librimix", "sample_rate": SR, "mode": "min", "segment_seconds": 2.0,
         "dynamic_mixing": {"enabled": True, "source": str(corpus), "dev_speakers": 0, "test_speakers": 0, "num_items": 3,
                            "random_eq_db": 4, "fill_short": True}}  # fmt: skip
    data = build_dataset(d, "train")
    assert isinstance(data, DynamicMixDataset) and data.fill and data.eq_db == 4.0
    assert data[0].mix.shape[0] == 2 * SR
