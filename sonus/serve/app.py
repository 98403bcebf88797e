"""The FastAPI application: the streaming WebSocket, the HTTP endpoints, the page.

``create_app(cfg, models)`` builds it from loaded models (tests pass tiny ones);
:func:`sonus.serve.run_serve` loads the checkpoints and runs it with uvicorn. The protocol
is in the package docstring (:mod:`sonus.serve`), which is also the OpenAPI description.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf
import torch
from fastapi import Depends, FastAPI, HTTPException, Request, UploadFile, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect, WebSocketState

from sonus.asr.decoding import Decoder
from sonus.asr.decoding.lexicon import Lexicon
from sonus.asr.model import ASRCheckpoint
from sonus.audio.io import resample
from sonus.codec.infer import Tokenizer as SpeechTokenizer
from sonus.separation.infer import Separator
from sonus.serve.config import ServeConfig
from sonus.serve.engine import Message, Stream, StreamEngine, transcribe_wave

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"

# Close codes (RFC 6455 section 7.4.1).
NORMAL, GOING_AWAY, UNSUPPORTED, INVALID_DATA, POLICY, TOO_BIG, INTERNAL, TRY_LATER = 1000, 1001, 1003, 1007, 1008, 1009, 1011, 1013


@dataclass
class Models:
    """What the server runs: the recognizer, and optionally a separator, a speech tokenizer and
    the lexicon LM its beam searches fuse."""

    asr: ASRCheckpoint
    separator: Separator | None = None
    speech_tokenizer: SpeechTokenizer | None = None
    lm: Lexicon | None = None


class ProtocolError(Exception):
    """A client broke the protocol: its message and the close code to send."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class TokensIn(BaseModel):
    """Speech-tokenizer codes: ``tokens[q][t]``, quantizer q (the first n_q of the codec), frame t."""

    tokens: list[list[int]]
    length: int | None = None  # samples to return (default: frames x hop)


# -- checks shared by HTTP and WebSocket ---------------------------------------------------


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """A request without Origin is not from a browser page; a page may connect from the
    server's own origin or one of ``allowed`` ("*": any)."""
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc == host


def token_ok(expected: str | None, authorization: str | None, query_token: str | None) -> bool:
    """Bearer token from the Authorization header, or ?token= (browsers cannot set WebSocket headers)."""
    if expected is None:
        return True
    given = query_token
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _read_audio(data: bytes, sample_rate: int, name: str) -> torch.Tensor:
    """Uploaded file bytes -> (S,) float32 at ``sample_rate``; 400 when it is not audio."""
    try:
        wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types
        raise HTTPException(400, f"{name}: not an audio file libsndfile can read ({type(e).__name__}: {e})") from e
    if wave.shape[0] == 0:
        raise HTTPException(400, f"{name}: no audio samples")
    return torch.from_numpy(np.ascontiguousarray(resample(wave.mean(axis=1), sr, sample_rate), dtype=np.float32))


def _wav_bytes(wave: torch.Tensor, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave.float().cpu().numpy(), -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


# -- the application -------------------------------------------------------------------------


def create_app(cfg: ServeConfig, models: Models) -> FastAPI:
    """The server for ``models`` under ``cfg``; the inference worker runs while the app does."""
    from sonus.serve import PROTOCOL

    asr = models.asr
    engine = StreamEngine(asr.model, asr.tokenizer, cfg.decoding, cfg.chunk_ms, cfg.max_batch, cfg.endpoint, models.lm)
    decoder = Decoder(asr.model, asr.tokenizer, cfg.decoding, models.lm)
    offline = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonus-serve-http")  # one HTTP job at a time
    limits, sr = cfg.limits, engine.sample_rate
    max_upload = int(limits.max_upload_mb * 1e6)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()
        offline.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="sonus", description=PROTOCOL, version="1", lifespan=lifespan)
    app.state.engine, app.state.cfg = engine, cfg

    def require_token(request: Request) -> None:
        if not token_ok(cfg.auth_token, request.headers.get("authorization"), request.query_params.get("token")):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)", {"WWW-Authenticate": "Bearer"})
        if not origin_allowed(request.headers.get("origin"), request.headers.get("host"), cfg.allowed_origins):
            raise HTTPException(403, f"origin {request.headers.get('origin')!r} is not allowed (allowed_origins)")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_upload:
            raise HTTPException(413, f"request of {int(size)} bytes exceeds limits.max_upload_mb={limits.max_upload_mb}")

    async def upload(file: UploadFile) -> bytes:
        data = await file.read(max_upload + 1)
        if len(data) > max_upload:
            raise HTTPException(413, f"upload exceeds limits.max_upload_mb={limits.max_upload_mb}")
        return data

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(offline, fn, *args)

    guarded = [Depends(require_token)]

    @app.get("/health", summary="Liveness and what is loaded")
    async def health() -> dict:
        return {
            "status": "ok", "streams": engine.active, "max_streams": limits.max_streams, "sample_rate": sr,
            "chunk_ms": cfg.chunk_ms, "separation": models.separator is not None,
            "tokenizer": models.speech_tokenizer is not None, "auth": cfg.auth_token is not None,
        }  # fmt: skip

    @app.post("/v1/transcribe", dependencies=guarded, summary="Audio file -> two-pass transcript with n-best and word timings")
    async def transcribe(file: UploadFile) -> dict:
        wave = _read_audio(await upload(file), sr, file.filename or "upload")
        return await run(transcribe_wave, decoder, wave, engine.frame_s)

    @app.post("/v1/separate", dependencies=guarded, summary="Mixture -> separated streams as base64 16-bit wavs")
    async def separate(file: UploadFile) -> dict:
        sep = models.separator
        if sep is None:
            raise HTTPException(503, "the server was started without separation_checkpoint")
        mix = _read_audio(await upload(file), sep.sample_rate, file.filename or "upload")
        est = (await run(sep, mix)).float().cpu()  # (C, S)
        peak = float(est.abs().max())
        est = est * (0.99 / peak) if peak > 0.99 else est
        wavs = [base64.b64encode(_wav_bytes(e, sep.sample_rate)).decode() for e in est]
        return {"sample_rate": sep.sample_rate, "streams": [{"name": f"s{k + 1}.wav", "wav_base64": w} for k, w in enumerate(wavs)]}

    @app.post("/v1/tokenize", dependencies=guarded, summary="Audio file -> speech-tokenizer codes (n_q, frames)")
    async def tokenize(file: UploadFile, n_q: int | None = None) -> dict:
        tok = models.speech_tokenizer
        if tok is None:
            raise HTTPException(503, "the server was started without tokenizer_checkpoint")
        if n_q is not None and not 1 <= n_q <= tok.cfg.rvq.n_q:
            raise HTTPException(422, f"n_q must be in 1..{tok.cfg.rvq.n_q}, got {n_q}")
        wave = _read_audio(await upload(file), tok.sample_rate, file.filename or "upload")
        codes = await run(tok.tokenize, wave, tok.sample_rate, n_q)
        return {"sample_rate": tok.sample_rate, "samples": int(wave.shape[0]), "tokens": codes.tolist()}

    @app.post("/v1/detokenize", dependencies=guarded, summary="Speech-tokenizer codes -> 16-bit wav", response_class=Response,
              responses={200: {"content": {"audio/wav": {}}}})  # fmt: skip
    async def detokenize(body: TokensIn) -> Response:
        tok = models.speech_tokenizer
        if tok is None:
            raise HTTPException(503, "the server was started without tokenizer_checkpoint")
        if not body.tokens or len({len(r) for r in body.tokens}) != 1 or not body.tokens[0]:
            raise HTTPException(422, "tokens must be a non-empty (n_q, frames) list of equally long rows")
        if len(body.tokens) > tok.cfg.rvq.n_q:
            raise HTTPException(422, f"tokens has {len(body.tokens)} rows; the codec has {tok.cfg.rvq.n_q} quantizers")
        try:
            wave = await run(tok.detokenize, torch.tensor(body.tokens), body.length)
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        return Response(_wav_bytes(wave, tok.sample_rate), media_type="audio/wav")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await serve_stream(ws, engine, cfg)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"type": "error", "message": exc.detail}, exc.status_code, headers=exc.headers)

    return app


# -- the WebSocket stream --------------------------------------------------------------------


async def _close(ws: WebSocket, message: str, code: int) -> None:
    """Send an error message, then close with ``code``; the client may already be gone."""
    try:
        await ws.send_json({"type": "error", "message": message})
        await ws.close(code, reason=message[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


def _admit(ws: WebSocket, engine: StreamEngine, cfg: ServeConfig) -> ProtocolError | None:
    """Why this connection may not stream (origin, token, capacity), or None."""
    origin = ws.headers.get("origin")
    if not origin_allowed(origin, ws.headers.get("host"), cfg.allowed_origins):
        return ProtocolError(f"origin {origin!r} is not allowed (allowed_origins)", POLICY)
    if not token_ok(cfg.auth_token, ws.headers.get("authorization"), ws.query_params.get("token")):
        return ProtocolError("missing or wrong bearer token (Authorization: Bearer TOKEN, or ?token=TOKEN)", POLICY)
    if engine.active >= cfg.limits.max_streams:
        return ProtocolError(f"server busy: {engine.active} streams open (limits.max_streams={cfg.limits.max_streams}); try again later", TRY_LATER)
    return None


def _audio(data: bytes, cfg: ServeConfig) -> np.ndarray:
    """A binary frame -> (S,) int16 samples; ProtocolError for a frame that is not 16-bit PCM or too big."""
    if len(data) > cfg.limits.max_frame_bytes:
        raise ProtocolError(f"audio frame of {len(data)} bytes exceeds limits.max_frame_bytes={cfg.limits.max_frame_bytes}", TOO_BIG)
    if len(data) % 2:
        raise ProtocolError(f"malformed audio frame: {len(data)} bytes is not a whole number of 16-bit samples", INVALID_DATA)
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def _control(text: str, cfg: ServeConfig, sample_rate: int, audio_started: bool) -> str:
    """A text frame -> the event it asks for ("config" or "end"); ProtocolError for anything else."""
    if len(text.encode()) > cfg.limits.max_message_bytes:
        raise ProtocolError(f"text message of {len(text.encode())} bytes exceeds limits.max_message_bytes={cfg.limits.max_message_bytes}", TOO_BIG)
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        msg = None
    if not isinstance(msg, dict):
        raise ProtocolError('expected binary 16-bit PCM frames or a JSON control message ({"sample_rate": ...} or {"event": "end"}), got text', UNSUPPORTED)
    if msg.get("event") == "end":
        return "end"
    if "sample_rate" in msg:
        if audio_started:
            raise ProtocolError("sample_rate must come before the first audio frame", UNSUPPORTED)
        if msg["sample_rate"] != sample_rate or msg.get("encoding", "pcm_s16le") != "pcm_s16le":
            raise ProtocolError(
                f"unsupported audio: sample_rate {msg['sample_rate']!r}, encoding {msg.get('encoding', 'pcm_s16le')!r}; "
                f"send 16-bit little-endian PCM (pcm_s16le) at {sample_rate} Hz",
                UNSUPPORTED,
            )
        return "config"
    raise ProtocolError(f"unknown control message {text[:80]!r}: expected {{'sample_rate': {sample_rate}}} or {{'event': 'end'}}", UNSUPPORTED)


async def serve_stream(ws: WebSocket, engine: StreamEngine, cfg: ServeConfig) -> None:
    """One client's stream: admit, receive audio and control messages, forward results, close."""
    await ws.accept()
    refused = _admit(ws, engine, cfg)
    if refused is not None:
        await _close(ws, str(refused), refused.code)
        return
    loop, outbox = asyncio.get_running_loop(), asyncio.Queue[Message]()
    stream = engine.open(lambda m: loop.call_soon_threadsafe(outbox.put_nowait, m))
    sender = asyncio.create_task(_forward(ws, outbox))
    try:
        await _receive(ws, engine, stream, cfg)
        await asyncio.wait_for(asyncio.shield(sender), timeout=max(30.0, cfg.limits.idle_timeout_s))  # until the final is sent
    except ProtocolError as e:
        engine.close(stream)
        sender.cancel()
        await _close(ws, str(e), e.code)
    except TimeoutError:
        engine.close(stream)
        sender.cancel()
        await _close(ws, "the final result took too long", INTERNAL)
    except WebSocketDisconnect:
        engine.close(stream)
        sender.cancel()
    finally:
        engine.close(stream)


async def _receive(ws: WebSocket, engine: StreamEngine, stream: Stream, cfg: ServeConfig) -> None:
    """Read frames until the client asks for the final result; ProtocolError on a bad one."""
    audio_started = False
    while True:
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=cfg.limits.idle_timeout_s)
        except TimeoutError:
            raise ProtocolError(f"no data for {cfg.limits.idle_timeout_s:g} s (limits.idle_timeout_s): closing", GOING_AWAY) from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1006))
        if msg.get("bytes") is not None:
            engine.feed(stream, _audio(msg["bytes"], cfg))
            audio_started = True
        elif msg.get("text") is not None and _control(msg["text"], cfg, engine.sample_rate, audio_started) == "end":
            engine.end(stream)
            return


async def _forward(ws: WebSocket, outbox: asyncio.Queue[Message]) -> None:
    """Send the engine's messages to the client; close normally after the last final (the one
    that answers the client's ``end``; the endpoint rules' finals leave the stream open)."""
    while True:
        msg = await outbox.get()
        if ws.client_state != WebSocketState.CONNECTED:
            return
        try:
            await ws.send_json(msg)
            if msg["type"] == "final" and not msg.get("endpoint"):
                await ws.close(NORMAL)
                return
            if msg["type"] == "error":
                await ws.close(INTERNAL, reason=msg["message"][:120])
                return
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
