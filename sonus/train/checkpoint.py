"""Checkpoint I/O: atomic writes (temp file + rename) and weights-only loading."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """A crash while saving never leaves a half-written ``last.ckpt`` behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """The random streams a training step draws from (dropout, augmentation, DataLoader worker
    seeds), in a weights_only-safe form: a resumed run continues exactly as one never interrupted."""
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def restore_rng(state: dict[str, Any] | None) -> None:
    """Undo :func:`rng_state` (no-op for ``None``, e.g. a checkpoint from an older version)."""
    if state is not None:
        torch.set_rng_state(state["torch"])
        random.setstate((3, tuple(state["python"]), None))


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never a pickle
    of arbitrary objects. Errors name the file.

    Raises:
        FileNotFoundError: no such file.
        RuntimeError: the file is not a readable checkpoint (truncated, not torch, unsafe objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e


def save_training_state(checkpoint: dict[str, Any], curves: dict[str, list[tuple[int, float]]]) -> None:
    """Add what a resumed run needs beyond the weights: the plotted curves and the random streams."""
    checkpoint["curves"] = {k: [list(p) for p in v] for k, v in curves.items()}
    checkpoint["rng"] = rng_state()


def load_training_state(checkpoint: dict[str, Any], curves: dict[str, list[tuple[int, float]]]) -> None:
    """Undo :func:`save_training_state`: refill ``curves`` in place and restore the random streams."""
    for k, v in checkpoint.get("curves", {}).items():
        curves[k] = [tuple(p) for p in v]
    restore_rng(checkpoint.get("rng"))
