"""Streaming greedy recognition with the exported graphs: onnxruntime and numpy only, no torch.

Reads a folder written by :func:`sonus.export.onnx.export_onnx` and mirrors
:class:`~sonus.asr.streaming.StreamingDecoder` with ``strategy="greedy"``::

    rec = OnnxRecognizer("exported/")
    stream = rec.start()
    for chunk in chunks:                     # (S,) float32 samples at rec.sample_rate, any length
        partial = rec.accept(stream, chunk)  # best hypothesis so far
    result = rec.finish(stream)              # tokens, text, RNN-T score, LAS score (with LAS)

The stream keeps what PyTorch's keeps: the audio the next frames still need, the normalised
frames that do not fill a reduction group yet, the encoder's (h, c), the predictor's state and
output, and (for LAS) the encoder frames. The greedy search is label-looping over a whole chunk
(``sonus.asr.decoding.greedy``): one joiner call scores every remaining frame of the chunk
against the current predictor output, the stream jumps to the first non-blank frame, emits,
advances the predictor; at most ``max_symbols_per_frame`` labels a frame.

Shapes: S samples, n feature frames, F mel bins, m encoder frames, H encoder width, V vocabulary,
N hypotheses, T encoder frames of an utterance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


@dataclass
class OnnxResult:
    """The best hypothesis of one stream."""

    tokens: list[int]
    text: str
    score: float  # RNN-T log-probability of the greedy path
    las_score: float | None = (
        None  # LAS teacher-forced log P(tokens, <eos>); None without LAS or mid-stream
    )


@dataclass
class OnnxStream:
    """What one stream carries from one chunk to the next."""

    audio: np.ndarray  # (context + leftover,) samples later frames still need
    # (<r, F) normalised frames waiting to complete a reduction group
    pending: np.ndarray
    enc_state: list[np.ndarray]  # h, c: (layers, 1, H)
    pred_state: list[np.ndarray]  # h[, c]: (layers, 1, Hp)
    pred: np.ndarray  # (1, Hp) predictor output after the last label
    tokens: list[int] = field(default_factory=list)
    score: float = 0.0
    enc: list[np.ndarray] = field(default_factory=list)  # (m, H) pieces, kept for LAS


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """``folder/metadata.json``, checked to be a sonus ONNX export."""
    path = Path(folder) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"not an exported model folder: {path} is missing (run `sonus export ... format=onnx output_dir={folder}`)"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != "sonus-onnx" or meta.get("format_version") != 1:
        raise ValueError(
            f"{path}: not a sonus ONNX export of format version 1 (format={meta.get('format')!r}, version={meta.get('format_version')!r})"
        )
    return meta


class TokenDecoder:
    """Token ids -> text as :mod:`sonus.text.tokenizer` decodes them, without torch: blank, unk and
    eos dropped; characters at id - 3, SentencePiece pieces at id - 1."""

    def __init__(self, folder: Path, entry: dict[str, Any]) -> None:
        data = (folder / entry["file"]).read_bytes()
        self.kind, self.shift = entry["kind"], int(entry["id_shift"])
        if self.kind == "char":
            self.chars = data.decode("utf-8").split("\n")
            self.size = len(self.chars)
        elif self.kind == "sentencepiece":
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_proto=data)
            self.size = self.sp.get_piece_size()
        else:
            raise ValueError(
                f"{folder / 'metadata.json'}: unknown tokenizer kind {self.kind!r}"
            )

    def __call__(self, ids: list[int]) -> str:
        keep = [i - self.shift for i in ids if i >= 3 and i - self.shift < self.size]
        return (
            "".join(self.chars[i] for i in keep)
            if self.kind == "char"
            else self.sp.decode(keep)
        )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class OnnxRecognizer:
    """Streaming greedy RNN-T recognition (plus LAS scoring of the result) from an export folder.

    ``num_threads``: onnxruntime intra-op threads of every graph; ``max_symbols_per_frame`` as
    in :class:`~sonus.asr.decoding.DecodingOptions`; ``las``: score the final hypothesis with LAS
    (when the export has it; keeps the encoder frames of the stream)."""

    def __init__(
        self,
        folder: str | Path,
        num_threads: int = 1,
        max_symbols_per_frame: int = 10,
        las: bool = True,
    ) -> None:
        if max_symbols_per_frame < 1:
            raise ValueError(
                f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame}"
            )
        self.folder = Path(folder)
        self.meta = meta = read_metadata(self.folder)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = num_threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        names = ["frontend", "encoder", "predictor", "joiner"] + (
            ["las_listen", "las_step"] if las and meta["las"] else []
        )
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name in names:
            path = self.folder / meta["graphs"][name]["file"]
            if not path.is_file():
                raise FileNotFoundError(f"graph {name!r} missing: {path}")
            self.sessions[name] = ort.InferenceSession(
                str(path), so, providers=["CPUExecutionProvider"]
            )
        self.decode_text = TokenDecoder(self.folder, meta["tokenizer"])
        fe = meta["frontend"]
        self.sample_rate, self.hop, self.context = (
            meta["sample_rate"],
            fe["hop_length"],
            fe["context_samples"],
        )
        self.n_mels, self.r = fe["n_mels"], meta["encoder"]["reduction"]
        self.chunk_samples, self.blank, self.eos = (
            meta["chunk_samples"],
            meta["blank_id"],
            meta["eos_id"],
        )
        self.max_symbols = max_symbols_per_frame
        self.pred_names = list(meta["state"]["predictor"])  # h_in[, c_in]
        self.has_las = "las_step" in self.sessions

    def _zeros(self, shape: list[int | str]) -> np.ndarray:
        # symbolic dims: one stream
        return np.zeros(
            [1 if isinstance(d, str) else d for d in shape], dtype=np.float32
        )

    def _predict(
        self, token: int, state: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One predictor step: token -> output (1, Hp), new state."""
        feed = {"tokens": np.array([token], dtype=np.int64)} | dict(
            zip(self.pred_names, state)
        )
        out, *new = self.sessions["predictor"].run(None, feed)
        return out, new

    def start(self) -> OnnxStream:
        """A new stream: zero history, the predictor primed with blank (start of sequence)."""
        st = self.meta["state"]
        pred_state = [self._zeros(st["predictor"][k]) for k in self.pred_names]
        pred, pred_state = self._predict(self.blank, pred_state)
        return OnnxStream(
            audio=np.zeros(self.context, dtype=np.float32),
            pending=np.zeros((0, self.n_mels), dtype=np.float32),
            enc_state=[self._zeros(st["encoder"][k]) for k in ("h_in", "c_in")],
            pred_state=pred_state,
            pred=pred,
        )

    def accept(self, stream: OnnxStream, samples: np.ndarray) -> OnnxResult:
        """Feed samples (S,) -> the best hypothesis so far (``stream`` is updated in place)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([stream.audio, samples])
        n = (buf.shape[0] - self.context) // self.hop
        if n > 0:
            # (n, F)
            feats = self.sessions["frontend"].run(
                None, {"audio": buf[None, : self.context + n * self.hop]}
            )[0][0]
            stream.audio = buf[n * self.hop :]
            self._encode(stream, np.concatenate([stream.pending, feats]), final=False)
        else:
            stream.audio = buf
        return OnnxResult(
            list(stream.tokens), self.decode_text(stream.tokens), stream.score
        )

    def finish(self, stream: OnnxStream) -> OnnxResult:
        """End the stream: the last partial reduction group (zero-padded, as offline), then the
        result with its LAS score. Samples that do not fill a frame are dropped, as offline."""
        if stream.pending.shape[0]:
            pad = np.zeros(
                (self.r - stream.pending.shape[0], self.n_mels), dtype=np.float32
            )
            self._encode(stream, np.concatenate([stream.pending, pad]), final=True)
        las = None
        if self.has_las and stream.enc:
            las = self.las_scores(np.concatenate(stream.enc), [stream.tokens])[0]
        return OnnxResult(
            list(stream.tokens), self.decode_text(stream.tokens), stream.score, las
        )

    def transcribe(
        self, wave: np.ndarray, chunk_samples: int | None = None
    ) -> OnnxResult:
        """A whole waveform (S,) fed in chunks of ``chunk_samples`` (default: the export's chunk_ms)."""
        chunk = chunk_samples or self.chunk_samples
        stream = self.start()
        for s in range(0, len(wave), chunk):
            self.accept(stream, wave[s : s + chunk])
        return self.finish(stream)

    def _encode(self, stream: OnnxStream, feats: np.ndarray, final: bool) -> None:
        """Run the encoder over the whole reduction groups of feats (n, F), keep the rest, search."""
        m = feats.shape[0] // self.r
        stream.pending = feats[m * self.r :]
        if m == 0:
            return
        h, c = stream.enc_state
        enc, h, c = self.sessions["encoder"].run(
            None, {"feats": feats[None, : m * self.r], "h_in": h, "c_in": c}
        )
        stream.enc_state = [h, c]
        if self.has_las:
            stream.enc.append(enc[0])
        self._greedy(stream, enc[0])

    def _greedy(self, stream: OnnxStream, enc: np.ndarray) -> None:
        """Label-looping greedy search over encoder frames enc (m, H), continuing ``stream``."""
        joiner, m, t, emitted = self.sessions["joiner"], enc.shape[0], 0, 0
        while t < m:
            # (m - t, V)
            lp = _log_softmax(
                joiner.run(None, {"enc": enc[t:], "pred": stream.pred})[0]
            )
            best = lp.argmax(-1)
            # frame t used up its labels: it ends with blank
            if emitted >= self.max_symbols:
                best[0] = self.blank
            hits = np.flatnonzero(best != self.blank)
            if hits.size == 0:
                stream.score += float(lp[:, self.blank].sum())
                return
            i = int(hits[0])
            label = int(best[i])
            stream.score += float(lp[:i, self.blank].sum() + lp[i, label])
            stream.tokens.append(label)
            emitted = emitted + 1 if i == 0 else 1
            t += i
            stream.pred, stream.pred_state = self._predict(label, stream.pred_state)

    def las_scores(self, enc: np.ndarray, hyps: list[list[int]]) -> list[float]:
        """LAS teacher-forced log P(tokens, <eos>) of each hypothesis (N,) given one utterance's
        encoder frames enc (T, H): the listener once, then the attention decoder over the N together."""
        if not self.has_las:
            raise ValueError(
                f"{self.folder}: the export has no LAS graphs (or las=False)"
            )
        T, N = enc.shape[0], len(hyps)
        values, keys = self.sessions["las_listen"].run(
            None, {"enc": enc[None].astype(np.float32)}
        )
        # (N, T, D), (N, T, A)
        values, keys = (
            np.repeat(values, N, 0),
            np.repeat(keys, N, 0),
        )
        U = max(1, max(len(h) for h in hyps))
        inputs = np.zeros((N, U + 1), dtype=np.int64)
        inputs[:, 0] = self.eos  # <eos> starts, as in LAS.forward
        for k, h in enumerate(hyps):
            inputs[k, 1 : 1 + len(h)] = h
        hd = self.meta["las"]["dec_hidden"]
        feed = {
            "h_in": np.zeros((N, hd), np.float32), "c_in": np.zeros((N, hd), np.float32),
            "context_in": np.zeros((N, values.shape[2]), np.float32), "prev_in": np.full((N, T), 1.0 / T, np.float32),
            "values": values, "keys": keys, "mask": np.ones((N, T), dtype=bool),
        }  # fmt: skip
        total = np.zeros(N, dtype=np.float64)
        for u in range(U + 1):
            lp, feed["h_in"], feed["c_in"], feed["context_in"], feed["prev_in"] = (
                self.sessions["las_step"].run(None, feed | {"tokens": inputs[:, u]})
            )
            for k, h in enumerate(hyps):
                if u <= len(h):
                    total[k] += lp[k, h[u] if u < len(h) else self.eos]
        return total.tolist()
