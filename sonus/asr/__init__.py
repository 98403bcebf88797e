"""Two-pass speech recognition: RNN-T first pass, LAS second pass (see model.py), offline or streaming."""

from sonus.asr.streaming import StreamingDecoder, StreamState

__all__ = ["StreamState", "StreamingDecoder"]
