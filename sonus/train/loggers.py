"""TensorBoard and Weights & Biases loggers from config.

W&B runs offline unless the user configured a key (WANDB_API_KEY or ``wandb.mode=online``),
so training never blocks on the network; ``wandb sync`` uploads later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger


class FinishingWandbLogger(WandbLogger):
    """Lightning's W&B logger, finishing its run when training ends. Lightning leaves the run open,
    so in one process (``sonus sweep``'s trials, the Python API) the next training would log into
    it, and an offline run's records would stay unwritten until the process exits."""

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def build_loggers(cfg: Any, output_dir: str | Path) -> list[Logger]:
    """cfg has ``tensorboard.enabled`` and ``wandb.{enabled, project, entity, run_name, mode}``."""
    output_dir = Path(output_dir)
    loggers: list[Logger] = []
    if cfg.tensorboard.enabled:
        loggers.append(TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version=""))
    if cfg.wandb.enabled:
        mode = cfg.wandb.get("mode") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            FinishingWandbLogger(
                project=cfg.wandb.project,
                entity=cfg.wandb.get("entity"),
                name=cfg.wandb.get("run_name"),
                save_dir=str(output_dir),
                offline=mode != "online",
            )
        )
    return loggers


def log_image(loggers: list[Logger], key: str, path: str | Path, step: int) -> None:
    """Send a PNG to every logger that takes images."""
    import numpy as np
    from PIL import Image

    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            img = np.asarray(Image.open(path).convert("RGB"))
            lg.experiment.add_image(key, img, step, dataformats="HWC")
        elif isinstance(lg, WandbLogger):
            import wandb

            lg.experiment.log({key: wandb.Image(str(path)), "trainer/global_step": step})
