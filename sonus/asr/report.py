"""`python -m sonus.asr.report EXP`: the WER/CER table of an experiment's decodes, and its plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sonus.asr.infer import print_table
from sonus.metrics.wer import ErrorRates


def report(exp: str | Path) -> list[tuple[str, ErrorRates]]:
    exp = Path(exp)
    rows = []
    for name in ("decode_rnnt", "decode_2pass"):
        p = exp / f"{name}.summary.json"
        if not p.is_file():
            continue
        s = json.loads(p.read_text())
        if s["mode"] == "rnnt":
            rows.append(("RNN-T beam (first pass)", ErrorRates(**s["final"])))
        else:
            how = {
                "union": "union of RNN-T and LAS n-best",
                "las_beam": "LAS beam search",
            }.get(s.get("second_pass", "rescore"), "RNN-T + LAS rescoring")
            bonus = f", length bonus {s['length_bonus']:g}" if s.get("length_bonus") else ""
            rows.append((f"two-pass: {how} (w={s['las_weight']:.2f}{bonus})", ErrorRates(**s["final"])))
    if not rows:
        raise SystemExit(f"no decode summaries in {exp}")
    print_table(rows, f"held-out test set, {exp}")
    attention = sorted((exp / "plots").glob("attention_epoch*.png"))
    if attention:
        print(f"plots: {exp / 'plots'}/loss_curve.png and LAS attention per epoch, e.g. {attention[-1]}")
    print(f"per-utterance results: {exp}/decode_rnnt.jsonl, {exp}/decode_2pass.jsonl; TensorBoard: tensorboard --logdir {exp}/tensorboard")
    return rows


if __name__ == "__main__":
    report(sys.argv[1] if len(sys.argv) > 1 else "exp/demo")
