"""Simulated rooms: reproducible, with the RT60 asked for, and a direct path that lines up."""

from __future__ import annotations

import numpy as np
import pyroomacoustics as pra
import pytest

from sonus.audio.room import RoomConfig, direct_part, reverberate, simulate_rirs

SR = 8000


def schroeder_rt60(rir: np.ndarray, sample_rate: int) -> float:
    """T20 (Schroeder backward integration, -5 to -25 dB, extrapolated to 60 dB): an
    estimate independent of the simulator's own settings."""
    energy = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]
    edc = 10 * np.log10(energy / energy[0] + 1e-300)
    return 3.0 * (int(np.argmax(edc <= -25)) - int(np.argmax(edc <= -5))) / sample_rate


def test_same_seed_same_room_and_rirs():
    a, info_a = simulate_rirs(2, SR, np.random.default_rng(7))
    b, info_b = simulate_rirs(2, SR, np.random.default_rng(7))
    c, _ = simulate_rirs(2, SR, np.random.default_rng(8))
    assert a.shape[0] == 2 and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(info_a.direct, info_b.direct)
    np.testing.assert_array_equal(info_a.sources, info_b.sources)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_geometry_respects_the_config():
    cfg = RoomConfig(margin=0.6, min_distance=1.0, max_order=10)  # geometry only: a short simulation
    for seed in range(5):
        _, info = simulate_rirs(3, SR, np.random.default_rng(seed), cfg)
        assert cfg.length[0] <= info.size[0] <= cfg.length[1] and cfg.height[0] <= info.size[2] <= cfg.height[1]
        for pos in [info.mic, *info.sources]:
            assert np.all(pos >= 0.6 - 1e-9) and np.all(pos <= info.size - 0.6 + 1e-9), (pos, info.size)
        assert np.all(np.linalg.norm(info.sources - info.mic, axis=1) >= 1.0)


def test_measured_rt60_near_the_drawn_one():
    measured = {}
    for rt60 in [(0.2, 0.25), (0.5, 0.6)]:
        cfg = RoomConfig(rt60=rt60)
        measured[rt60] = []
        for seed in range(3):
            rirs, info = simulate_rirs(2, SR, np.random.default_rng(seed), cfg)
            assert rt60[0] <= info.rt60 <= rt60[1]
            for rir, direct in zip(rirs, info.direct):
                # The decay of what the walls add (a close source's direct sound would
                # dominate the first 25 dB). Sabine is a diffuse-field approximation: over
                # 120 simulated responses the ratio measured / drawn spanned 0.76..1.43.
                t60 = schroeder_rt60(rir - direct, SR)
                assert 0.7 * info.rt60 <= t60 <= 1.5 * info.rt60, (t60, info.rt60, info.size)
                measured[rt60].append(t60)
    assert max(measured[(0.2, 0.25)]) < min(measured[(0.5, 0.6)])


def test_direct_path_arrives_when_the_geometry_says_and_first():
    c = pra.constants.get("c")
    delay = pra.constants.get("frac_delay_length") // 2  # pyroomacoustics' global delay
    for seed in range(6):
        rirs, info = simulate_rirs(2, SR, np.random.default_rng(seed))
        for i, (rir, direct) in enumerate(zip(rirs, info.direct)):
            arrival = int(np.argmax(np.abs(direct)))
            expected = np.linalg.norm(info.sources[i] - info.mic) / c * SR + delay
            assert abs(arrival - expected) <= 1, (arrival, expected)
            # the reverberant response starts with that same sound: its first arrival is
            # there, and what the reflections add peaks later.
            onset = int(np.argmax(np.abs(rir) >= 0.3 * np.abs(rir).max()))
            assert arrival - 3 <= onset <= arrival, (onset, arrival)  # the sinc's rising taps
            assert int(np.argmax(np.abs(rir - direct))) > arrival
            # the cut-out fallback keeps the direct sound (and reflections within its window)
            kept = direct_part(rir) != 0
            assert np.sum(direct[kept] ** 2) >= 0.995 * np.sum(direct**2)


def test_reverberate_keeps_length_and_aligns_direct_with_reverberant():
    rirs, info = simulate_rirs(1, SR, np.random.default_rng(3), RoomConfig(rt60=(0.3, 0.3)))
    source = np.zeros(SR // 2, dtype=np.float32)
    source[100] = 1.0  # a click: both outputs are the responses, delayed by 100 samples
    out = reverberate(source, rirs[0], info.direct[0])
    assert out.reverberant.shape == out.direct.shape == source.shape
    n = source.shape[0] - 100
    np.testing.assert_allclose(out.reverberant[100:], rirs[0][:n], atol=1e-6)
    np.testing.assert_allclose(out.direct[100:], info.direct[0][:n], atol=1e-6)
    # reverberation adds energy after the direct sound but does not move it
    peak = int(np.argmax(np.abs(out.direct)))
    onset = int(np.argmax(np.abs(out.reverberant) >= 0.3 * np.abs(out.reverberant).max()))
    assert peak - 3 <= onset <= peak
    assert np.sum(out.reverberant**2) > 1.5 * np.sum(out.direct**2)
    # without the exact direct path, the one cut out of the RIR is used
    np.testing.assert_allclose(reverberate(source, rirs[0]).direct[100:], direct_part(rirs[0])[:n], atol=1e-6)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="cannot be reached"):
        RoomConfig(length=(20.0, 30.0), width=(20.0, 30.0), rt60=(0.05, 0.1))
    with pytest.raises(ValueError, match="margin"):
        RoomConfig(margin=2.0)
    with pytest.raises(ValueError, match="rt60"):
        RoomConfig(rt60=(0.6, 0.2))
    assert RoomConfig(length=[5, 6]).length == (5.0, 6.0)  # lists (as Hydra gives) become tuples
