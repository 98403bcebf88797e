"""Streaming RTF: PyTorch (sonus.asr.StreamingDecoder) vs onnxruntime (sonus.export OnnxRecognizer).

    OMP_NUM_THREADS=1 python benchmarks/onnx_rtf.py                   # exp/demo/best.ckpt, 20 LibriSpeech-mini utterances
    OMP_NUM_THREADS=1 python benchmarks/onnx_rtf.py --manifest data/synth/test.jsonl --num 50
    OMP_NUM_THREADS=1 python benchmarks/onnx_rtf.py --strategy modified_beam --las   # two-pass: beam 4 + LAS rescoring
    OMP_NUM_THREADS=1 python benchmarks/onnx_rtf.py --manifest data/synthx/test.jsonl --num 600 --strategy beam --las \
        --lm-text data/synthx/train.jsonl --lm-weight 0.2                         # with the lexicon LM, and WER
    ... --las --union --las-beam 8 --length-bonus 0.5       # the union second pass (LAS beam search too)

The checkpoint is exported to a temporary folder, then every utterance is streamed in
--chunk-ms chunks through both recognizers, one thread each, alternating PyTorch and ORT
utterance by utterance so that load from other processes hits both alike. Timed: the whole
stream from the waveform (front end, encoder, first pass: --strategy greedy, up to --max-symbols
labels a frame, modified_beam, beam --beam-size, or beam, the time-synchronous search with up
to --max-symbols labels a frame; with --las also LAS at the end: the score of
the greedy result, or the rescoring of the n-best with w = --las-weight; with --lm-text the
lexicon LM of those transcripts is fused into the beam search with --lm-weight, on both sides;
with --union the second pass is the union of the n-best and LAS beam search's, --las-beam wide,
each hypothesis scored by the transducer, LAS and the LM, plus --length-bonus a label).
RTF = compute time / audio duration. "Agree" counts utterances whose final best token ids are
identical. With --manifest, WER and CER of each against its texts. Audio is read in place (FLAC, 16 kHz).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch
from rich.console import Console
from rich.table import Table

from sonus.asr import StreamingDecoder
from sonus.asr.decoding import DecodingOptions
from sonus.asr.model import load_checkpoint
from sonus.audio.io import load_audio
from sonus.data.manifest import read_manifest
from sonus.export.onnx import ExportOptions, export_model
from sonus.export.ort_decoder import OnnxRecognizer
from sonus.text.normalize import normalize_text

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "librispeech-mini"
    / "train-clean-5"
)


def audio_files(data: Path, manifest: str | None, num: int) -> tuple[list[Path], list[str] | None]:
    """The first ``num`` utterances of a manifest (their files and texts), or of a folder's FLAC
    files (sorted; no texts)."""
    if manifest:
        utts = read_manifest(manifest)[:num]
        return [Path(u.audio_filepath) for u in utts], [u.text for u in utts]
    files = sorted(data.rglob("*.flac"))[:num]
    if not files:
        raise FileNotFoundError(f"no .flac files under {data}")
    return files, None


def error_rates(refs: list[str], hyps: list[str]) -> str:
    import jiwer

    return f"{100 * jiwer.wer(refs, hyps):.2f} / {100 * jiwer.cer(refs, hyps):.2f}"


def torch_stream(sd: StreamingDecoder, wave: torch.Tensor) -> list[int]:
    """The final best token ids (after LAS rescoring with --las; greedy's one-best stays)."""
    state = sd.initial_state(1)
    for s in range(0, wave.shape[0], sd.chunk_samples):
        _, state = sd.step(wave[None, s : s + sd.chunk_samples], state)
    _, final = sd.finish(state)
    return final[0].best.tokens


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", default="exp/demo/best.ckpt")
    ap.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder of .flac files (read in place)",
    )
    ap.add_argument(
        "--manifest",
        default=None,
        help="read utterances from this manifest instead of --data",
    )
    ap.add_argument("--num", type=int, default=20)
    ap.add_argument("--chunk-ms", type=float, default=160.0)
    ap.add_argument("--strategy", choices=["greedy", "modified_beam", "beam"], default="greedy", help="first pass")
    ap.add_argument("--beam-size", type=int, default=4, help="modified_beam's beam")
    ap.add_argument("--max-symbols", type=int, default=10, help="greedy and beam: labels a frame at most")
    ap.add_argument("--las-weight", type=float, default=0.5, help="w of the LAS rescoring (modified_beam --las)")
    ap.add_argument(
        "--las",
        action="store_true",
        help="LAS at the end (both sides): score the greedy result, rescore the beam's n-best",
    )
    ap.add_argument("--union", action="store_true", help="with --las: the union second pass (decoding.second_pass=union)")
    ap.add_argument("--las-beam", type=int, default=4, help="LAS beam search's beam (--union)")
    ap.add_argument("--length-bonus", type=float, default=0.0, help="score bonus a label in the second pass")
    ap.add_argument("--lm-text", default=None, help="transcripts of a lexicon LM (as decoding.lm.text; beam searches)")
    ap.add_argument("--lm-weight", type=float, default=0.2, help="its weight (with --lm-text)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint)
    opts = DecodingOptions(
        strategy=args.strategy,
        beam_size=args.beam_size,
        max_symbols_per_frame=args.max_symbols,
        second_pass=("union" if args.union else "rescore") if args.las else "none",
        las_weight=args.las_weight,
        length_bonus=args.length_bonus,
        las_beam_size=args.las_beam,
        lm_weight=args.lm_weight if args.lm_text else 0.0,
    )
    lm = None
    if args.lm_text:
        from sonus.asr.infer import load_lexicon

        lm = load_lexicon(args.lm_text, ck.tokenizer, ck.normalize, -20.0, 0.0)
    sd = StreamingDecoder(ck.model, ck.tokenizer, opts, chunk_ms=args.chunk_ms, lm=lm)
    files, texts = audio_files(args.data, args.manifest, args.num)
    waves = [load_audio(f, ck.model.cfg.sample_rate) for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_model(
            ck.model,
            ck.tokenizer,
            tmp,
            ExportOptions(chunk_ms=args.chunk_ms, lm_text=args.lm_text, lm_weight=opts.lm_weight),
            ck.normalize,
            args.checkpoint,
        )
        export_s = time.perf_counter() - t0
        rec = OnnxRecognizer(
            tmp, num_threads=1, max_symbols_per_frame=args.max_symbols, las=args.las,
            strategy=args.strategy, beam_size=args.beam_size, las_weight=args.las_weight, lm_weight=opts.lm_weight,
            length_bonus=args.length_bonus, second_pass="union" if args.union and args.las else "rescore", las_beam_size=args.las_beam,
        )  # fmt: skip
        # warm-up: first-call set-up is not per-utterance cost
        torch_stream(sd, waves[0])
        rec.transcribe(waves[0].numpy(), sd.chunk_samples)
        t_pt = t_ort = 0.0
        agree, tokens, mismatches, texts_pt, texts_ort = 0, 0, [], [], []
        for f, w in zip(files, waves):
            t0 = time.perf_counter()
            want = torch_stream(sd, w)
            t1 = time.perf_counter()
            res = rec.transcribe(w.numpy(), sd.chunk_samples)
            t2 = time.perf_counter()
            got = res.tokens
            t_pt, t_ort = t_pt + t1 - t0, t_ort + t2 - t1
            agree += got == want
            tokens += len(want)
            texts_pt.append(ck.tokenizer.decode(want))
            texts_ort.append(res.text)
            if got != want:
                mismatches.append(f.name)
    audio_s = sum(w.shape[0] for w in waves) / ck.model.cfg.sample_rate
    rtf_pt, rtf_ort = t_pt / audio_s, t_ort / audio_s
    search = {"greedy": "greedy", "modified_beam": f"modified beam {args.beam_size}",
              "beam": f"beam {args.beam_size} (<= {args.max_symbols} labels a frame)"}[args.strategy]  # fmt: skip
    search += f" + LAS (w={args.las_weight:g})" if args.las and args.strategy != "greedy" else " + LAS score" if args.las else ""
    search += f", union with LAS beam {args.las_beam}" if args.las and args.union else ""
    search += f", bonus {args.length_bonus:g} a label" if args.las and args.length_bonus else ""
    search += f" + lexicon LM x{opts.lm_weight:g}" if opts.lm_weight else ""
    refs = [normalize_text(t, **ck.normalize) for t in texts] if texts is not None else None
    title = (
        f"{args.checkpoint}: streaming {search}, {args.chunk_ms:g} ms chunks, 1 thread, {len(waves)} utterances, "
        f"{audio_s:.1f} s of audio, {tokens} tokens (PyTorch); export {export_s:.1f} s"
    )
    table = Table(title=title)
    for col in (
        "system",
        "compute s",
        "RTF",
        "speed-up vs PyTorch",
        "tokens identical",
        *(["WER / CER %"] if refs else []),
    ):
        table.add_column(col, justify="left" if col == "system" else "right")
    table.add_row(
        f"PyTorch {torch.__version__}", f"{t_pt:.2f}", f"{rtf_pt:.4f}", "1.00x", "-", *([error_rates(refs, texts_pt)] if refs else [])
    )
    table.add_row(
        f"onnxruntime {onnxruntime.__version__}",
        f"{t_ort:.2f}",
        f"{rtf_ort:.4f}",
        f"{rtf_pt / rtf_ort:.2f}x",
        f"{agree}/{len(waves)}",
        *([error_rates(refs, texts_ort)] if refs else []),
    )
    Console(width=160).print(table)
    if mismatches:
        print("token mismatch:", ", ".join(mismatches))
    print(
        f"load (os.getloadavg, 1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
