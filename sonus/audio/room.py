"""Simulated room reverberation: shoebox rooms with pyroomacoustics' image-source method.

A room is drawn from :class:`RoomConfig` (size, RT60, one microphone, one point source
per speaker), its wall absorption and image-source order come from Sabine's formula
inverted for the drawn RT60 (``pyroomacoustics.inverse_sabine``), and the result is one
room impulse response (RIR) per source at the microphone.

Next to every RIR the same geometry is simulated without reflections (image-source order
0): the direct path alone, with the same propagation delay and 1/r attenuation. Convolved
with a source it gives the dry target that is aligned sample for sample with the
reverberant signal (as WHAMR's anechoic targets are).

Shapes: C sources, L RIR taps, T samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import numpy as np

Range = tuple[float, float]


def _pra() -> ModuleType:
    """pyroomacoustics, imported on first use: only reverberation needs it."""
    try:
        import pyroomacoustics
    except ImportError as e:
        raise ImportError("simulated rooms need pyroomacoustics (pip install pyroomacoustics)") from e
    return pyroomacoustics


@dataclass(frozen=True)
class RoomConfig:
    """Ranges the rooms are drawn from, uniformly; lengths in metres, times in seconds.

    Attributes:
        length, width, height: the room's sides (x, y, z).
        rt60: reverberation time (60 dB decay) the walls are given.
        margin: smallest distance of the microphone and of every source to each wall.
        heights: height of the microphone and of the sources (mouth level), clipped to the
            room's height minus ``margin``.
        min_distance: smallest source-microphone distance (positions are redrawn until it holds).
        max_order: cap on the image-source order; ``None`` uses what inverse Sabine asks for,
            which is exact but slow in small rooms with long RT60 (order ~ c * RT60 / size);
            a cap shortens the simulated tail.
    """

    length: Range = (4.0, 8.0)
    width: Range = (4.0, 8.0)
    height: Range = (2.5, 3.5)
    rt60: Range = (0.2, 0.6)
    margin: float = 0.5
    heights: Range = (1.0, 1.8)
    min_distance: float = 0.5
    max_order: int | None = None

    def __post_init__(self) -> None:
        for name in ("length", "width", "height", "rt60", "heights"):
            value = tuple(float(x) for x in getattr(self, name))  # Hydra gives lists
            object.__setattr__(self, name, value)
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ValueError(f"RoomConfig.{name} must be a range [low, high] with 0 < low <= high, got {value}")
        smallest = min(self.length[0], self.width[0], self.height[0])
        if not 0 <= 2 * self.margin < smallest:
            raise ValueError(f"RoomConfig.margin {self.margin} leaves no room inside the smallest side {smallest} m")
        if self.heights[0] >= self.height[0] - self.margin:
            raise ValueError(f"RoomConfig.heights {self.heights} must start below height[0] - margin = {self.height[0] - self.margin}")
        if self.min_distance < 0:
            raise ValueError(f"RoomConfig.min_distance must be >= 0, got {self.min_distance}")
        if self.max_order is not None and self.max_order < 0:
            raise ValueError(f"RoomConfig.max_order must be >= 0 or None, got {self.max_order}")
        # Sabine absorption grows with volume / surface and with 1 / RT60: the largest room with
        # the shortest RT60 needs the most; beyond 1 no wall can absorb enough.
        try:
            _pra().inverse_sabine(self.rt60[0], [self.length[1], self.width[1], self.height[1]])
        except ValueError:
            raise ValueError(
                f"RoomConfig: an RT60 of {self.rt60[0]} s cannot be reached in a "
                f"{self.length[1]} x {self.width[1]} x {self.height[1]} m room (Sabine absorption > 1); "
                "raise rt60[0] or make the rooms smaller"
            ) from None


@dataclass(frozen=True)
class RoomInfo:
    """What was drawn for one room.

    Attributes:
        size: (3,) room sides in metres.
        rt60: the RT60 the walls were set for (seconds).
        absorption: energy absorption coefficient of every wall.
        max_order: image-source order simulated.
        mic: (3,) microphone position.
        sources: (C, 3) source positions.
        direct: (C, L) direct-path responses, aligned with the RIRs (same delay and gain).
    """

    size: np.ndarray
    rt60: float
    absorption: float
    max_order: int
    mic: np.ndarray
    sources: np.ndarray
    direct: np.ndarray


class Reverberated(NamedTuple):
    """A source through a room: ``reverberant`` (T,) is what the microphone hears, ``direct``
    (T,) the direct sound alone, with the same delay, for use as the dry target."""

    reverberant: np.ndarray
    direct: np.ndarray


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _position(rng: np.random.Generator, size: np.ndarray, cfg: RoomConfig) -> np.ndarray:
    top = min(cfg.heights[1], size[2] - cfg.margin)
    return np.array(
        [_uniform(rng, (cfg.margin, size[0] - cfg.margin)), _uniform(rng, (cfg.margin, size[1] - cfg.margin)),
         _uniform(rng, (cfg.heights[0], top))]
    )  # fmt: skip


def _stack(responses: list[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(responses), length), dtype=np.float32)
    for i, r in enumerate(responses):
        out[i, : min(len(r), length)] = r[:length]
    return out


def simulate_rirs(
    n_src: int, sample_rate: int, rng: np.random.Generator, cfg: RoomConfig | None = None
) -> tuple[np.ndarray, RoomInfo]:
    """Draw a room, a microphone and ``n_src`` source positions; simulate their RIRs.

    The same ``rng`` state gives the same room and the same RIRs (the image-source method
    has no randomness of its own). ``cfg`` defaults to ``RoomConfig()``.

    Returns:
        rirs: (C, L) float32, one per source, C = ``n_src``, zero-padded to the longest.
        info: the drawn room, with the direct-path responses (C, L) in ``info.direct``.
    """
    if n_src < 1 or sample_rate <= 0:
        raise ValueError(f"simulate_rirs: need n_src >= 1 and sample_rate > 0, got {n_src}, {sample_rate}")
    cfg = cfg or RoomConfig()
    size = np.array([_uniform(rng, cfg.length), _uniform(rng, cfg.width), _uniform(rng, cfg.height)])
    rt60 = _uniform(rng, cfg.rt60)
    mic = _position(rng, size, cfg)
    sources = []
    for _ in range(n_src):
        for _attempt in range(100):
            pos = _position(rng, size, cfg)
            if np.linalg.norm(pos - mic) >= cfg.min_distance:
                break
        sources.append(pos)  # after 100 misses (a tiny room) the last draw is kept
    pra = _pra()
    absorption, order = pra.inverse_sabine(rt60, size)
    if cfg.max_order is not None:
        order = min(order, cfg.max_order)

    def simulate(max_order: int) -> list[np.ndarray]:
        room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption), max_order=max_order)
        for pos in sources:
            room.add_source(pos)
        room.add_microphone(mic)
        room.compute_rir()
        return [np.asarray(r, dtype=np.float32) for r in room.rir[0]]

    reverberant = simulate(order)
    direct = simulate(0)
    length = max(len(r) for r in reverberant)
    info = RoomInfo(size, rt60, float(absorption), int(order), mic, np.stack(sources), _stack(direct, length))
    return _stack(reverberant, length), info


def direct_part(rir: np.ndarray) -> np.ndarray:
    """The direct sound of a RIR (L,): the taps within half a fractional-delay filter of its
    first arrival, zero elsewhere.

    The first arrival is the first tap reaching 30 % of the largest (moved to the local
    maximum of the next few taps), not the largest tap: a floor reflection, or several
    images arriving together, is often stronger than the direct path. pyroomacoustics draws
    every image as a windowed sinc of ``frac_delay_length`` taps, so the window holds all of
    the direct sound, and any reflection arriving within those few milliseconds. Prefer
    :attr:`RoomInfo.direct` where available: it is exact.
    """
    half = _pra().constants.get("frac_delay_length") // 2
    magnitude = np.abs(rir)
    onset = int(np.argmax(magnitude >= 0.3 * magnitude.max()))
    peak = onset + int(np.argmax(magnitude[onset : onset + 4]))
    out = np.zeros_like(rir)
    out[max(0, peak - half) : peak + half + 1] = rir[max(0, peak - half) : peak + half + 1]
    return out


def reverberate(source: np.ndarray, rir: np.ndarray, direct_rir: np.ndarray | None = None) -> Reverberated:
    """Convolve ``source`` (T,) with ``rir`` (L,) and with its direct path.

    Args:
        source: (T,) dry signal.
        rir: (L,) room impulse response.
        direct_rir: (L',) the direct-path response to use (``RoomInfo.direct[i]``); ``None``
            cuts it from ``rir`` with :func:`direct_part`.

    Returns:
        Both outputs (T,) float32, cut to the source's length (the reverberant tail past its
        end is dropped) and delayed alike by the source-microphone propagation time.
    """
    if source.ndim != 1 or rir.ndim != 1:
        raise ValueError(f"reverberate: source and rir must be 1-D, got shapes {source.shape}, {rir.shape}")
    from scipy.signal import oaconvolve

    if direct_rir is None:
        direct_rir = direct_part(rir)
    n = source.shape[0]
    wet = oaconvolve(source, rir)[:n]
    dry = oaconvolve(source, direct_rir)[:n]
    return Reverberated(wet.astype(np.float32, copy=False), dry.astype(np.float32, copy=False))
