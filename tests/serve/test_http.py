"""HTTP endpoints: transcribe, separate, tokenize and detokenize (tiny models saved here), health,
OpenAPI, the page; errors as JSON with the right status."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from sonus.audio.io import load_audio
from sonus.codec.infer import Tokenizer as SpeechTokenizer
from sonus.codec.model import CodecConfig
from sonus.codec.model import SpeechTokenizer as Codec
from sonus.codec.quantize import RVQConfig
from sonus.separation.infer import load_separator, save_separator
from sonus.separation.models import build_model

from .conftest import OPTIONS, offline, running, serve_config, speech, write_wav


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, asr_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("http")
    torch.manual_seed(0)
    sep = root / "sep.ckpt"
    params = {"n_filters": 16, "bn_channels": 16, "hidden_channels": 16, "skip_channels": 16, "n_blocks": 2, "n_repeats": 1}
    save_separator(build_model("convtasnet", params), sep, 8000)
    codec_cfg = CodecConfig(sample_rate=16000, hop=160, n_fft=640, n_mels=32, hidden_dim=32, encoder_layers=1, decoder_layers=1,
                            rvq=RVQConfig(dim=16, n_q=4, codebook_size=32))  # fmt: skip
    codec = root / "codec.ckpt"
    model = Codec(codec_cfg).eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "sonus": {"task": "codec", "config": codec_cfg.to_dict()}}, codec)
    return {"asr": asr_checkpoint, "sep": sep, "codec": codec, "wav": write_wav(root / "speech.wav", speech())}


@pytest.fixture(scope="module")
def http(checkpoints):
    cfg = serve_config(checkpoints["asr"], separation_checkpoint=str(checkpoints["sep"]), tokenizer_checkpoint=str(checkpoints["codec"]),
                       limits={"max_upload_mb": 0.2})  # fmt: skip
    with running(cfg) as (base, _), httpx.Client(base_url=f"http://{base}", timeout=60) as client:
        yield client


def post_file(client: httpx.Client, url: str, data: bytes, name: str = "a.wav", **kw) -> httpx.Response:
    return client.post(url, files={"file": (name, data, "audio/wav")}, **kw)


def wav_of(data: bytes) -> tuple[np.ndarray, int]:
    wave, sr = sf.read(io.BytesIO(data), dtype="float32")
    return wave, sr


def test_transcribe_equals_offline_decoding(http, checkpoints):
    r = post_file(http, "/v1/transcribe", checkpoints["wav"].read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    pcm = np.round(load_audio(checkpoints["wav"], 16000).numpy() * 32768).astype(np.int16)
    _, want = offline(checkpoints["asr"], pcm, OPTIONS)
    assert body["text"] == want.best.text and len(body["text"].split()) >= 2
    assert [w["word"] for w in body["words"]] == body["text"].split()
    assert body["duration"] == pytest.approx(len(pcm) / 16000)


def test_transcribe_resamples_other_rates(http, checkpoints, tmp_path):
    wave8k = load_audio(checkpoints["wav"], 8000)
    r = post_file(http, "/v1/transcribe", write_wav(tmp_path / "8k.wav", np.round(wave8k.numpy() * 32767).astype(np.int16), 8000).read_bytes())
    assert r.status_code == 200 and r.json()["duration"] == pytest.approx(len(wave8k) / 8000, abs=1e-3)


def test_upload_errors(http):
    r = post_file(http, "/v1/transcribe", b"this is not audio at all", name="x.txt")
    assert r.status_code == 400 and r.json()["type"] == "error" and "not an audio file" in r.json()["message"]
    r = post_file(http, "/v1/transcribe", b"\x00" * 300_000)
    assert r.status_code == 413 and "max_upload_mb" in r.json()["message"]
    assert http.post("/v1/transcribe").status_code == 422  # no file


def test_separate_returns_the_separator_output(http, checkpoints):
    r = post_file(http, "/v1/separate", checkpoints["wav"].read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sample_rate"] == 8000 and [s["name"] for s in body["streams"]] == ["s1.wav", "s2.wav"]
    sep = load_separator(checkpoints["sep"])
    est = sep(load_audio(checkpoints["wav"], 8000)).float()
    est = est * (0.99 / float(est.abs().max())) if float(est.abs().max()) > 0.99 else est
    for k, s in enumerate(body["streams"]):
        wave, sr = wav_of(base64.b64decode(s["wav_base64"]))
        assert sr == 8000 and wave.shape == (est.shape[1],)
        np.testing.assert_allclose(wave, est[k].numpy(), atol=2 / 32768)


def test_tokenize_and_detokenize(http, checkpoints):
    tok = SpeechTokenizer.from_checkpoint(checkpoints["codec"])
    wave = load_audio(checkpoints["wav"], 16000)
    r = post_file(http, "/v1/tokenize", checkpoints["wav"].read_bytes(), params={"n_q": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    want = tok.tokenize(wave, 16000, 2)
    assert body["tokens"] == want.tolist() and len(body["tokens"]) == 2 and body["samples"] == len(wave)
    r = http.post("/v1/detokenize", json={"tokens": body["tokens"], "length": body["samples"]})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    out, sr = wav_of(r.content)
    ref = tok.detokenize(want, len(wave)).clamp(-1, 1).numpy()
    assert sr == 16000 and out.shape == (len(wave),)
    np.testing.assert_allclose(out, ref, atol=2 / 32768)
    bad = http.post("/v1/detokenize", json={"tokens": [[0, 1, 99]]})
    assert bad.status_code == 422 and "tokens must be in [0, 32)" in bad.json()["message"]
    assert http.post("/v1/detokenize", json={"tokens": [[0, 1], [2]]}).status_code == 422
    assert post_file(http, "/v1/tokenize", checkpoints["wav"].read_bytes(), params={"n_q": 9}).status_code == 422


def test_models_not_loaded_answer_503(asr_checkpoint, checkpoints):
    with running(serve_config(asr_checkpoint)) as (base, _), httpx.Client(base_url=f"http://{base}") as c:
        r = post_file(c, "/v1/separate", checkpoints["wav"].read_bytes())
        assert r.status_code == 503 and "separation_checkpoint" in r.json()["message"]
        assert c.post("/v1/detokenize", json={"tokens": [[1]]}).status_code == 503


def test_health_openapi_and_page(http):
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["sample_rate"] == 16000 and h["separation"] and h["tokenizer"]
    spec = http.get("/openapi.json").json()
    assert {"/v1/transcribe", "/v1/separate", "/v1/tokenize", "/v1/detokenize", "/health"} <= set(spec["paths"])
    assert '"type": "partial"' in spec["info"]["description"] and "/v1/stream" in spec["info"]["description"]
    page = http.get("/")
    assert page.status_code == 200 and 'id="record"' in page.text and "/static/app.js" in page.text
    for f in ("app.js", "pcm-worklet.js"):
        assert http.get(f"/static/{f}").status_code == 200


def test_http_token_and_origin(asr_checkpoint, checkpoints):
    cfg = serve_config(asr_checkpoint, auth_token="s3cret")
    with running(cfg) as (base, _), httpx.Client(base_url=f"http://{base}") as c:
        data = checkpoints["wav"].read_bytes()
        r = post_file(c, "/v1/transcribe", data)
        assert r.status_code == 401 and "bearer token" in r.json()["message"]
        assert post_file(c, "/v1/transcribe", data, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert post_file(c, "/v1/transcribe", data, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200  # open: load balancers probe it
        r = post_file(c, "/v1/transcribe", data, headers={"Authorization": "Bearer s3cret", "Origin": "https://evil.example"})
        assert r.status_code == 403 and "origin" in json.loads(r.text)["message"]
