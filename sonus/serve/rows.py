"""Stack the states of streams that started at different times into one batch, and split it back.

:class:`~sonus.asr.streaming.StreamingDecoder` runs B streams in lock-step: its state counts
samples and frames once for all of them. The server's streams start and stop whenever
clients do, so each keeps its own state, and one decoding step stacks the states of the
streams that have a chunk waiting. Two things make that exact:

- every stream is fed whole chunks of ``chunk_samples`` (a whole number of encoder frames),
  so between steps every stream holds the same amount of audio context and no pending
  feature frames: their tensors stack;
- the stacked state's counters start at zero (:func:`stack`): within one step the
  decoder only uses differences of them, and each stream adds the step's counts to its own
  (:func:`unstack`).

A state is a tree of dataclasses, tuples and tensors. Tensors are stacked on their batch
dimension: 1 for the LSTM states of the encoder (``h``, ``c``) and the predictor
(``pred_state``: (layers, rows, H)), 0 for everything else. Tensors of streams whose label
buffers grew to different capacities (the last dimension) are zero-padded to the largest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from sonus.asr.streaming import StreamState

_DIM1 = ("h", "c", "pred_state")  # fields whose tensors are (layers, batch, H)


@dataclass
class StreamRow:
    """One stream's decoding state, batch 1, with its own counters."""

    audio: torch.Tensor  # (1, context) samples the next frames still need
    samples: int  # valid samples decoded so far
    frames: int  # feature frames so far
    enc_frames: int  # encoder frames so far
    encoder: Any
    search: Any
    enc: list[torch.Tensor] = field(default_factory=list)  # (1, t', H) encoder output pieces, for LAS

    @classmethod
    def from_state(cls, state: StreamState) -> StreamRow:
        assert state.audio.shape[0] == 1, tuple(state.audio.shape)
        return cls(state.audio, int(state.samples[0]), state.frames, state.enc_frames, state.encoder, state.search, list(state.enc))

    def to_state(self) -> StreamState:
        """The batch-1 state with this stream's real counters (for ``StreamingDecoder.finish``)."""
        samples = torch.tensor([self.samples], dtype=torch.long, device=self.audio.device)
        return StreamState(self.audio, samples, self.frames, self.enc_frames, self.encoder, self.search, list(self.enc))


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    if parts[0].dim() >= 2 and dim != parts[0].dim() - 1:
        width = max(p.shape[-1] for p in parts)
        parts = [p if p.shape[-1] == width else torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in parts]
    return torch.cat(parts, dim=dim)


def _stack(parts: list[Any], dim: int) -> Any:
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return _cat(parts, dim)
    if isinstance(first, tuple):
        return tuple(_stack([p[i] for p in parts], dim) for i in range(len(first)))
    if dataclasses.is_dataclass(first):
        kw = {f.name: _stack([getattr(p, f.name) for p in parts], 1 if f.name in _DIM1 else 0) for f in dataclasses.fields(first)}
        return type(first)(**kw)
    raise TypeError(f"cannot stack stream states holding {type(first).__name__}")


def _split(x: Any, n: int, dim: int) -> list[Any]:
    if x is None:
        return [None] * n
    if isinstance(x, torch.Tensor):
        assert x.shape[dim] % n == 0, (tuple(x.shape), dim, n)
        return list(x.chunk(n, dim=dim)) if x.shape[dim] else [x] * n
    if isinstance(x, tuple):
        cols = [_split(v, n, dim) for v in x]
        return [tuple(c[i] for c in cols) for i in range(n)]
    if dataclasses.is_dataclass(x):
        cols = {f.name: _split(getattr(x, f.name), n, 1 if f.name in _DIM1 else 0) for f in dataclasses.fields(x)}
        return [type(x)(**{k: v[i] for k, v in cols.items()}) for i in range(n)]
    raise TypeError(f"cannot split stream states holding {type(x).__name__}")


def stack(rows: list[StreamRow]) -> StreamState:
    """One state for B rows, counters at zero (see the module docstring)."""
    shapes = {tuple(r.audio.shape) for r in rows}
    assert len(shapes) == 1, f"streams hold different audio context {shapes}: feed whole chunks"
    device = rows[0].audio.device
    return StreamState(
        audio=torch.cat([r.audio for r in rows]),
        samples=torch.zeros(len(rows), dtype=torch.long, device=device),
        frames=0,
        enc_frames=0,
        encoder=_stack([r.encoder for r in rows], 0),
        search=_stack([r.search for r in rows], 0),
    )


def unstack(state: StreamState, rows: list[StreamRow], keep_enc: bool) -> list[StreamRow]:
    """The B rows after a step from ``stack(rows)``: each adds the step's counts to its own."""
    n = len(rows)
    audio = _split(state.audio, n, 0)
    encoder, search = _split(state.encoder, n, 0), _split(state.search, n, 0)
    pieces = [_split(y, n, 0) for y in state.enc]  # state.enc: this step's pieces only
    out = []
    for i, r in enumerate(rows):
        enc = r.enc + [p[i] for p in pieces] if keep_enc else r.enc
        samples = r.samples + int(state.samples[i])
        out.append(StreamRow(audio[i].clone(), samples, r.frames + state.frames, r.enc_frames + state.enc_frames, encoder[i], search[i], enc))
    return out
