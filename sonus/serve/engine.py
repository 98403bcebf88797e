"""The inference worker: one thread decodes every open stream, batching their waiting chunks.

Streams push 16-bit PCM as it arrives (:meth:`StreamEngine.feed`, from any thread). The
worker takes one chunk (``chunk_ms`` of audio) from every stream that has one waiting and
decodes them all in one ``StreamingDecoder.step``: B streams cost about one B-row LSTM
step instead of B one-row steps, which is what lets a few cores keep up with many streams.
A step starts as soon as any chunk is complete, so a chunk waits at most for the step in
progress; when steps fall behind, chunks pile up and the next step is simply larger.
After each step every stream gets a partial; at the end (:meth:`end`), or when the endpoint
rules end an utterance, a second thread (the finals thread, one at a time, in order) decodes
the stream's last samples, runs the second pass and sends the final, so that LAS rescoring
never holds up the partials of the other streams.

States of streams that started at different times are stacked row by row
(:mod:`sonus.serve.rows`). Messages go to each stream's ``sink`` (called on the worker
thread; the WebSocket handler hands them to its event loop).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from sonus.asr.decoding import Decoder, DecodeResult, DecodingOptions
from sonus.asr.decoding.lexicon import Lexicon
from sonus.asr.model import TwoPassASR
from sonus.asr.streaming import StreamingDecoder
from sonus.serve.config import Endpoint, endpoint_reached
from sonus.serve.rows import StreamRow, stack, unstack
from sonus.serve.words import encoder_frame_seconds, word_timings
from sonus.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Message = dict  # JSON-ready: {"type": "partial" | "final" | "error", ...}


@dataclass
class Stream:
    """One client's audio and decoding state; fields past ``sink`` belong to the engine."""

    id: int
    sink: Callable[[Message], None]
    pending: list[np.ndarray] = field(default_factory=list)  # int16 pieces not yet decoded
    pending_samples: int = 0
    received: int = 0  # samples received in all
    chunks: int = 0  # decoding steps this stream took part in
    ended: bool = False
    closed: bool = False
    row: StreamRow | None = None
    waiting_since: float = 0.0  # when its oldest undecoded chunk became complete
    tail: np.ndarray | None = None  # at the end: the last samples (less than a chunk)
    segment: int = 0  # utterances the endpoint rules ended so far
    base_samples: int = 0  # samples of the stream before the current segment


class StreamEngine:
    """Batched streaming recognition for many clients, on one background thread::

        engine = StreamEngine(model, tokenizer, DecodingOptions(strategy="greedy")).start()
        s = engine.open(sink)        # sink(message) receives partial / final / error messages
        engine.feed(s, pcm_int16)    # as audio arrives
        engine.end(s)                # -> a final message, then the stream is gone
        engine.close(s)              # a client that left: drop it, nothing is sent
    """

    def __init__(self, model: TwoPassASR, tokenizer: Tokenizer, options: DecodingOptions, chunk_ms: float = 160.0, max_batch: int = 64,
                 endpoint: Endpoint | None = None, lm: Lexicon | None = None) -> None:  # fmt: skip
        self.sd = StreamingDecoder(model, tokenizer, options, chunk_ms, lm)
        self.endpoint = endpoint or Endpoint(enabled=False)
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.sample_rate = model.cfg.sample_rate
        self.chunk = self.sd.chunk_samples
        self.frame_s = encoder_frame_seconds(model)
        self._check_chunk()
        self._fresh = StreamRow.from_state(self.sd.initial_state(1))
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # finals (the tail, the second pass) run on their own thread, in order, so that an
        # utterance's LAS rescoring does not hold up everyone's partials
        self._finals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonus-serve-finals")
        self._running = False
        self.steps = 0  # decoding steps taken (for tests and the load benchmark)
        self.rows_decoded = 0

    def _check_chunk(self) -> None:
        """Streams are stacked between chunks (:mod:`sonus.serve.rows`): a chunk must end on an encoder frame."""
        hop = self.model.frontend.cfg.hop_length
        per_frame = round(self.frame_s * self.sample_rate / hop)  # feature frames per encoder frame
        if self.chunk % (hop * per_frame):
            raise ValueError(f"chunk_ms must be a multiple of the encoder frame ({self.frame_s * 1000:g} ms), got {self.chunk} samples")

    # -- client side (any thread) --------------------------------------------------------

    def open(self, sink: Callable[[Message], None]) -> Stream:
        with self._cond:
            s = Stream(next(self._ids), sink, row=self._fresh)
            self._streams[s.id] = s
            return s

    @property
    def active(self) -> int:
        with self._cond:
            return len(self._streams)

    def feed(self, stream: Stream, pcm: np.ndarray) -> None:
        """Queue (S,) int16 samples for ``stream``."""
        assert pcm.dtype == np.int16 and pcm.ndim == 1, (pcm.dtype, pcm.shape)
        with self._cond:
            if stream.ended or stream.closed or not len(pcm):
                return
            was_ready = stream.pending_samples >= self.chunk
            stream.pending.append(pcm)
            stream.pending_samples += len(pcm)
            stream.received += len(pcm)
            if not was_ready and stream.pending_samples >= self.chunk:
                stream.waiting_since = time.monotonic()
                self._cond.notify()

    def end(self, stream: Stream) -> None:
        """No more audio: decode what is left, send the final result, forget the stream."""
        with self._cond:
            if not stream.closed:
                stream.ended = True
                self._cond.notify()

    def close(self, stream: Stream) -> None:
        """Drop the stream without a result (the client is gone)."""
        with self._cond:
            stream.closed = True
            self._streams.pop(stream.id, None)

    # -- worker --------------------------------------------------------------------------

    def start(self) -> StreamEngine:
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._loop, name="sonus-serve-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._finals.shutdown(wait=True, cancel_futures=False)
        self._finals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonus-serve-finals")  # a restart works

    def _take(self) -> tuple[list[tuple[Stream, np.ndarray]], list[Stream]]:
        """Wait for work -> (streams with a whole chunk and that chunk, streams to finish)."""
        with self._cond:
            while self._running:
                ready = [s for s in self._streams.values() if s.pending_samples >= self.chunk]
                ending = [s for s in self._streams.values() if s.ended and s.pending_samples < self.chunk]
                if ready or ending:
                    break
                self._cond.wait(timeout=1.0)
            else:
                return [], []
            ready.sort(key=lambda s: s.waiting_since)
            batch = [(s, self._pop(s, self.chunk)) for s in ready[: self.max_batch]]
            for s in ending:
                s.tail = self._pop(s, s.pending_samples)
                self._streams.pop(s.id, None)
            return batch, ending

    def _pop(self, s: Stream, n: int) -> np.ndarray:
        """The first n pending samples of ``s`` (lock held)."""
        if not s.pending:
            return np.zeros(0, np.int16)
        buf = np.concatenate(s.pending) if len(s.pending) != 1 else s.pending[0]
        out, rest = buf[:n], buf[n:]
        s.pending = [rest] if len(rest) else []
        s.pending_samples = len(rest)
        if s.pending_samples >= self.chunk:
            s.waiting_since = time.monotonic()
        return out

    def _loop(self) -> None:
        while self._running:
            try:
                self._once()
            except Exception:  # a bug here must not silence every stream: log it and go on
                log.exception("serve worker")

    def _once(self) -> None:
        """Wait for work, then one batched step and the streams that ended."""
        batch, ending = self._take()
        if batch:
            self._guard([s for s, _ in batch], lambda: self._step(batch))
        for s in ending:
            self._finals.submit(self._guard, [s], lambda s=s: self._finish(s, s.tail))

    def _guard(self, streams: list[Stream], work: Callable[[], None]) -> None:
        """Run ``work``; if it fails, the streams involved get an error and are dropped, the worker goes on."""
        try:
            work()
        except Exception as e:  # the worker must outlive one bad batch
            log.exception("decoding failed for streams %s", [s.id for s in streams])
            for s in streams:
                self.close(s)
                s.sink({"type": "error", "message": f"decoding failed: {type(e).__name__}: {e}"})

    @torch.no_grad()
    def _decode(self, rows: list[StreamRow], pcm: list[np.ndarray]) -> tuple[list[DecodeResult], list[StreamRow]]:
        """One step of len(rows) streams over equally long int16 pieces."""
        wave = torch.from_numpy(np.stack(pcm).astype(np.float32) / 32768.0)  # (B, S)
        partial, state = self.sd.step(wave, stack(rows))
        return partial, unstack(state, rows, keep_enc=self.sd.decoder.opts.second_pass != "none")

    def _step(self, batch: list[tuple[Stream, np.ndarray]]) -> None:
        partial, rows = self._decode([s.row for s, _ in batch], [pcm for _, pcm in batch])
        self.steps += 1
        self.rows_decoded += len(batch)
        for (s, _), r, row in zip(batch, partial, rows):
            s.row = row
            s.chunks += 1
            if s.closed:
                continue
            s.sink({"type": "partial", "text": r.best.text, "samples": s.base_samples + row.samples, "seq": s.chunks, "segment": s.segment})
            best = r.nbest[0] if r.nbest else None
            rule = endpoint_reached(self.endpoint, best.tokens if best else [], best.frames if best else None, row.enc_frames, self.frame_s)
            if rule == "final":
                self._finals.submit(self._guard, [s], lambda s=s, row=row, seg=s.segment, base=s.base_samples: self._send_final(s, row, True, seg, base))
            if rule is not None:  # a new segment starts from a fresh state
                s.segment += rule == "final"
                s.base_samples += row.samples
                s.row = self._fresh

    def _send_final(self, s: Stream, row: StreamRow, endpoint: bool, segment: int | None = None, base: int | None = None) -> None:
        """The two-pass final of ``row``, segment ``segment`` starting ``base`` samples into the
        stream (default: the stream's current ones). Runs on the finals thread."""
        segment = s.segment if segment is None else segment
        base = s.base_samples if base is None else base
        if row.samples:
            (first,), (final,) = self.sd.finish(row.to_state())
        else:  # no audio in this segment (an end right after connecting or after an endpoint): nothing to decode
            first = final = DecodeResult([])
        msg = final_message(first, final, self.tokenizer, self.frame_s, row.samples, self.sample_rate, base)
        s.sink(msg | {"segment": segment, "endpoint": endpoint})

    def _finish(self, s: Stream, tail: np.ndarray) -> None:
        row = s.row
        if len(tail):
            _, (row,) = self._decode([row], [tail])
        if not s.closed:
            self._send_final(s, row, endpoint=False)
        s.closed = True
        s.row = None


def final_message(first: DecodeResult, final: DecodeResult, tokenizer: Tokenizer, frame_s: float, samples: int, sample_rate: int, offset: int = 0) -> Message:
    """The final result of one utterance of ``samples`` that starts ``offset`` samples into the
    stream: best text, n-best, word timings in stream time (from the best hypothesis'
    transducer alignment), the first pass' text."""
    best = final.nbest[0] if final.nbest else None
    words = word_timings(best.tokens, best.frames, tokenizer, frame_s) if best else []
    t0 = offset / sample_rate
    return {
        "type": "final",
        "text": best.text if best else "",
        "first_pass": first.nbest[0].text if first.nbest else "",
        "nbest": [{"text": h.text, "score": h.score, "rnnt_score": h.rnnt_score, "las_score": h.las_score} for h in final.nbest],
        "words": [{"word": w.word, "start": round(t0 + w.start, 3), "end": round(t0 + w.end, 3)} for w in words],
        "samples": offset + samples,
        "start": t0,
        "duration": samples / sample_rate,
    }


def transcribe_wave(decoder: Decoder, wave: torch.Tensor, frame_s: float) -> Message:
    """Offline two-pass decoding of one (S,) waveform at the model's rate -> the final message (type ``transcript``)."""
    with torch.no_grad():
        first, final = decoder.decode(wave[None], torch.tensor([wave.shape[0]]))
    sr = decoder.model.cfg.sample_rate
    return final_message(first[0], final[0], decoder.tokenizer, frame_s, int(wave.shape[0]), sr) | {"type": "transcript"}
