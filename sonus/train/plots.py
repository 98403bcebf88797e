"""PNG plots a person would rather look at than read: attention maps and loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_attention(weights: np.ndarray, path: str | Path, title: str = "", ylabels: list[str] | None = None) -> Path:
    """weights (U, T) -> heat map with output tokens down and encoder frames across."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    U, T = weights.shape
    fig, ax = plt.subplots(figsize=(max(4, T / 8), max(3, U / 4)))
    ax.imshow(weights, aspect="auto", origin="upper", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("encoder frame")
    ax.set_ylabel("output token")
    if ylabels and len(ylabels) == U:
        ax.set_yticks(range(U))
        ax.set_yticklabels(ylabels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "loss") -> Path:
    """curves: name -> [(step, value)] -> one line per name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curves.items():
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, label=name, marker="o" if len(pts) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
