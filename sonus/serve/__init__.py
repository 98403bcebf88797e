"""The streaming recognition server and its web page: ``sonus serve checkpoint=... port=8000``.

Open http://HOST:PORT/ for the page (microphone or file), /docs for the API.

WebSocket ``/v1/stream`` (``?token=TOKEN`` when the server has an ``auth_token``):

- client -> server, optionally first: a text frame ``{"sample_rate": 16000}`` (and
  ``"encoding": "pcm_s16le"``): anything but the model's rate is refused;
- client -> server: binary frames of 16-bit little-endian mono PCM at the model's rate
  (16 kHz), any length up to ``limits.max_frame_bytes`` (160 ms = 5120 bytes is a good size);
- client -> server: ``{"event": "end"}`` when the utterance is over;
- server -> client after each decoded chunk (``chunk_ms`` of audio):
  ``{"type": "partial", "text": "...", "samples": N, "seq": K}``: the first-pass
  (RNN-T) hypothesis over the first N samples of the stream, after its K-th chunk;
- server -> client after ``end``: ``{"type": "final", "text": "...", "first_pass": "...",
  "nbest": [{"text", "score", "rnnt_score", "las_score"}], "words": [{"word", "start", "end"}],
  "samples": N, "duration": s}`` (the two-pass result; word times in seconds from the
  transducer alignment), then the server closes with 1000;
- server -> client when the endpoint rules (``endpoint`` options) end an utterance by
  themselves: the same final message with ``"endpoint": true``, its ``segment`` number and
  ``start`` (seconds into the stream); the stream stays open and decoding goes on from a fresh
  state (partials carry ``segment`` too and cover only the current one);
- on a protocol error: ``{"type": "error", "message": "..."}``, then a close with code
  1003 (text that is not a control message, a wrong sample rate), 1007 (a frame that is not a
  whole number of 16-bit samples), 1008 (origin not allowed, missing or wrong token),
  1009 (frame or message over the limit), 1013 (``limits.max_streams`` streams already
  open), 1001 (nothing received for ``limits.idle_timeout_s``) or 1011 (server error).
  The other streams are not affected.

HTTP (``Authorization: Bearer TOKEN`` when the server has an ``auth_token``):
``POST /v1/transcribe`` (multipart ``file``: any audio file) -> the final message's fields;
``POST /v1/separate`` (``file``: a mixture) -> ``{"sample_rate", "streams": [{"name",
"wav_base64"}]}``; ``POST /v1/tokenize`` (``file``, ``?n_q=``) -> ``{"sample_rate",
"samples", "tokens": [[...]]}``; ``POST /v1/detokenize`` (JSON ``{"tokens": [[...]],
"length"}``) -> ``audio/wav``; ``GET /health``. Errors are ``{"type": "error", "message"}``
with 400 (not audio), 401 (token), 403 (origin), 413 (``limits.max_upload_mb``), 422
(bad input), 503 (model not loaded).
"""

from __future__ import annotations

PROTOCOL = __doc__


def run_serve(cfg) -> None:
    """Load the checkpoints ``cfg`` (``configs/serve.yaml``) names and serve until interrupted."""
    import uvicorn
    from omegaconf import OmegaConf

    from sonus.serve.app import create_app
    from sonus.serve.config import ServeConfig
    from sonus.serve.loading import load_models

    sc = ServeConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    app = create_app(sc, load_models(sc))
    ws_max = 4 * max(sc.limits.max_frame_bytes, sc.limits.max_message_bytes)  # larger frames than ours are cut by the protocol layer
    uvicorn.run(app, host=sc.host, port=sc.port, ws_max_size=ws_max, log_level="info")
