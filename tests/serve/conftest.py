"""A tiny recognizer saved to a checkpoint, and a live server (uvicorn in a thread) on a free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import uvicorn

from sonus.asr.decoding import Decoder, DecodingOptions
from sonus.asr.model import TwoPassASR, load_checkpoint, save_model
from sonus.audio.io import save_audio
from sonus.serve.app import Models, create_app
from sonus.serve.config import Endpoint, Limits, ServeConfig
from sonus.text.tokenizer import CharTokenizer
from tests.asr.test_model import small_config
from tests.conftest import _speak

SR = 16000


def tiny_model() -> tuple[TwoPassASR, CharTokenizer]:
    """A random recognizer whose output follows the audio: sharp joiner posteriors that depend on
    the encoder frame only (the predictor's input to the joiner is zeroed), CMVN fitted to tone
    speech, and blank and space biased so that pauses give spaces. On ``speech()`` it emits a few words."""
    torch.manual_seed(5)
    tok = CharTokenizer("abcde ")
    model = TwoPassASR(small_config(tok.vocab_size), specaug=None, gain=None).eval()
    wave = torch.from_numpy(speech().astype(np.float32) / 32768.0)[None]
    with torch.no_grad():
        model.joiner.enc_proj.weight.mul_(30.0)
        model.joiner.out.weight.mul_(3.0)
        model.joiner.out.bias[0] += 3.0  # blank
        model.joiner.out.bias[tok.encode(" ")[0]] += 2.0
        model.joiner.pred_proj.weight.zero_()
        model.cmvn.mean.copy_(model.raw_features(wave, torch.tensor([wave.shape[1]]))[0][0].mean(0))
    return model, tok


OPTIONS = DecodingOptions(strategy="greedy", max_symbols_per_frame=1)


@pytest.fixture(scope="session")
def asr_checkpoint(tmp_path_factory) -> Path:
    model, tok = tiny_model()
    path = tmp_path_factory.mktemp("serve") / "asr.pt"
    save_model(path, model, tok)
    return path


def speech(text: str = "abc fed bad cab", seed: int = 0) -> np.ndarray:
    """Tone 'speech' (tests/conftest.py) as int16 samples at 16 kHz."""
    wave = _speak(text, SR, np.random.default_rng(seed))
    return np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)


def offline(checkpoint: Path, pcm: np.ndarray, options: DecodingOptions):
    """(first-pass, final) results of offline decoding of int16 samples."""
    ck = load_checkpoint(checkpoint)
    wave = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    first, final = Decoder(ck.model, ck.tokenizer, options).decode(wave[None], torch.tensor([len(pcm)]))
    return first[0], final[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cfg: ServeConfig, models: Models | None = None) -> Iterator[tuple[str, object]]:
    """Serve ``cfg`` on loopback in a thread -> (base URL "127.0.0.1:PORT", the app)."""
    from sonus.serve.loading import load_models

    app = create_app(cfg, models or load_models(cfg))
    ws_max = 4 * max(cfg.limits.max_frame_bytes, cfg.limits.max_message_bytes)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=cfg.port, ws_max_size=ws_max, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{cfg.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve_config(checkpoint: Path, **kw) -> ServeConfig:
    limits = kw.pop("limits", {})
    base = ServeConfig(checkpoint=str(checkpoint), port=free_port(), decoding=OPTIONS, endpoint=Endpoint(enabled=False))  # one utterance a stream unless a test asks
    return replace(base, limits=replace(Limits(), **limits), **kw)


@pytest.fixture(scope="module")
def server(asr_checkpoint) -> Iterator[tuple[str, object]]:
    """A server with default limits, greedy search and LAS rescoring."""
    with running(serve_config(asr_checkpoint)) as s:
        yield s


def write_wav(path: Path, pcm: np.ndarray, sr: int = SR) -> Path:
    save_audio(path, pcm.astype(np.float32) / 32768.0, sr)
    return path
