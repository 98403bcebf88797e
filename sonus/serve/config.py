"""Server options: what ``configs/serve.yaml`` holds, as frozen dataclasses checked up front."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sonus.asr.decoding import DecodingOptions

STREAMING_STRATEGIES = ("greedy", "modified_beam", "beam")  # searches whose state the server can batch across streams


@dataclass(frozen=True)
class Limits:
    """Per-connection and server-wide limits (see ``configs/serve.yaml``)."""

    max_frame_bytes: int = 64_000  # one binary WebSocket frame of PCM (2 s of 16 kHz int16)
    max_message_bytes: int = 4_096  # one text (JSON control) message
    max_streams: int = 32  # concurrent WebSocket streams; more are refused with close code 1013
    idle_timeout_s: float = 30.0  # a stream that sends nothing this long is closed (1001)
    max_upload_mb: float = 50.0  # HTTP uploads (transcribe, separate, tokenize, detokenize)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"limits.{f.name} must be > 0, got {getattr(self, f.name)!r}")
        if self.max_frame_bytes % 2:
            raise ValueError(f"limits.max_frame_bytes must be even (16-bit samples), got {self.max_frame_bytes}")


@dataclass(frozen=True)
class LexiconLM:
    """``decoding.lm`` but its weight: the lexicon LM the beam searches fuse (as ``sonus
    decode``'s). The YAML's ``decoding.lm.weight`` is ``DecodingOptions.lm_weight``."""

    text: str | None = None  # transcripts to count the words of: a manifest (.jsonl) or a text file
    oov_logprob: float = -20.0
    word_bonus: float = 0.0


@dataclass(frozen=True)
class Endpoint:
    """When the server ends an utterance by itself, from the transducer's alignment (the rules of
    k2's sherpa and Kaldi's online endpointing): the segment gets its two-pass final result and
    the stream goes on with a fresh state, so one connection can carry a whole dictation."""

    enabled: bool = True
    trailing_blank_s: float = 1.2  # after some text: this long without a new token ends the utterance
    max_utterance_s: float = 20.0  # a segment this long ends whatever was said
    silence_reset_s: float = 10.0  # no text at all for this long: start afresh, nothing sent (bounds memory)

    def __post_init__(self) -> None:
        for name in ("trailing_blank_s", "max_utterance_s", "silence_reset_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"endpoint.{name} must be > 0, got {getattr(self, name)!r}")


def endpoint_reached(ep: Endpoint, tokens: list[int], frames: list[int] | None, enc_frames: int, frame_s: float) -> str | None:
    """"final" (end the utterance), "reset" (silence only: start afresh) or None, for a segment
    of ``enc_frames`` encoder frames whose best hypothesis emitted ``tokens`` at ``frames``."""
    if not ep.enabled:
        return None
    seconds = enc_frames * frame_s
    if tokens:
        last = frames[-1] + 1 if frames else enc_frames  # no alignment: only the length rule applies
        if (enc_frames - last) * frame_s >= ep.trailing_blank_s or seconds >= ep.max_utterance_s:
            return "final"
        return None
    return "reset" if seconds >= ep.silence_reset_s else None


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``run_serve`` needs; ``from_dict`` builds it from the Hydra config."""

    checkpoint: str
    separation_checkpoint: str | None = None
    tokenizer_checkpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    limits: Limits = field(default_factory=Limits)
    allowed_origins: tuple[str, ...] = ()  # besides the page's own origin; "*" allows any
    auth_token: str | None = None  # bearer token for every endpoint but the page and /health; None: off
    chunk_ms: float = 160.0
    decoding: DecodingOptions = field(default_factory=lambda: DecodingOptions(strategy="greedy"))
    lm: LexiconLM = field(default_factory=LexiconLM)  # the YAML's decoding.lm; its weight is decoding.lm_weight
    num_threads: int | None = None
    max_batch: int = 64  # streams decoded in one step at most
    endpoint: Endpoint = field(default_factory=Endpoint)

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("checkpoint must name an ASR checkpoint")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be > 0, got {self.chunk_ms}")
        if self.decoding.strategy not in STREAMING_STRATEGIES:
            raise ValueError(f"decoding.strategy must be one of {STREAMING_STRATEGIES} for serving, got {self.decoding.strategy!r}")
        if self.auth_token is not None and not self.auth_token:
            raise ValueError("auth_token must be null (off) or a non-empty string")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.decoding.lm_weight < 0:
            raise ValueError(f"decoding.lm.weight must be >= 0, got {self.decoding.lm_weight}")
        if self.decoding.lm_weight and not self.lm.text:
            raise ValueError("decoding.lm.weight > 0 needs decoding.lm.text (transcripts to build the lexicon from)")
        if self.decoding.lm_weight and self.decoding.strategy == "greedy":
            raise ValueError("decoding.lm.weight > 0 needs decoding.strategy=modified_beam or beam, got greedy")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServeConfig:
        """From a plain dict (``OmegaConf.to_container(cfg)``); unknown keys are an error."""
        d = dict(d)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown serve config keys {unknown}; known: {sorted(known)}")
        limits = Limits(**(d.pop("limits", None) or {}))
        endpoint = Endpoint(**(d.pop("endpoint", None) or {}))
        dec = dict(d.pop("decoding", None) or {"strategy": "greedy"})
        if "lm_weight" in dec:
            raise ValueError("serve config: the LM's weight is decoding.lm.weight (with decoding.lm.text), not decoding.lm_weight")
        lm = dict(dec.pop("lm", None) or {})
        decoding = DecodingOptions(**dec, lm_weight=float(lm.pop("weight", None) or 0.0))
        origins = d.pop("allowed_origins", None) or ()
        if isinstance(origins, str):
            origins = (origins,)
        return cls(limits=limits, endpoint=endpoint, decoding=decoding, lm=LexiconLM(**lm), allowed_origins=tuple(origins), **d)
