"""PNG plots a person would rather look at than read: attention maps, loss curves, spectrograms."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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


def plot_spectrograms(waves: dict[str, np.ndarray], sample_rate: int, path: str | Path, title: str = "", n_fft: int = 512) -> Path:
    """waves: name -> (T,) waveform -> one log-magnitude spectrogram per row, on a shared colour scale."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_fft = min(n_fft, max(16, 2 ** int(np.log2(max(16, min(len(w) for w in waves.values()))))))
    specs = {}
    for name, w in waves.items():
        x = torch.as_tensor(np.asarray(w, np.float32))
        mag = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
        specs[name] = 20 * torch.log10(mag + 1e-5).numpy()  # (F, frames)
    top = max(s.max() for s in specs.values())
    fig, axes = plt.subplots(len(specs), 1, figsize=(8, 1.6 * len(specs) + 0.6), sharex=True, squeeze=False)
    for ax, (name, s) in zip(axes[:, 0], specs.items()):
        seconds = s.shape[1] * (n_fft // 4) / sample_rate
        ax.imshow(s, aspect="auto", origin="lower", cmap="magma", vmin=top - 80, vmax=top, extent=(0, seconds, 0, sample_rate / 2000))
        ax.set_ylabel(f"{name}\nkHz", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
