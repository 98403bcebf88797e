"""Model export: ``sonus export checkpoint=CKPT format=onnx output_dir=DIR``.

:mod:`sonus.export.onnx` writes the graphs (needs PyTorch); :mod:`sonus.export.ort_decoder`
runs them with onnxruntime and numpy only. This module imports neither until it is used, so
``from sonus.export.ort_decoder import OnnxRecognizer`` stays free of torch.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("onnx",)


def _required(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    if key not in cfg or OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
        raise ValueError(
            f"export: {key}=... is required (sonus export checkpoint=CKPT format=onnx output_dir=DIR)"
        )
    return cfg[key]


def run_export(cfg: Any) -> Any:
    """Export the checkpoint ``cfg.checkpoint`` in ``cfg.format`` into ``cfg.output_dir``
    (a DictConfig composed from ``configs/export.yaml``) -> :class:`~sonus.export.onnx.ExportResult`."""
    fmt = _required(cfg, "format")
    if fmt not in FORMATS:
        raise ValueError(f"export: format must be one of {FORMATS}, got format={fmt!r}")
    checkpoint, output_dir = _required(cfg, "checkpoint"), _required(cfg, "output_dir")
    from sonus.export.onnx import ExportOptions, export_onnx

    # las_weight/length_bonus (``+las_weight=W``): the rescoring defaults written to metadata.json
    optional = {k: float(cfg[k]) for k in ("las_weight", "length_bonus") if cfg.get(k) is not None}
    lm = cfg.get("lm") or {}  # lm.text: the lexicon LM written beside the graphs, lm.weight its default weight
    opts = ExportOptions(
        opset=int(cfg.get("opset", 17)), chunk_ms=float(cfg.get("chunk_ms", 160.0)), **optional,
        lm_text=lm.get("text") or None, lm_weight=float(lm.get("weight") or 0.0),
        lm_oov_logprob=float(lm.get("oov_logprob", -20.0)), lm_word_bonus=float(lm.get("word_bonus", 0.0)),
    )  # fmt: skip
    res = export_onnx(checkpoint, output_dir, opts)
    for path in res.files:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return res


__all__ = ["FORMATS", "run_export"]
