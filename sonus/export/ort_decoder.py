"""Streaming two-pass recognition with the exported graphs: onnxruntime and numpy only, no torch.

Reads a folder written by :func:`sonus.export.onnx.export_onnx` and mirrors
:class:`~sonus.asr.streaming.StreamingDecoder` with ``strategy="greedy"`` (the default),
``"modified_beam"`` or ``"beam"``, and at the end LAS rescoring of the n-best
(``second_pass="rescore"``) or the union of it and LAS beam search's n-best, scored by both
(``second_pass="union"``, :mod:`sonus.export.ort_union`)::

    rec = OnnxRecognizer("exported/", strategy="modified_beam", beam_size=4)
    stream = rec.start()
    for chunk in chunks:                     # (S,) float32 samples at rec.sample_rate, any length
        partial = rec.accept(stream, chunk)  # best hypothesis so far (and the n-best)
    result = rec.finish(stream)              # n-best, rescored with LAS when the export has it

The stream keeps what PyTorch's keeps: the audio the next frames still need, the normalised
frames that do not fill the encoder's unit yet (a reduction group of the LSTM, a chunk of the
Conformer), the encoder's state (the LSTM's (h, c); the Conformer's frame offset, key/value,
convolution and subsampling caches), the first-pass search's state (predictor states and
hypotheses), and (for LAS) the encoder frames. The encoder kind in ``metadata.json`` picks how
frames are grouped and how a stream ends (:class:`LSTMFeeder`, :class:`ConformerFeeder`); the
state is whatever the encoder graph's ``X_in``/``X_out`` pairs are, created from the shapes in
``metadata.json``. The searches and the rescorer are in :mod:`sonus.export.ort_search`.

Shapes: S samples, n feature frames, F mel bins, m encoder frames, H encoder width, V vocabulary,
N hypotheses, T encoder frames of an utterance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from sonus.export.ort_lexicon import LexiconTables
from sonus.export.ort_search import (
    SEARCHES,
    LASRescorer,
    OnnxHypothesis,
    SearchOptions,
    Strategy,
    Transducer,
)
from sonus.export.ort_union import LASBeamSearch, union_second_pass


@dataclass
class OnnxResult:
    """The best hypothesis of one stream, and its n-best list (best first)."""

    tokens: list[int]
    text: str
    score: float  # RNN-T log-probability of the best hypothesis
    # LAS teacher-forced log P(tokens, <eos>); None without LAS or mid-stream
    las_score: float | None = None
    # greedy: the one hypothesis; after LAS rescoring ranked by the combined score
    nbest: list[OnnxHypothesis] = field(default_factory=list)


@dataclass
class OnnxStream:
    """What one stream carries from one chunk to the next."""

    audio: np.ndarray  # (context + leftover,) samples later frames still need
    # (< unit, F) normalised frames waiting to complete the encoder's unit
    pending: np.ndarray
    # the encoder graph's state inputs by name: h_in, c_in; offset_in, k_in, v_in, ...
    enc_state: dict[str, np.ndarray]
    search: Any  # the first-pass search's state (ort_search.GreedyState, BeamState)
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


class EncoderFeeder:
    """Runs ``encoder.onnx`` on whole units of ``unit`` feature frames, carrying its state.

    The state is every ``X_in`` input of the graph but ``feats``; the graph returns it as ``X_out``.
    Its zeros come from ``metadata.json``: a symbolic dim is one stream ("batch"), or, for a
    growing cache, no frames yet ("past")."""

    def __init__(self, session: ort.InferenceSession, meta: dict[str, Any]) -> None:
        self.session = session
        spec = meta["graphs"]["encoder"]["inputs"]
        self.shapes = meta["state"]["encoder"]
        self.dtypes = {k: np.dtype(spec[k]["dtype"]) for k in self.shapes}
        self.outputs = [o.name for o in session.get_outputs()]  # enc, then X_out
        self.unit = self.unit_frames(meta["encoder"])
        self.reduction = int(meta["encoder"]["reduction"])  # feature frames per encoder frame

    def unit_frames(self, enc: dict[str, Any]) -> int:
        raise NotImplementedError

    def tail(self, pending: np.ndarray) -> np.ndarray:
        """The frames (t, F) the end of a stream still feeds, from the (< unit) pending ones."""
        raise NotImplementedError

    def initial_state(self) -> dict[str, np.ndarray]:
        return {
            k: np.zeros([(0 if d == "past" else 1) if isinstance(d, str) else d for d in shape], self.dtypes[k])
            for k, shape in self.shapes.items()
        }  # fmt: skip

    def __call__(
        self, feats: np.ndarray, state: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """feats (n, F), n a multiple of ``unit`` (or a tail) -> encoder frames (m, H), new state."""
        enc, *new = self.session.run(None, {"feats": feats[None]} | state)
        names = [n.removesuffix("_out") + "_in" for n in self.outputs[1:]]
        return enc[0], dict(zip(names, new))


class LSTMFeeder(EncoderFeeder):
    """Units of one reduction group; the last partial group is zero-padded, as offline."""

    def unit_frames(self, enc: dict[str, Any]) -> int:
        return int(enc["reduction"])

    def tail(self, pending: np.ndarray) -> np.ndarray:
        if pending.shape[0] == 0:
            return pending
        pad = np.zeros((self.unit - pending.shape[0], pending.shape[1]), pending.dtype)
        return np.concatenate([pending, pad])


class ConformerFeeder(EncoderFeeder):
    """Units of one attention chunk (reduction * chunk_size feature frames); at the end, the last
    partial chunk's whole subsampling groups (the frames short of a group are dropped, as offline)."""

    def unit_frames(self, enc: dict[str, Any]) -> int:
        return int(enc["chunk_frames"])

    def tail(self, pending: np.ndarray) -> np.ndarray:
        return pending[: pending.shape[0] // self.reduction * self.reduction]


FEEDERS: dict[str, type[EncoderFeeder]] = {
    "lstm": LSTMFeeder,
    "conformer": ConformerFeeder,
}


class OnnxRecognizer:
    """Streaming RNN-T recognition, plus LAS rescoring of the final n-best, from an export folder.

    ``num_threads``: onnxruntime intra-op threads of every graph. ``strategy``, ``beam_size``,
    ``max_symbols_per_frame``, ``las_weight``, ``length_bonus``: as in
    :class:`~sonus.asr.decoding.DecodingOptions` (greedy, modified_beam or beam first pass); ``las_weight``
    and ``length_bonus`` default to the export's ``metadata.json`` ``decoding`` (the training run's
    decoding config), else 0.5 and 0. ``las``: rescore with LAS when the export has it (keeps the
    encoder frames of the stream); score = (1 - w) * rnnt + w * las, as PyTorch's two-pass.
    ``lm_weight``: shallow fusion of the export's lexicon LM (``sonus export ... lm.text=FILE``)
    into the beam searches; its default is the export's ``lm.weight`` with a beam search, else 0.
    ``second_pass="union"`` (with LAS): LAS beam search too, beam ``las_beam_size``, and every
    hypothesis of either n-best scored by the transducer, LAS and the LM, as
    ``decoding.second_pass=union``."""

    def __init__(
        self,
        folder: str | Path,
        num_threads: int = 1,
        max_symbols_per_frame: int = 10,
        las: bool = True,
        strategy: Strategy = "greedy",
        beam_size: int = 4,
        las_weight: float | None = None,
        length_bonus: float | None = None,
        lm_weight: float | None = None,
        second_pass: Literal["rescore", "union"] = "rescore",
        las_beam_size: int = 4,
        las_max_len_ratio: float = 3.0,
    ) -> None:
        self.folder = Path(folder)
        self.meta = meta = read_metadata(self.folder)
        defaults = meta.get("decoding") or {}  # exports before this field: DecodingOptions' defaults
        lexicon = meta.get("lexicon")  # exports without an LM, or before this field: None
        if lm_weight is None:
            lm_weight = float(defaults.get("lm_weight") or 0.0) if lexicon and strategy != "greedy" else 0.0
        self.options = SearchOptions(
            strategy, beam_size, max_symbols_per_frame,
            float(defaults.get("las_weight", 0.5) if las_weight is None else las_weight),
            float(defaults.get("length_bonus", 0.0) if length_bonus is None else length_bonus),
            float(lm_weight),
        )  # fmt: skip
        self.lm = self._lexicon(lexicon) if self.options.lm_weight else None
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
        self.n_mels = fe["n_mels"]
        kind = meta["encoder"]["kind"]
        if kind not in FEEDERS:
            raise ValueError(
                f"{self.folder / 'metadata.json'}: encoder kind {kind!r} is not one of {sorted(FEEDERS)}"
            )
        self.encoder = FEEDERS[kind](self.sessions["encoder"], meta)
        self.chunk_samples, self.blank, self.eos = (
            meta["chunk_samples"],
            meta["blank_id"],
            meta["eos_id"],
        )
        self.transducer = Transducer(
            self.sessions["predictor"], self.sessions["joiner"], meta["state"]["predictor"], self.blank
        )
        self.search = SEARCHES[self.options.strategy](self.options, self.lm)
        self.rescorer = (
            LASRescorer(self.sessions["las_listen"], self.sessions["las_step"], meta["las"]["dec_hidden"], self.eos)
            if "las_step" in self.sessions
            else None
        )
        self.has_las = self.rescorer is not None
        if second_pass not in ("rescore", "union"):
            raise ValueError(f"second_pass must be 'rescore' or 'union', got {second_pass!r}")
        if las_beam_size < 1 or las_max_len_ratio <= 0:
            raise ValueError(f"las_beam_size must be >= 1 and las_max_len_ratio > 0: {las_beam_size}, {las_max_len_ratio}")
        if second_pass == "union" and self.rescorer is None:
            raise ValueError(f"second_pass='union' needs LAS: {self.folder} has no LAS graphs, or las=False")
        self.las_beam = (
            LASBeamSearch(self.rescorer, las_beam_size, las_max_len_ratio, self.lm, self.options.lm_weight)
            if second_pass == "union" and self.rescorer is not None
            else None
        )

    def _lexicon(self, entry: dict[str, Any] | None) -> LexiconTables:
        """The export's lexicon LM (``metadata.json``'s ``lexicon``), checked against its vocabulary."""
        where = self.folder / "metadata.json"
        if not entry:
            raise ValueError(f"lm_weight > 0 needs a lexicon LM, and {where} has none (export with lm.text=FILE)")
        path = self.folder / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"lexicon LM missing: {path} (named in {where})")
        lm = LexiconTables.load(path)
        if lm.vocab_size != self.meta["vocab_size"]:
            raise ValueError(f"{path}: a lexicon over {lm.vocab_size} labels, the model has {self.meta['vocab_size']}")
        return lm

    def start(self) -> OnnxStream:
        """A new stream: zero history, the predictor primed with blank (start of sequence)."""
        return OnnxStream(
            audio=np.zeros(self.context, dtype=np.float32),
            pending=np.zeros((0, self.n_mels), dtype=np.float32),
            enc_state=self.encoder.initial_state(),
            search=self.search.start(self.transducer),
        )

    def accept(self, stream: OnnxStream, samples: np.ndarray) -> OnnxResult:
        """Feed samples (S,) -> the best hypothesis so far and the first-pass n-best (``stream``
        is updated in place)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([stream.audio, samples])
        n = (buf.shape[0] - self.context) // self.hop
        if n > 0:
            # (n, F)
            feats = self.sessions["frontend"].run(
                None, {"audio": buf[None, : self.context + n * self.hop]}
            )[0][0]
            stream.audio = buf[n * self.hop :]
            self._encode(stream, np.concatenate([stream.pending, feats]))
        else:
            stream.audio = buf
        return self._result(self.search.nbest(stream.search))

    def finish(self, stream: OnnxStream) -> OnnxResult:
        """End the stream: the encoder's last partial unit (as the encoder's ``step`` with
        ``final`` ends it), then the n-best, rescored with LAS (with LAS, and encoder frames to
        listen to). Samples that do not fill a frame are dropped, as offline."""
        tail = self.encoder.tail(stream.pending)
        stream.pending = stream.pending[:0]
        if tail.shape[0]:
            self._run_encoder(stream, tail)
        nbest = self.search.nbest(stream.search)
        if self.rescorer is not None and stream.enc:
            o, enc = self.options, np.concatenate(stream.enc)
            if self.las_beam is not None:
                nbest = union_second_pass(self.transducer, self.rescorer, self.las_beam, enc, nbest, o.las_weight, o.length_bonus)
            else:
                nbest = self.rescorer.rescore(enc, nbest, o.las_weight, o.length_bonus)
        return self._result(nbest)

    def transcribe(
        self, wave: np.ndarray, chunk_samples: int | None = None
    ) -> OnnxResult:
        """A whole waveform (S,) fed in chunks of ``chunk_samples`` (default: the export's chunk_ms)."""
        chunk = chunk_samples or self.chunk_samples
        stream = self.start()
        for s in range(0, len(wave), chunk):
            self.accept(stream, wave[s : s + chunk])
        return self.finish(stream)

    def _result(self, nbest: list[OnnxHypothesis]) -> OnnxResult:
        for h in nbest:
            h.text = self.decode_text(h.tokens)
        best = nbest[0]
        return OnnxResult(list(best.tokens), best.text, best.rnnt_score, best.las_score, nbest)

    def _encode(self, stream: OnnxStream, feats: np.ndarray) -> None:
        """Run the encoder over the whole units of feats (n, F), keep the rest, search."""
        n = feats.shape[0] // self.encoder.unit * self.encoder.unit
        stream.pending = feats[n:]
        if n:
            self._run_encoder(stream, feats[:n])

    def _run_encoder(self, stream: OnnxStream, feats: np.ndarray) -> None:
        enc, stream.enc_state = self.encoder(feats, stream.enc_state)  # (m, H)
        if self.has_las:
            stream.enc.append(enc)
        stream.search = self.search.run(self.transducer, enc, stream.search)

    def las_scores(self, enc: np.ndarray, hyps: list[list[int]]) -> list[float]:
        """LAS teacher-forced log P(tokens, <eos>) of each hypothesis (N,) given one utterance's
        encoder frames enc (T, H) (:meth:`LASRescorer.scores`)."""
        if self.rescorer is None:
            raise ValueError(
                f"{self.folder}: the export has no LAS graphs (or las=False)"
            )
        return self.rescorer.scores(enc, hyps)
