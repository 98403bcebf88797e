"""Separation at inference: load a checkpoint, separate files, score a test set.

``sonus separate checkpoint=... input=FILE_OR_DIR output_dir=DIR`` and
``sonus evaluate separation checkpoint=... output=results.csv`` are thin wrappers over
:func:`separate_files` and :func:`evaluate`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sonus.audio.io import load_audio, save_audio
from sonus.data.separation import SeparationExample
from sonus.metrics.signal import bss_sdr, pesq_score, si_sdr, stoi_score
from sonus.separation.loss import pit, reorder, scaled_to, window_permutations
from sonus.separation.models import build_model
from sonus.train.checkpoint import read_checkpoint

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass
class Separator:
    """A trained separation model (eval mode) and what it was trained with."""

    model: nn.Module
    sample_rate: int
    name: str
    data: dict[str, Any] = field(default_factory=dict)  # the training data config, for `evaluate`
    chunk_seconds: float | None = None  # separate longer inputs in overlapping chunks (see stitch_chunks)
    overlap_seconds: float = 1.0

    @torch.no_grad()
    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        """(T,) or (B, T) mixture at ``sample_rate`` -> (C, T) or (B, C, T) estimates."""
        one = mix.dim() == 1
        p = next(self.model.parameters())
        x = mix.to(p.device, p.dtype).unsqueeze(0) if one else mix.to(p.device, p.dtype)
        if self.chunk_seconds:
            sr = self.sample_rate
            est = stitch_chunks(self.model, x, round(self.chunk_seconds * sr), round(self.overlap_seconds * sr))
        else:
            est = self.model(x)
        return est[0] if one else est


def stitch_chunks(model: nn.Module, mix: torch.Tensor, chunk: int, overlap: int) -> torch.Tensor:
    """Separate (B, T) in chunks of ``chunk`` samples that overlap by ``overlap``: (B, C, T).

    A model trained on short crops keeps its sources in a consistent order only over spans
    like those; over a long recording the order can flip. As continuous speech separation
    does (Yoshioka et al. 2018; Chen et al. 2020), each chunk's outputs are put in the order
    that best matches what the chunks before it gave over the overlap (PIT: the permutation
    with the highest summed SI-SDR), then cross-faded in linearly. Inputs no longer than
    ``chunk`` are separated in one pass.
    """
    if not 0 < overlap < chunk:
        raise ValueError(f"stitch_chunks: need 0 < overlap < chunk, got overlap {overlap}, chunk {chunk}")
    total = mix.shape[-1]
    if total <= chunk:
        return model(mix)
    hop = chunk - overlap
    starts = list(range(0, total - chunk, hop)) + [total - chunk]  # the last chunk ends at the end
    out = weight = None
    end_prev = 0
    for i, s in enumerate(starts):
        est = model(mix[:, s : s + chunk]).float()  # (B, C, chunk)
        if out is None:
            out = est.new_zeros(*est.shape[:2], total)
            weight = est.new_zeros(total)
        ramp_in = end_prev - s  # samples shared with what is already written
        if ramp_in > 0:
            so_far = out[..., s:end_prev] / weight[s:end_prev]
            est = reorder(est, pit(est[..., :ramp_in], so_far).perm)
        w = est.new_ones(chunk)
        if ramp_in > 0:
            w[:ramp_in] = (torch.arange(ramp_in, dtype=w.dtype, device=w.device) + 0.5) / ramp_in
        if i < len(starts) - 1:
            w[-overlap:] = torch.minimum(w[-overlap:], (torch.arange(overlap, 0, -1, dtype=w.dtype, device=w.device) - 0.5) / overlap)
        out[..., s : s + chunk] += est * w
        weight[s : s + chunk] += w
        end_prev = s + chunk
    return out / weight


def save_separator(model: nn.Module, path: str | os.PathLike, sample_rate: int, data: dict[str, Any] | None = None) -> None:
    """Write a checkpoint :func:`load_separator` reads (the layout training writes), atomically."""
    from sonus.separation.models import model_spec

    name, params = model_spec(model)
    state = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "sonus": {"task": "separation", "model": name, "params": params, "sample_rate": int(sample_rate), "data": dict(data or {})},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_separator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Separator:
    """Rebuild the model of a training checkpoint (Lightning ``.ckpt``); tensors only (``weights_only=True``)."""
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt.get("sonus", {})
    if meta.get("task") != "separation":
        raise RuntimeError(f"{path}: not a sonus separation checkpoint (task {meta.get('task')!r})")
    model = build_model(meta["model"], meta["params"])
    sd = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return Separator(model, int(meta["sample_rate"]), meta["model"], dict(meta.get("data", {})))


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
        return files
    raise FileNotFoundError(f"input not found: {path}")


def separate_files(sep: Separator, input: str | os.PathLike, output_dir: str | os.PathLike) -> list[Path]:
    """Separate each audio file of ``input`` (a file or a folder, searched recursively).

    Writes ``output_dir/<relative name>_s{k}.wav`` (k = 1..C) at the model's sample rate
    (inputs at other rates are resampled on load; the output is peak-limited to avoid
    clipping). Returns the written paths.
    """
    src, out = Path(input), Path(output_dir)
    written: list[Path] = []
    for f in tqdm(_inputs(src), desc="separating", unit="file"):
        wave = load_audio(f, sep.sample_rate)
        est = sep(wave).float().cpu()  # (C, T)
        peak = float(est.abs().max())
        if peak > 0.99:
            est = est * (0.99 / peak)
        rel = f.relative_to(src).with_suffix("") if src.is_dir() else Path(f.stem)
        for k in range(est.shape[0]):
            dest = out / f"{rel}_s{k + 1}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            save_audio(dest, est[k], sep.sample_rate)
            written.append(dest)
    return written


@dataclass(frozen=True)
class MetricOptions:
    sdr: bool = True
    pesq: bool = True
    stoi: bool = True
    swaps: bool = False  # where the model swaps its sources within a mixture (see swap_metrics)
    swap_window: float = 0.5  # seconds

    def __post_init__(self) -> None:
        if self.swap_window <= 0:
            raise ValueError(f"metrics.swap_window must be positive (seconds), got {self.swap_window}")


GROUPS = ("variant", "pair")


def speaker_pair(mixture_id: str) -> str:
    """The speakers of a LibriMix mixture id, ``SPK-CHAPTER-UTT_SPK-CHAPTER-UTT[_...]``: sorted,
    joined by "+" (``"103-1240-0003_1235-135887-0017"`` -> ``"103+1235"``)."""
    utts = mixture_id.split("_")
    if len(utts) < 2 or any(len(u.split("-")) != 3 for u in utts):
        raise ValueError(f"group_by=pair: mixture {mixture_id!r} is not named as LibriMix names them "
                         "(SPK-CHAPTER-UTT_SPK-CHAPTER-UTT); group by variant instead")  # fmt: skip
    return "+".join(sorted(u.split("-")[0] for u in utts))


def swap_metrics(est: torch.Tensor, ref: torch.Tensor, mix_si_sdr: float, window: int) -> dict[str, float]:
    """Speaker swaps of (C, T) estimates already in the order of the (C, T) references.

    ``swapped``: the share of the windows where every source speaks that come out in another
    order than the whole mixture's (NaN when there are none; see :func:`window_permutations`);
    ``si_sdri_window_pit``: the SI-SDRi the estimates would get with each window in its own
    best order, i.e. about what fixing every swap would give (``mix_si_sdr``: the mixture's
    SI-SDR, the baseline).
    """
    perms, active = window_permutations(est, ref, window)
    swapped = (perms != torch.arange(ref.shape[0])).any(-1)
    scaled = scaled_to(est, ref)  # so that windows moved between outputs keep their reference's level
    fixed = torch.cat([e[p] for e, p in zip(scaled.split(window, dim=-1), perms)], dim=-1)
    return {
        "swapped": float(swapped[active].float().mean()) if bool(active.any()) else math.nan,
        "si_sdri_window_pit": float(si_sdr(fixed, ref).mean()) - mix_si_sdr,
    }


def score_example(sep: Separator, ex: SeparationExample, metrics: MetricOptions) -> dict[str, float | str]:
    """One CSV row: SI-SDR, SI-SDRi, SDR, SDRi, PESQ, STOI (means over sources, after PIT)."""
    mix, ref = ex.mix, ex.sources  # (T,), (C, T)
    est = sep(mix).float().cpu()
    perm = pit(est.unsqueeze(0), ref.unsqueeze(0)).perm
    est = reorder(est.unsqueeze(0), perm)[0]  # (C, T) in reference order
    mix_c = mix.unsqueeze(0).expand_as(ref)
    row: dict[str, float | str] = {"id": ex.id, "variant": ex.variant or "all"}
    mix_si_sdr = float(si_sdr(mix_c, ref).mean())
    row["si_sdr"] = float(si_sdr(est, ref).mean())
    row["si_sdri"] = row["si_sdr"] - mix_si_sdr
    e, r, m = est.numpy(), ref.numpy(), mix_c.numpy()
    if metrics.sdr:
        sdr = float(np.nanmean(bss_sdr(e, r)))
        row["sdr"], row["sdri"] = sdr, sdr - float(np.nanmean(bss_sdr(m, r)))
    sr = sep.sample_rate
    if metrics.pesq:
        row["pesq"] = float(np.nanmean([pesq_score(e[c], r[c], sr) for c in range(len(r))]))
    if metrics.stoi:
        row["stoi"] = float(np.mean([stoi_score(e[c], r[c], sr) for c in range(len(r))]))
    if metrics.swaps:
        row.update(swap_metrics(est, ref, mix_si_sdr, round(metrics.swap_window * sr)))
    return row


def summarize(rows: list[dict[str, float | str]], by: str = "variant") -> dict[str, dict[str, float]]:
    """Mean of each metric per group (the rows' ``by`` column: ``variant`` or ``pair``, in sorted
    order) and over all rows ("overall"); NaNs (e.g. PESQ of silence) skipped."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: str(r[by])):
        groups[str(r[by])].append(r)
    groups["overall"] = rows
    keys = [k for k in rows[0] if k not in ("id", *GROUPS)] if rows else []
    out = {}
    for g, rs in groups.items():
        vals = {k: [float(r[k]) for r in rs if not math.isnan(float(r[k]))] for k in keys}
        out[g] = {k: (sum(v) / len(v) if v else math.nan) for k, v in vals.items()} | {"n": float(len(rs))}
    return out


def evaluate(sep: Separator, examples, metrics: MetricOptions, output: str | os.PathLike, max_items: int | None = None,
             group_by: str = "variant") -> dict[str, dict[str, float]]:  # fmt: skip
    """Score every example (an iterable of :class:`SeparationExample`), write the CSV and a summary.

    ``output`` gets a row per example; ``<output stem>_summary.csv`` one row per group and
    "overall": per variant, or with ``group_by="pair"`` per speaker pair (LibriMix mixture
    ids, see :func:`speaker_pair`; the rows get a ``pair`` column). Returns the summary.
    """
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {GROUPS}, got {group_by!r}")
    rows = []
    n = len(examples) if hasattr(examples, "__len__") else None
    total = min(n, max_items) if (n is not None and max_items) else (max_items or n)
    for i, ex in enumerate(tqdm(examples, total=total, desc="evaluating", unit="mix")):
        if max_items is not None and i >= max_items:
            break
        row = score_example(sep, ex, metrics)
        if group_by == "pair":  # after the variant, before the metrics
            row = {"id": row["id"], "variant": row["variant"], "pair": speaker_pair(ex.id)} | row
        rows.append(row)
    if not rows:
        raise ValueError("evaluate: the test set is empty")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows, group_by)
    with open(out.with_name(out.stem + "_summary.csv"), "w", newline="") as f:
        keys = list(next(iter(summary.values())))
        w = csv.writer(f)
        w.writerow([group_by, *keys])
        for g, vals in summary.items():
            w.writerow([g, *(f"{vals[k]:.4f}" for k in keys)])
    return summary


def print_summary(summary: dict[str, dict[str, float]], title: str = "separation", group_by: str = "variant") -> None:
    from rich.console import Console
    from rich.table import Table

    keys = list(next(iter(summary.values())))
    table = Table(title=title)
    table.add_column(group_by)
    for k in keys:
        table.add_column(k, justify="right")
    for g, vals in summary.items():
        table.add_row(g, *(f"{int(vals[k])}" if k == "n" else f"{vals[k]:.2f}" for k in keys))
    Console().print(table)


def _chunking(sep: Separator, cfg) -> None:
    """``chunk_seconds=S [overlap_seconds=O]`` on the command line: separate in stitched chunks."""
    if cfg.get("chunk_seconds"):
        sep.chunk_seconds = float(cfg.chunk_seconds)
        sep.overlap_seconds = float(cfg.get("overlap_seconds") or sep.overlap_seconds)


def run_evaluate(cfg) -> dict[str, dict[str, float]]:
    """`sonus evaluate separation`: score the checkpoint on its test set, write ``cfg.output``."""
    from sonus.separation.config import build_dataset

    sep = load_separator(cfg.checkpoint)
    _chunking(sep, cfg)
    data = dict(sep.data)
    data.update({k: v for k, v in dict(cfg.get("data") or {}).items() if v is not None})
    if not data.get("kind"):
        raise ValueError(f"{cfg.checkpoint}: the checkpoint stores no data config; give data.kind=polsess|librimix and data.root=DIR")
    ds = build_dataset(data, cfg.get("split", "test"), variant=cfg.get("variant"))
    m = cfg.get("metrics") or {}
    metrics = MetricOptions(sdr=bool(m.get("sdr", True)), pesq=bool(m.get("pesq", True)), stoi=bool(m.get("stoi", True)),
                            swaps=bool(m.get("swaps", False)), swap_window=float(m.get("swap_window", 0.5)))  # fmt: skip
    group_by = cfg.get("group_by") or "variant"
    summary = evaluate(sep, ds, metrics, cfg.output, cfg.get("max_items"), group_by)
    print_summary(summary, title=f"{sep.name}: {cfg.checkpoint}", group_by=group_by)
    print(f"per-mixture rows: {cfg.output}; summary: {Path(cfg.output).with_name(Path(cfg.output).stem + '_summary.csv')}")
    return summary


def run_separate(cfg) -> list[Path]:
    """`sonus separate`: write the separated sources of ``cfg.input`` to ``cfg.output_dir``."""
    sep = load_separator(cfg.checkpoint)
    _chunking(sep, cfg)
    written = separate_files(sep, cfg.input, cfg.output_dir)
    print(f"{len(written)} files written to {cfg.output_dir}")
    return written
