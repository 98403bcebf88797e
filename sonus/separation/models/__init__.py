"""Separation models, built from config through one registry.

Every model is a plain ``nn.Module`` with a frozen dataclass config stored as ``model.cfg``
and ``forward(mix) -> estimates``:

    mix:       (B, T) waveform mixture, any T (the model pads inside and crops back)
    estimates: (B, C, T) one waveform per source, C = ``cfg.n_src``

A checkpoint stores ``(name, dataclasses.asdict(model.cfg))`` next to the weights;
:func:`build_model` rebuilds the same model from them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

# name -> (module, config class, model class); imported on first use so that building one
# model does not import the others (SPMamba may pull in mamba-ssm's CUDA kernels).
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "convtasnet": ("sonus.separation.models.convtasnet", "ConvTasNetConfig", "ConvTasNet"),
    "dprnn": ("sonus.separation.models.dprnn", "DPRNNConfig", "DPRNN"),
    "sepformer": ("sonus.separation.models.sepformer", "SepFormerConfig", "SepFormer"),
    "spmamba": ("sonus.separation.models.spmamba", "SPMambaConfig", "SPMamba"),
}

MODEL_NAMES = tuple(_REGISTRY)


def model_classes(name: str) -> tuple[type, type[nn.Module]]:
    """(config dataclass, model class) registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown separation model {name!r}; choose one of {', '.join(_REGISTRY)}")
    module, cfg_name, model_name = _REGISTRY[name]
    mod = importlib.import_module(module)
    return getattr(mod, cfg_name), getattr(mod, model_name)


def build_model(name: str, params: Mapping[str, Any] | None = None) -> nn.Module:
    """The model ``name`` with its config's defaults overridden by ``params``.

    Raises:
        ValueError: unknown model name, or a key its config does not have (named).
    """
    cfg_cls, model_cls = model_classes(name)
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"model {name!r}: unknown config keys {unknown}; known: {sorted(fields)}")
    return model_cls(cfg_cls(**params))


def model_spec(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(registry name, config as a dict) of a built model: what a checkpoint stores."""
    for name, (module, cfg_name, model_name) in _REGISTRY.items():
        if type(model).__name__ == model_name and type(model).__module__ == module:
            return name, dataclasses.asdict(model.cfg)
    raise ValueError(f"{type(model).__qualname__} is not a registered separation model")
