"""Streaming recognition: audio in chunks, partial hypotheses after each, the two-pass result at the end.

Every stage of the offline pipeline keeps what the next chunk needs:

- front end: LogMel is causal (frame t covers samples [(t+1)*hop - n_fft, (t+1)*hop)), so
  the stream keeps the samples later frames still need: the last ``context`` samples
  already framed and the leftover (< hop) that does not fill a frame yet;
- CMVN: global statistics, no state;
- encoder: its own state, through ``encoder.initial_state(B, device, F)`` and
  ``encoder.step(x, state, final) -> (y, state)``;
- first pass: the search object's state (predictor state and hypotheses), continued by the
  very ``run`` the offline decoder calls once;
- second pass: the encoder frames are kept, and at the end LAS rescores the final n-best
  (score = (1 - w) * rnnt + w * las), as :class:`~sonus.asr.decoding.Decoder` does.

With a causal encoder the streamed result equals the offline one. B streams can run in
lock-step; one that ends early passes fewer valid samples (``lengths``) and is then
decoded like a shorter utterance in an offline batch.

Shapes: B streams, S samples, T feature frames, T' encoder frames, F mel bins, H encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sonus.asr.decoding import Decoder, DecodeResult, DecodingOptions
from sonus.asr.decoding.lexicon import Lexicon
from sonus.asr.model import EncoderOutput, TwoPassASR
from sonus.text.tokenizer import Tokenizer


@dataclass
class StreamState:
    """What B streams carry from one chunk to the next."""

    audio: torch.Tensor  # (B, context + leftover) samples later frames still need
    samples: torch.Tensor  # (B,) valid samples received per stream
    frames: int  # feature frames computed so far (every stream alike)
    enc_frames: int  # encoder frames emitted so far
    encoder: Any  # the encoder's streaming state
    search: Any  # the first-pass search's state
    enc: list[torch.Tensor] = field(default_factory=list)  # encoder output so far, (B, t', H) pieces, for LAS


class StreamingDecoder:
    """Chunk-by-chunk two-pass recognition with a model whose front end and encoder are causal::

        sd = StreamingDecoder(model, tokenizer, DecodingOptions(strategy="modified_beam"))
        state = sd.initial_state(batch=1)
        for chunk in audio_chunks:                      # (B, S) each, e.g. sd.chunk_samples long
            partial, state = sd.step(chunk, state)      # n-best so far, with texts
        first, final = sd.finish(state)                 # first pass, and after LAS rescoring

    ``step`` takes any number of samples; ``chunk_samples`` is the default chunk (160 ms). ``lm``:
    a lexicon LM fused into the beam searches with ``options.lm_weight``, as :class:`Decoder`'s.
    """

    def __init__(
        self, model: TwoPassASR, tokenizer: Tokenizer, options: DecodingOptions, chunk_ms: float = 160.0, lm: Lexicon | None = None
    ) -> None:
        if model.frontend is None:
            raise ValueError("StreamingDecoder reads audio; this model reads feature sequences (model.feat_in)")
        self.model, self.decoder = model, Decoder(model, tokenizer, options, lm)
        fe = model.frontend.cfg
        self.hop = fe.hop_length
        # LogMel pads its input with zeros on the left; with a whole number of hops of context
        # in front, its frames line up with the stream's and the first new one has all its samples.
        self.context = -(-(fe.n_fft - fe.hop_length) // self.hop) * self.hop
        self.chunk_samples = round(chunk_ms * fe.sample_rate / 1000)
        if self.chunk_samples < 1:
            raise ValueError(f"chunk_ms must give at least one sample, got {chunk_ms}")

    def initial_state(self, batch: int = 1, device: torch.device | str | None = None) -> StreamState:
        m = self.model
        device = torch.device(device) if device is not None else next(m.parameters()).device
        return StreamState(
            audio=torch.zeros(batch, self.context, device=device),
            samples=torch.zeros(batch, dtype=torch.long, device=device),
            frames=0,
            enc_frames=0,
            encoder=m.encoder.initial_state(batch, device, m.cfg.n_mels),
            search=self.decoder.first_search.start(batch, device),
        )

    @torch.no_grad()
    def step(self, wave: torch.Tensor, state: StreamState, lengths: torch.Tensor | None = None) -> tuple[list[DecodeResult], StreamState]:
        """Feed wave (B, S), of which the first lengths[b] samples (B,) are valid (default all S;
        a stream that has ended passes 0) -> partial n-best of every stream, and the new state."""
        B = state.audio.shape[0]
        assert wave.dim() == 2 and wave.shape[0] == B, (tuple(wave.shape), B)
        if lengths is None:
            lengths = torch.full((B,), wave.shape[1], dtype=torch.long, device=wave.device)
        state = self._advance(wave, lengths.to(state.samples.device), state, final=False)
        return self.decoder.texts(self.decoder.first_search.results(state.search)), state

    @torch.no_grad()
    def finish(self, state: StreamState) -> tuple[list[DecodeResult], list[DecodeResult]]:
        """End the streams: the encoder's last frames, then (first-pass results, final results).

        Samples that do not fill a frame are dropped, as in the offline pass."""
        B = state.audio.shape[0]
        empty = state.audio.new_zeros(B, 0)
        state = self._advance(empty, torch.zeros(B, dtype=torch.long, device=empty.device), state, final=True)
        first = self.decoder.texts(self.decoder.first_search.results(state.search))
        if self.decoder.opts.second_pass == "none":
            return first, first
        enc = torch.cat(state.enc, dim=1) if state.enc else empty.new_zeros(B, 0, self.model.encoder.out_dim)
        return first, self.decoder.second_pass(EncoderOutput(enc, self._enc_valid(state)), first)

    def _enc_valid(self, state: StreamState) -> torch.Tensor:
        """(B,) valid encoder frames of every stream so far."""
        frames = self.model.frontend.frame_lengths(state.samples)
        return self.model.encoder.output_lengths(frames).clamp(max=state.enc_frames)

    def _advance(self, wave: torch.Tensor, lengths: torch.Tensor, state: StreamState, final: bool) -> StreamState:
        m = self.model
        feats, audio = self._features(wave, lengths, state)
        samples = state.samples + lengths
        y, enc_state = m.encoder.step(feats, state.encoder, final=final)  # (B, t', H)
        new = StreamState(audio, samples, state.frames + feats.shape[1], state.enc_frames + y.shape[1], enc_state, state.search, state.enc)
        if y.shape[1]:
            valid = (self._enc_valid(new) - state.enc_frames).clamp(min=0)  # (B,) of y's frames
            new.search = self.decoder.first_search.run(y, valid, state.search)
            if self.decoder.opts.second_pass != "none":
                new.enc = state.enc + [y]
        return new

    def _features(self, wave: torch.Tensor, lengths: torch.Tensor, state: StreamState) -> tuple[torch.Tensor, torch.Tensor]:
        """-> normalised log-mel (B, n, F) of the frames ``wave`` completes, and the samples to keep."""
        m = self.model
        buf = torch.cat([state.audio, wave.to(state.audio.dtype)], dim=1)  # (B, context + S')
        n = (buf.shape[1] - self.context) // self.hop
        if n == 0:
            return buf.new_zeros(buf.shape[0], 0, m.cfg.n_mels), buf
        used = buf[:, : self.context + n * self.hop]
        feats, _ = m.frontend(used, torch.full((buf.shape[0],), used.shape[1], device=buf.device))
        feats = feats[:, self.context // self.hop :]  # (B, n, F): the context's own frames were computed before
        valid = m.frontend.frame_lengths(state.samples + lengths) - state.frames  # (B,)
        feats = feats.masked_fill(~(torch.arange(n, device=buf.device)[None, :] < valid[:, None])[..., None], 0.0)  # as offline
        return m.cmvn(feats), buf[:, n * self.hop :]
