"""ASR systems side by side at an equal training budget: WER/CER on a held-out test set.

    python benchmarks/asr_compare.py --corpus fsdd --minutes 2          # ../shared/data/fsdd, speaker theo held out
    python benchmarks/asr_compare.py --corpus synth --minutes 10        # data/synth (make demo prepares it)
    python benchmarks/asr_compare.py --corpus fsdd --systems ctc,lstm_rnnt
    python benchmarks/asr_compare.py --corpus fsdd --systems conformer_rnnt model.dropout=0   # extra overrides, every system

Systems, all from the corpus' experiment config (`fsdd_digits` or `demo`) with one change each:
    lstm_rnnt       the unidirectional LSTM encoder, RNN-T (no LAS), with an auxiliary CTC loss
                    on the encoder in training (weight 0.3; decoded by the transducer alone)
    conformer_rnnt  the chunk-wise streaming Conformer encoder, the same RNN-T + auxiliary CTC
    ctc             the LSTM encoder with a CTC head only (no predictor, joiner or LAS)
    conformer_ctc   the Conformer encoder of conformer_rnnt with a CTC head only
    two_pass        the experiment as it is (fsdd_digits: LSTM; demo: Conformer), RNN-T + LAS, LAS rescoring

Each trains for --minutes (``training.time_budget_minutes``; ``max_time`` a minute later as a
hard stop) in its own process, then decodes the test set (beam 4; CTC: prefix beam 4). The
issue 4 target, from the brief: RNN-T WER <= 0.7 x CTC WER at equal budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFORMER = ["model.encoder=conformer", "model.conformer.d_model=144", "model.conformer.layers=6", "model.conformer.subsampling=stack"]
CTC_ONLY = ["model.loss_weights.rnnt=0", "model.loss_weights.ctc=1", "model.las.enabled=false", "model.loss_weights.las=0",
            "decoding.strategy=ctc_greedy"]  # fmt: skip
# The transducers train with an auxiliary CTC loss on the encoder (the hybrid loss): on the synthetic
# corpus the LSTM transducer alone did not align within 10 minutes (test WER 99.9%); with it, 38.9% and 43.3%.
TRANSDUCER = ["model.las.enabled=false", "model.loss_weights.las=0", "model.loss_weights.ctc=0.3"]
SYSTEMS = {
    "lstm_rnnt": ["model.encoder=lstm", *TRANSDUCER],
    "conformer_rnnt": [*CONFORMER, *TRANSDUCER],
    "ctc": ["model.encoder=lstm", *CTC_ONLY],
    "conformer_ctc": [*CONFORMER, *CTC_ONLY],
    "two_pass": [],
}  # fmt: skip
RATIOS = (("lstm_rnnt", "ctc"), ("conformer_rnnt", "conformer_ctc"))  # each transducer against CTC on its own encoder
EXPERIMENT = {"fsdd": "fsdd_digits", "synth": "demo"}


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {rc}); see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=sorted(EXPERIMENT), default="fsdd")
    ap.add_argument("--data", default=None, help="prepared corpus folder (default: data/synth, or a fresh FSDD split)")
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget per system")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--out", default=None, help="experiment folders (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides added to every system's training command")
    a = ap.parse_args()
    systems = [s for s in a.systems.split(",") if s]
    if bad := set(systems) - set(SYSTEMS):
        ap.error(f"unknown systems {sorted(bad)}; choose from {sorted(SYSTEMS)}")
    out = Path(a.out or tempfile.mkdtemp(prefix="asr_compare_"))
    out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) if a.data else None
    if data is None and a.corpus == "fsdd":
        from sonus.data.recipes.fsdd import prepare_fsdd

        data = out / "fsdd"
        prepare_fsdd(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd", data, test_speakers=("theo",))
    data = data or Path("data/synth")
    sonus = str(Path(sys.executable).parent / "sonus")
    budget = [f"training.time_budget_minutes={a.minutes}", f"training.max_time=00:00:{int(a.minutes) + 1:02d}:00",
              "training.num_epochs=1000", "wandb.enabled=false", "training.progress_bar=tqdm"]  # fmt: skip
    rows = []
    for name in systems:
        exp = out / name
        print(f"{name}: training {a.minutes:g} min ...", file=sys.stderr, flush=True)
        _run([sonus, "train", f"experiment={EXPERIMENT[a.corpus]}", f"data.root={data}", f"training.output_dir={exp}",
              *budget, *SYSTEMS[name], *a.overrides], exp.with_suffix(".train.log"))  # fmt: skip
        ctc = name.endswith("ctc")
        mode = "two_pass" if name == "two_pass" else "rnnt"
        dec = [sonus, "decode", mode, f"model.checkpoint={exp / 'best.ckpt'}", f"data.test_manifest={data / 'test.jsonl'}",
               f"output_path={exp / 'decode.jsonl'}", "decoding.beam_size=4"]  # fmt: skip
        if ctc:
            dec.append("decoding.strategy=ctc_prefix_beam")
        if mode == "two_pass":
            dec += [f"data.dev_manifest={data / 'dev.jsonl'}", "decoding.tune=true"]
        _run(dec, exp.with_suffix(".decode.log"))
        summary = json.loads((exp / "decode.jsonl").with_suffix(".summary.json").read_text())
        rows.append((name, summary))
        print(f"  {name}: {summary}", file=sys.stderr, flush=True)

    print(f"\n{a.corpus}, {a.minutes:g} training minutes per system, test set {data / 'test.jsonl'}")
    print("| system | WER % | CER % |")
    print("|---|---|---|")
    wer = {}
    for name, s in rows:
        r = s["final"] if name == "two_pass" else s["rnnt"]  # "rnnt": the first pass, whichever kind
        wer[name] = r["wer"]
        print(f"| {name} | {100 * r['wer']:.1f} | {100 * r['cer']:.1f} |")
    for name, base in RATIOS:
        if name in wer and wer.get(base, 0.0) > 0:
            ratio = wer[name] / wer[base]
            print(f"{name} WER / {base} WER = {ratio:.2f} (target <= 0.7: {'met' if ratio <= 0.7 else 'not met'})")


if __name__ == "__main__":
    main()
