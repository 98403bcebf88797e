"""Decode a manifest with a trained checkpoint: JSON lines per utterance and a WER/CER summary."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from sonus.asr.decoding import (
    Decoder,
    DecodeResult,
    DecodingOptions,
    Lexicon,
    combine,
    count_words,
)
from sonus.asr.model import TwoPassASR, load_checkpoint
from sonus.data.asr_dataset import ASRDataset, collate
from sonus.data.manifest import read_manifest
from sonus.data.sampler import DurationBucketSampler
from sonus.metrics.wer import ErrorRates, error_rates
from sonus.text.normalize import normalize_text
from sonus.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class DecodedSet:
    ids: list[str]
    refs: list[str]
    first: list[DecodeResult]
    final: list[DecodeResult]


@dataclass(frozen=True)
class DecodeSummary:
    mode: str
    utterances: int
    first_pass: ErrorRates
    final: ErrorRates
    las_weight: float | None
    output_path: str
    first_pass_kind: str = "rnnt"  # the head that decoded the first pass: rnnt | ctc
    strategy: str = ""  # its decoding.strategy
    second_pass: str = "none"  # decoding.second_pass
    length_bonus: float = 0.0  # decoding.length_bonus (tuned with tune_length_bonus)
    tuned_dev_wer: float | None = None  # with decoding.tune: the dev WER of the chosen w and length bonus


@torch.no_grad()
def decode_manifest(
    model: TwoPassASR, tok: Tokenizer, manifest: str | Path, opts: DecodingOptions, normalize: dict,
    max_duration: float = 200.0, batch_size: int = 32, skip_bad: bool = False, num_workers: int = 0,
    lm: Lexicon | None = None,
) -> DecodedSet:  # fmt: skip
    """Decode every utterance of ``manifest`` (references are normalised like training text);
    ``lm`` is fused into the first pass with ``opts.lm_weight``."""
    utts = read_manifest(manifest)
    refs = [normalize_text(u.text, **normalize) for u in utts]
    ds = ASRDataset(utts, [[] for _ in utts], refs, model.cfg.sample_rate, skip_bad)
    sampler = DurationBucketSampler([u.duration for u in utts], max(max_duration, max(u.duration for u in utts)), batch_size, shuffle=False)
    dl = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    decoder = Decoder(model, tok, opts, lm)
    device = next(model.parameters()).device
    out = DecodedSet([], [], [], [])
    try:
        from rich.progress import track
    except ImportError:  # pragma: no cover
        track = lambda x, **_: x
    for batch in track(dl, description=f"decoding {Path(manifest).name}", total=len(sampler)):
        if not len(batch):
            continue
        batch = batch.to(device)
        first, final = decoder.decode(batch.wave, batch.wave_lengths)
        out.ids += batch.ids
        out.refs += batch.texts
        out.first += first
        out.final += final
    return out


def load_lexicon(path: str | Path, tok: Tokenizer, normalize: dict, oov_logprob: float, word_bonus: float) -> Lexicon:
    """The lexicon LM of the words in ``path``: a manifest (``.jsonl``: its ``text``) or a text
    file (one sentence a line), normalised like training text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decoding.lm.text: no such file: {path}")
    if path.suffix == ".jsonl":
        texts = [u.text for u in read_manifest(path)]
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    counts = count_words(normalize_text(t, **normalize) for t in texts)
    if not counts:
        raise ValueError(f"decoding.lm.text: {path} has no words")
    lex = Lexicon(counts, tok, oov_logprob, word_bonus)
    log.info("lexicon LM from %s: %d words, %d trie nodes", path, len(counts), lex.num_nodes)
    return lex


def _best(rs: list[DecodeResult]) -> list[str]:
    return [r.best.text if r.nbest else "" for r in rs]


def tune_las_weight(
    ds: DecodedSet, grid: Sequence[float], bonuses: Sequence[float] = (0.0,)
) -> tuple[float, float, dict[tuple[float, float], float]]:
    """Pick w from ``grid`` and the per-label length bonus from ``bonuses`` minimising WER of
    the rescored n-best on a dev set (n-best scored once: the final n-best keeps each
    hypothesis' parts, so it is only re-ranked). Ties go to w nearest 0.5, then the smallest
    bonus. Returns (w, bonus, {(w, bonus): WER})."""
    table = {(w, b): error_rates(ds.refs, _best(combine(ds.final, w, b))).wer for w in grid for b in bonuses}
    w, b = min(table, key=lambda k: (table[k], abs(k[0] - 0.5), abs(k[1])))
    return w, b, table


def write_results(path: str | Path, ds: DecodedSet) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, uid in enumerate(ds.ids):
            r = ds.final[i]
            rec = {
                "id": uid,
                "ref": ds.refs[i],
                "hyp": r.best.text if r.nbest else "",
                "hyp_rnnt": ds.first[i].best.text if ds.first[i].nbest else "",
                "nbest": [
                    {"text": h.text, "score": round(h.score, 4), "rnnt_score": round(h.rnnt_score, 4),
                     "las_score": None if h.las_score is None else round(h.las_score, 4)}
                    | ({} if h.lm_score is None else {"lm_score": round(h.lm_score, 4)})
                    for h in r.nbest
                ],
            }  # fmt: skip
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def print_table(rows: list[tuple[str, ErrorRates]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("system", "WER %", "CER %", "words", "chars"):
        table.add_column(col, justify="right" if col != "system" else "left")
    for name, r in rows:
        table.add_row(name, f"{100 * r.wer:.2f}", f"{100 * r.cer:.2f}", str(r.words), str(r.chars))
    Console().print(table)


def run_decode(mode: str, cfg) -> DecodeSummary:
    """`sonus decode rnnt|two_pass`: decode ``data.test_manifest``, write ``output_path`` and a summary.

    ``rnnt`` is the first pass alone, ``two_pass`` adds the second; the first pass is RNN-T or,
    with ``decoding.strategy=ctc_greedy|ctc_prefix_beam``, CTC (then ``two_pass`` rescoring is
    WeNet's CTC + attention rescoring). Output keys keep the names ``hyp_rnnt``/``rnnt`` for
    the first pass whichever it is; the summary's ``first_pass_kind`` says which."""
    if mode not in ("rnnt", "two_pass"):
        raise ValueError(f"decode mode must be 'rnnt' or 'two_pass', got {mode!r}")
    from sonus.asr.train import decoding_options_from

    torch.set_num_threads(int(cfg.get("num_threads") or torch.get_num_threads()))
    ck = load_checkpoint(cfg.model.checkpoint, map_location=cfg.model.get("device", "cpu"))
    model, tok, norm = ck.model, ck.tokenizer, ck.normalize
    opts = decoding_options_from(cfg.decoding, default_second_pass="rescore" if mode == "two_pass" else "none")
    if mode == "rnnt":
        opts = replace(opts, second_pass="none", beam_size=int(cfg.decoding.beam_size))
    d = cfg.data
    kw: dict[str, Any] = {"max_duration": float(d.max_duration), "batch_size": int(d.batch_size), "skip_bad": bool(d.skip_bad)}
    lm_cfg = cfg.decoding.get("lm") or {}
    if opts.lm_weight:
        if not lm_cfg.get("text"):
            raise ValueError("decoding.lm.weight > 0 needs decoding.lm.text (transcripts to build the lexicon from)")
        kw["lm"] = load_lexicon(lm_cfg.text, tok, norm, float(lm_cfg.get("oov_logprob", -20.0)), float(lm_cfg.get("word_bonus", 0.0)))
    dev_wer = None
    if mode == "two_pass" and cfg.decoding.get("tune") and opts.second_pass in ("rescore", "union"):
        if not d.get("dev_manifest"):
            raise ValueError("decoding.tune=true needs data.dev_manifest (w is chosen on dev, never on test)")
        dev = decode_manifest(model, tok, d.dev_manifest, opts, norm, **kw)
        grid = [round(0.1 * i, 2) for i in range(11)]
        bonuses = [float(b) for b in cfg.decoding.get("tune_length_bonus") or [opts.length_bonus]]
        w, bonus, table = tune_las_weight(dev, grid, bonuses)
        log.info("tuned on %s: WER %% by (w, length bonus) %s -> w=%.2f, bonus=%g", d.dev_manifest,
                 {k: round(100 * v, 2) for k, v in table.items()}, w, bonus)  # fmt: skip
        opts, dev_wer = replace(opts, las_weight=w, length_bonus=bonus), table[(w, bonus)]
    ds = decode_manifest(model, tok, d.test_manifest, opts, norm, **kw)
    write_results(cfg.output_path, ds)
    first, final = error_rates(ds.refs, _best(ds.first)), error_rates(ds.refs, _best(ds.final))
    las_w = opts.las_weight if mode == "two_pass" else None
    summary = DecodeSummary(
        mode, len(ds.ids), first, final, las_w, str(cfg.output_path), opts.first_pass_kind, opts.strategy, opts.second_pass,
        opts.length_bonus if mode == "two_pass" else 0.0, dev_wer,
    )
    beam = "" if opts.strategy.endswith("greedy") else f", beam {opts.beam_size}"
    lm = f", lexicon LM x{opts.lm_weight:g}" if opts.lm_weight else ""
    rows = [(f"{opts.first_pass_kind} ({opts.strategy}{beam}{lm})", first)]
    if mode == "two_pass":
        bonus = f", length bonus {opts.length_bonus:g}" if opts.length_bonus else ""
        rows.append((f"two-pass ({opts.second_pass}, w={opts.las_weight:.2f}{bonus})", final))
    print_table(rows, f"{d.test_manifest}: {len(ds.ids)} utterances")
    summary_path = Path(str(cfg.output_path)).with_suffix(".summary.json")
    summary_path.write_text(json.dumps(_summary_dict(summary), indent=2) + "\n")
    return summary


def _summary_dict(s: DecodeSummary) -> dict:
    def er(r: ErrorRates) -> dict:
        return {"wer": r.wer, "cer": r.cer, "words": r.words, "chars": r.chars}

    return {
        "mode": s.mode, "utterances": s.utterances, "first_pass_kind": s.first_pass_kind, "strategy": s.strategy,
        "rnnt": er(s.first_pass), "final": er(s.final), "las_weight": s.las_weight, "output_path": s.output_path,
        "second_pass": s.second_pass, "length_bonus": s.length_bonus,
        **({"tuned_dev_wer": s.tuned_dev_wer} if s.tuned_dev_wer is not None else {}),
    }  # fmt: skip
