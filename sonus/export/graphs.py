"""The parts of a :class:`~sonus.asr.model.TwoPassASR` as export-ready modules: plain tensors in
and out, every recurrent state an explicit input and output, no Python-side control flow
that depends on values (so one traced graph serves every chunk length).

Each wrapper computes what the streaming PyTorch path computes
(:class:`~sonus.asr.streaming.StreamingDecoder`), so an ONNX run reproduces its transcript:

- :class:`FrontendGraph`: audio buffer -> normalised log-mel, the framing of
  ``StreamingDecoder._features`` (LogMel + GlobalCMVN), the STFT as a windowed DFT matmul;
- :class:`LSTMEncoderGraph`: whole reduction groups of features + (h, c) -> frames + (h, c),
  i.e. ``LSTMEncoder.step`` with the leftover frames kept by the caller;
- :class:`ConformerEncoderGraph`: whole attention chunks of features + caches -> frames + caches,
  i.e. ``ConformerEncoder.step`` with the frames short of a chunk kept by the caller;
- :class:`PredictorGraph`: ``Predictor.step``;
- :class:`JoinerGraph`: encoder frames x predictor outputs -> logits, broadcasting over rows;
- :class:`LASListenGraph` / :class:`LASStepGraph`: ``LAS.listen`` for one utterance and
  ``LAS.step`` with log-probabilities, the teacher-forced loop of the rescorer run by the caller.

Shapes: B batch, S samples, n feature frames, F mel bins, r reduction factor, m encoder frames,
H encoder width, L layers, N rows (hypotheses), Hp predictor width, V vocabulary, T encoder
frames of an utterance, D listener width, A attention width, Hd LAS decoder width; Conformer:
C chunk size (encoder frames), P cached frames, Hh heads, d = H / Hh, K convolution kernel,
c subsampling channels, F2 = ceil(F / 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sonus.asr.encoder import LSTMEncoder
from sonus.asr.joiner import Joiner
from sonus.asr.las import LAS
from sonus.asr.model import TwoPassASR
from sonus.asr.predictor import Predictor
from sonus.nn.conformer import CausalSubsampling, ConformerEncoder, chunk_mask


def frontend_context(n_fft: int, hop: int) -> int:
    """Samples kept in front of the new ones: whole hops covering a frame's look-back
    (``StreamingDecoder.context``)."""
    return -(-(n_fft - hop) // hop) * hop


class FrontendGraph(nn.Module):
    """Audio (B, context + n * hop) -> normalised log-mel (B, n, F) of the n frames that end in
    the last n hops; the first ``context`` samples are the stream's history (zeros at the start).

    Frame t covers the n_fft samples ending at sample context + (t + 1) * hop, as in
    :class:`~sonus.audio.features.LogMel` (causal framing). The power spectrum is a matmul with
    a windowed cos/sin basis instead of ``torch.stft`` (which the ONNX exporter cannot take as
    complex): the same sums, rounded differently (about 1e-6 relative).
    """

    def __init__(self, model: TwoPassASR) -> None:
        super().__init__()
        if model.frontend is None:
            raise ValueError(
                "the model reads feature sequences (model.feat_in), not audio: there is no front end to export"
            )
        cfg = model.frontend.cfg
        self.n_fft, self.hop = cfg.n_fft, cfg.hop_length
        self.context = frontend_context(cfg.n_fft, cfg.hop_length)
        self.blocks = self.context // self.hop + 1  # hops that cover one frame
        bins = cfg.n_fft // 2 + 1
        k = (
            torch.arange(cfg.n_fft, dtype=torch.float64)[:, None]
            * torch.arange(bins, dtype=torch.float64)[None, :]
        )
        # exact phase before the trigonometry
        ang = 2.0 * math.pi * torch.remainder(k, cfg.n_fft) / cfg.n_fft
        win = model.frontend.window.double()[:, None]
        self.register_buffer("cos", (win * torch.cos(ang)).float())  # (n_fft, bins)
        self.register_buffer("sin", (win * torch.sin(ang)).float())
        self.register_buffer("fbank", model.frontend.fbank.clone())  # (bins, F)
        self.register_buffer("mean", model.cmvn.mean.clone())
        self.register_buffer("inv_std", model.cmvn.inv_std.clone())

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # (B, c + n, hop), c = context / hop
        hops = audio.reshape(audio.shape[0], -1, self.hop)
        c = self.blocks - 1
        # frame t: the last n_fft samples of hops t .. t + c (static slices: n stays symbolic)
        parts = [
            hops[:, i : i - c] if i < c else hops[:, c:] for i in range(self.blocks)
        ]
        frames = torch.cat(parts, dim=-1)[..., -self.n_fft :]  # (B, n, n_fft)
        # (B, n, bins)
        re, im = (
            torch.matmul(frames, self.cos),
            torch.matmul(frames, self.sin),
        )
        mel = torch.matmul(re * re + im * im, self.fbank)  # (B, n, F)
        return (torch.log(mel + 1e-6) - self.mean) * self.inv_std


class LSTMEncoderGraph(nn.Module):
    """feats (B, m * r, F), h, c (L, B, H) -> enc (B, m, H), h, c.

    ``LSTMEncoder.step`` for inputs that fill whole reduction groups: the caller keeps the
    leftover (< r) frames and, at the end of a stream, zero-pads the last group."""

    def __init__(self, encoder: LSTMEncoder) -> None:
        super().__init__()
        self.reduce, self.lstm = encoder.reduce, encoder.lstm

    def forward(
        self, feats: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r, B, F = self.reduce.factor, feats.shape[0], feats.shape[2]
        x = feats.reshape(B, -1, r, F)  # (B, m, r, F)
        x = x.reshape(B, -1, r * F) if self.reduce.kind == "stack" else x.mean(2)
        y, (h, c) = self.lstm(x, (h, c))
        return y, h, c


class ConformerEncoderGraph(nn.Module):
    """feats (B, 4m, F), offset () int64, k, v (L, B, Hh, P, d), conv (L, B, H, K-1)
    [, sub1 (B, 1, 1, F), sub2 (B, c, 1, F2)] -> enc (B, m, H), offset + m, k, v, conv[, sub1, sub2].

    ``ConformerEncoder.step`` for m encoder frames that fill whole chunks of C (or, at the end
    of a stream, the last partial chunk): the caller keeps the feature frames short of a chunk.
    ``offset`` is the encoder frames emitted so far (a multiple of C): the rotary position of
    the first new frame and where the chunk boundaries lie. ``k``/``v`` hold every layer's
    rotated keys and values of the P frames before ``offset``, ``conv`` every layer's last K-1
    convolution inputs, ``sub1``/``sub2`` the subsampling convolutions' last input frames
    (``subsampling="conv2d"`` only; ``"stack"`` keeps none).

    The key/value cache is fixed or growing, as ``left_chunks`` allows:

    - ``left_chunks >= 0``: P = left_chunks * C, always. At the start of a stream the cache is
      zeros that stand for frames before the first (absolute position < 0), masked out, so the
      scores equal those of the shorter PyTorch cache. Each call returns the last P keys.
    - ``left_chunks = -1`` (all the past): P = offset, a dynamic axis; each call returns the
      cache with the m new frames appended, so memory and attention cost grow with the stream
      (as they do in PyTorch). Long streams want a finite ``model.conformer.left_chunks``.
    """

    def __init__(self, encoder: ConformerEncoder) -> None:
        super().__init__()
        cfg = encoder.cfg
        if cfg.chunk_size <= 0:
            raise ValueError(
                f"a Conformer with full attention (model.conformer.chunk_size={cfg.chunk_size}) does not stream: "
                "nothing to export as a chunk step; train with chunk_size > 0"
            )
        self.subsample, self.blocks = encoder.subsample, encoder.blocks
        self.chunk, self.left = cfg.chunk_size, cfg.left_chunks
        # cached frames of a fixed cache; None: it grows
        self.cache_frames = self.left * self.chunk if self.left >= 0 else None
        self.has_sub_state = isinstance(encoder.subsample, CausalSubsampling)

    def forward(
        self,
        feats: torch.Tensor,
        offset: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        conv_cache: torch.Tensor,
        *sub: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        # (B, m, H)
        y, sub_out = self.subsample(feats, list(sub) if self.has_sub_state else None)
        T, P = y.shape[1], k_cache.shape[3]
        q = offset + torch.arange(T)  # absolute frame of each query: the rotary positions
        mask = chunk_mask(T, torch.full((1,), T), self.chunk, self.left, offset, P)  # (1, 1, m, P + m)
        valid = y.new_ones(1, 1, 1)  # every new frame is valid
        ks, vs, convs = [], [], []
        for i, blk in enumerate(self.blocks):
            y, (kk, vv), conv = blk(
                y, mask, q, valid, (k_cache[i], v_cache[i]), conv_cache[i]
            )
            if self.cache_frames is not None:
                start = kk.shape[2] - self.cache_frames
                kk, vv = kk[:, :, start:], vv[:, :, start:]
            ks.append(kk)
            vs.append(vv)
            convs.append(conv)
        out = (y, offset + T, torch.stack(ks), torch.stack(vs), torch.stack(convs))
        return out + tuple(sub_out) if self.has_sub_state else out


class PredictorGraph(nn.Module):
    """tokens (N,) int64, state (L, N, Hp) each -> output (N, Hp), new state: ``Predictor.step``.

    The state is (h, c) for an LSTM predictor, (h,) for a GRU."""

    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.embed, self.rnn, self.kind = (
            predictor.embed,
            predictor.rnn,
            predictor.cfg.kind,
        )

    def forward(
        self, tokens: torch.Tensor, *state: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        x = self.embed(tokens)[:, None, :]  # (N, 1, E)
        if self.kind == "lstm":
            y, (h, c) = self.rnn(x, (state[0], state[1]))
            return y[:, 0], h, c
        y, h = self.rnn(x, state[0])
        return y[:, 0], h


class JoinerGraph(nn.Module):
    """enc (N, H), pred (M, Hp) -> logits (max(N, M), V); N or M may be 1 (broadcast), so one
    call scores all frames of a chunk against the current predictor output."""

    def __init__(self, joiner: Joiner) -> None:
        super().__init__()
        self.joiner = joiner

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        e, p = self.joiner.project(enc, pred)
        return self.joiner.joint(e, p)


class LASListenGraph(nn.Module):
    """One utterance's encoder output (1, T, H) -> listener values (1, T, D), keys (1, T, A).

    All T frames are valid, so the BiLSTM runs unpacked (``LAS.listen`` packs a padded batch)."""

    def __init__(self, las: LAS) -> None:
        super().__init__()
        self.listener, self.k = las.listener, las.attention.k

    def forward(self, enc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, _ = self.listener(enc)
        return values, self.k(values)


class LASStepGraph(nn.Module):
    """One attention-decoder step (``LAS.step``) with log-probabilities:

    tokens (N,) int64, h, c (N, Hd), context (N, D), prev (N, T) attention weights,
    values (N, T, D), keys (N, T, A), mask (N, T) bool -> log_probs (N, V), h, c, context, prev."""

    def __init__(self, las: LAS) -> None:
        super().__init__()
        self.las = las

    def forward(self, tokens, h, c, context, prev, values, keys, mask):
        logits, (h, c), context, w = self.las.step(
            tokens, (h, c), context, prev, values, keys, mask
        )
        return torch.log_softmax(logits.float(), dim=-1), h, c, context, w
