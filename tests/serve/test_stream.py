"""The WebSocket stream: streamed == offline, many streams at once, and every limit and bad input
answered with an error message and a clean close while the server keeps serving others."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from sonus.asr.decoding import Decoder, DecodingOptions
from sonus.asr.infer import load_lexicon
from sonus.asr.model import load_checkpoint
from sonus.serve.config import LexiconLM, ServeConfig
from sonus.serve.engine import StreamEngine

from .conftest import OPTIONS, offline, running, serve_config, speech

CHUNK = 2560  # samples per frame sent: 160 ms


def open_ws(base: str, **kw) -> ClientConnection:
    return connect(f"ws://{base}/v1/stream" + kw.pop("query", ""), open_timeout=10, close_timeout=5, **kw)


def stream_audio(base: str, pcm: np.ndarray, piece: int = CHUNK, **kw) -> tuple[list[dict], dict]:
    """Send ``pcm`` in pieces, then end -> (partials, final); the server must close with 1000."""
    partials = []
    with open_ws(base, **kw) as ws:
        ws.send(json.dumps({"sample_rate": 16000}))
        for s in range(0, len(pcm), piece):
            ws.send(pcm[s : s + piece].tobytes())
        ws.send(json.dumps({"event": "end"}))
        while True:
            msg = json.loads(ws.recv(timeout=30))
            if msg["type"] != "partial":
                break
            partials.append(msg)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1000, (ws.close_code, ws.close_reason)
    assert msg["type"] == "final", msg
    return partials, msg


def expect_error(ws: ClientConnection, code: int, match: str) -> str:
    """After any partials, an error naming ``match``, then the server closes with ``code``."""
    msg = json.loads(ws.recv(timeout=15))
    while msg["type"] == "partial":
        msg = json.loads(ws.recv(timeout=15))
    assert msg["type"] == "error" and match in msg["message"], msg
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)
    return msg["message"]


def still_serving(base: str, checkpoint) -> None:
    """A fresh client gets the offline transcript: the server survived what came before."""
    pcm = speech("bad cab", seed=3)
    _, final = stream_audio(base, pcm)
    assert final["text"] == offline(checkpoint, pcm, OPTIONS)[1].best.text


# -- results -------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [CHUNK, 1000, 7777])  # frames that do not line up with the decoder's chunks
def test_streamed_final_equals_offline_decoding(server, asr_checkpoint, piece):
    base, _ = server
    pcm = speech()
    partials, final = stream_audio(base, pcm, piece)
    first, want = offline(asr_checkpoint, pcm, OPTIONS)
    assert len(want.best.text.split()) >= 2, f"the test model says too little: {want.best.text!r}"
    assert final["text"] == want.best.text and final["first_pass"] == first.best.text
    assert [h["text"] for h in final["nbest"]] == [h.text for h in want.nbest]
    assert final["nbest"][0]["las_score"] is not None  # the second pass ran
    assert final["samples"] == len(pcm)
    # partials: one per 160 ms chunk, growing, the last one the first pass over all whole chunks
    assert [p["samples"] for p in partials] == [CHUNK * (k + 1) for k in range(len(pcm) // CHUNK)]
    assert partials[-1]["text"] == first.best.text[: len(partials[-1]["text"])]
    # word timings: the final's words, in order, inside the audio
    assert [w["word"] for w in final["words"]] == final["text"].split()
    ends = [0.0] + [t for w in final["words"] for t in (w["start"], w["end"])]
    assert ends == sorted(ends) and ends[-1] <= len(pcm) / 16000 + 0.04, final["words"]


def test_audio_of_whole_chunks_ends_cleanly(server, asr_checkpoint):
    """Nothing is left over at the end (the tail is empty)."""
    base, _ = server
    pcm = speech()[: 6 * CHUNK]
    _, final = stream_audio(base, pcm)
    assert final["text"] == offline(asr_checkpoint, pcm, OPTIONS)[1].best.text and final["samples"] == 6 * CHUNK


def test_beam_search_final_has_an_nbest_list(asr_checkpoint):
    opts = DecodingOptions(strategy="modified_beam", beam_size=3)
    with running(replace(serve_config(asr_checkpoint), decoding=opts)) as (base, _):
        pcm = speech()
        _, final = stream_audio(base, pcm)
    _, want = offline(asr_checkpoint, pcm, opts)
    assert len(final["nbest"]) == 3 and [h["text"] for h in final["nbest"]] == [h.text for h in want.nbest]
    assert [h["score"] for h in final["nbest"]] == pytest.approx([h.score for h in want.nbest], abs=1e-4)


def stream_together(base: str, app, pcms: list[np.ndarray]) -> dict[int, dict]:
    """Stream every pcm at once, each from its own client thread -> the finals by index; the
    server must have decoded some of them together."""
    finals: dict[int, dict] = {}

    def client(i: int) -> None:
        finals[i] = stream_audio(base, pcms[i], piece=CHUNK // 2)[1]

    steps = app.state.engine.steps
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(pcms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(finals) == list(range(len(pcms)))
    assert app.state.engine.steps - steps < sum(len(p) // CHUNK for p in pcms), "streams were never decoded together"
    return finals


def test_concurrent_streams_each_get_their_own_transcript(server, asr_checkpoint):
    texts = ["abc fed", "bad cab dec", "face abc", "cab"]
    pcms = [speech(t, seed=i) for i, t in enumerate(texts)]
    finals = stream_together(*server, pcms)
    for i, pcm in enumerate(pcms):
        assert finals[i]["text"] == offline(asr_checkpoint, pcm, OPTIONS)[1].best.text, i


def test_beam_search_with_a_lexicon_lm_equals_offline(asr_checkpoint, tmp_path):
    """``decoding.lm``: streams decoded together fuse the lexicon as offline decoding with the
    same LM does, and the LM changes the result."""
    words = tmp_path / "words.txt"
    words.write_text("abc fed bad cab\ndec face\n")
    lm = LexiconLM(str(words), oov_logprob=-3.0, word_bonus=1.5)
    opts = DecodingOptions(strategy="modified_beam", beam_size=3, lm_weight=0.8)
    texts = ["abc fed bad cab", "bad cab dec", "face abc"]
    pcms = [speech(t, seed=i) for i, t in enumerate(texts)]
    with running(replace(serve_config(asr_checkpoint), decoding=opts, lm=lm)) as (base, app):
        finals = stream_together(base, app, pcms)
    ck = load_checkpoint(asr_checkpoint)
    lexicon = load_lexicon(words, ck.tokenizer, ck.normalize, lm.oov_logprob, lm.word_bonus)
    changed = False
    for i, pcm in enumerate(pcms):
        want = _offline_with(ck, lexicon, opts, pcm)
        assert [h["text"] for h in finals[i]["nbest"]] == [h.text for h in want.nbest], i
        assert [h["score"] for h in finals[i]["nbest"]] == pytest.approx([h.score for h in want.nbest], abs=1e-4)
        changed |= [h["text"] for h in finals[i]["nbest"]] != [h.text for h in offline(asr_checkpoint, pcm, replace(opts, lm_weight=0.0))[1].nbest]
    assert changed, "the LM changed no n-best: the test shows nothing about fusion"
    with pytest.raises(ValueError, match="decoding.lm.text"):
        ServeConfig.from_dict({"checkpoint": str(asr_checkpoint), "decoding": {"strategy": "modified_beam", "lm": {"weight": 0.5}}})
    with pytest.raises(ValueError, match="greedy"):
        ServeConfig.from_dict({"checkpoint": str(asr_checkpoint), "decoding": {"strategy": "greedy", "lm": {"text": str(words), "weight": 0.5}}})
    assert ServeConfig.from_dict({"checkpoint": "x", "decoding": {"strategy": "beam", "lm": {"text": "w", "weight": 0.5}}}).decoding.lm_weight == 0.5
    with pytest.raises(ValueError, match="decoding.lm.weight"):
        ServeConfig.from_dict({"checkpoint": "x", "decoding": {"strategy": "beam", "lm_weight": 0.5}})


def _offline_with(ck, lexicon, opts: DecodingOptions, pcm: np.ndarray):
    wave = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]
    return Decoder(ck.model, ck.tokenizer, opts, lexicon).decode(wave, torch.tensor([len(pcm)]))[1][0]


def test_a_stream_joins_others_midway_with_the_lm(asr_checkpoint, tmp_path):
    """A fresh stream's LM state stacks with one that has decoded for a while: steps are taken by
    hand (the engine marked running, no worker thread), so the second stream surely joins the
    first in mid-utterance; both finals equal offline decoding with the LM."""
    words = tmp_path / "words.txt"
    words.write_text("abc fed bad cab\ndec face\n")
    ck = load_checkpoint(asr_checkpoint)
    lexicon = load_lexicon(words, ck.tokenizer, ck.normalize, -3.0, 1.5)
    for strategy in ("modified_beam", "beam"):
        opts = DecodingOptions(strategy=strategy, beam_size=3, lm_weight=0.8)
        engine = StreamEngine(ck.model, ck.tokenizer, opts, lm=lexicon)
        engine._running = True
        pcms = [speech("abc fed bad cab", seed=5), speech("face dec abc", seed=6)]
        got: list[list[dict]] = [[], []]
        a = engine.open(got[0].append)
        engine.feed(a, pcms[0][: 4 * CHUNK])
        for _ in range(4):
            engine._once()
        b = engine.open(got[1].append)
        engine.feed(a, pcms[0][4 * CHUNK :])
        engine.feed(b, pcms[1])
        rows = engine.rows_decoded
        engine._once()
        assert engine.rows_decoded - rows == 2, "the two streams were not stacked"
        while a.pending_samples >= CHUNK or b.pending_samples >= CHUNK:
            engine._once()
        engine.end(a)
        engine.end(b)
        engine._once()
        engine._running = False
        engine._finals.shutdown(wait=True)
        for i, pcm in enumerate(pcms):
            final = got[i][-1]
            assert final["type"] == "final", final
            want = _offline_with(ck, lexicon, opts, pcm)
            assert [h["text"] for h in final["nbest"]] == [h.text for h in want.nbest], (strategy, i)
            assert [h["score"] for h in final["nbest"]] == pytest.approx([h.score for h in want.nbest], abs=1e-4)


# -- bad input -----------------------------------------------------------------------------


def test_malformed_frame_odd_byte_count(server, asr_checkpoint):
    base, _ = server
    with open_ws(base) as ws:
        ws.send(speech()[:1000].tobytes())
        ws.send(b"\x00\x01\x02")
        expect_error(ws, 1007, "not a whole number of 16-bit samples")
    still_serving(base, asr_checkpoint)


def test_wrong_sample_rate(server, asr_checkpoint):
    base, _ = server
    with open_ws(base) as ws:
        ws.send(json.dumps({"sample_rate": 8000}))
        message = expect_error(ws, 1003, "sample_rate 8000")
        assert "16000" in message
    still_serving(base, asr_checkpoint)


@pytest.mark.parametrize("text", ["hello there", '{"foo": 1}', "[1, 2]"])
def test_text_where_audio_is_expected(server, asr_checkpoint, text):
    base, _ = server
    with open_ws(base) as ws:
        ws.send(speech()[:CHUNK].tobytes())
        ws.send(text)
        expect_error(ws, 1003, "expected binary 16-bit PCM" if text == "hello there" else "control message")
    still_serving(base, asr_checkpoint)


def test_abrupt_disconnect_then_others_are_served(server, asr_checkpoint):
    base, app = server
    engine = app.state.engine
    ws = open_ws(base)
    ws.send(speech()[: 4 * CHUNK].tobytes())
    time.sleep(0.3)
    ws.socket.close()  # no close frame: the network went away
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active == 0, "the dropped stream was not released"
    still_serving(base, asr_checkpoint)


# -- limits --------------------------------------------------------------------------------


def test_frame_and_message_size_limits(asr_checkpoint):
    cfg = serve_config(asr_checkpoint, limits={"max_frame_bytes": 6000, "max_message_bytes": 100})
    with running(cfg) as (base, _):
        with open_ws(base) as ws:
            ws.send(speech()[:3000].tobytes())  # exactly at the limit: fine
            ws.send(speech()[:3001].tobytes())
            expect_error(ws, 1009, "exceeds limits.max_frame_bytes=6000")
        with open_ws(base) as ws:
            ws.send(json.dumps({"sample_rate": 16000, "pad": "x" * 200}))
            expect_error(ws, 1009, "exceeds limits.max_message_bytes=100")
        still_serving(base, asr_checkpoint)


def test_too_many_streams(asr_checkpoint):
    with running(serve_config(asr_checkpoint, limits={"max_streams": 2})) as (base, app):
        a, b = open_ws(base), open_ws(base)
        a.send(speech()[:CHUNK].tobytes())
        b.send(speech()[:CHUNK].tobytes())
        a.recv(timeout=10), b.recv(timeout=10)  # both streaming (a partial each)
        with open_ws(base) as c:
            expect_error(c, 1013, "limits.max_streams=2")
        a.close()
        deadline = time.monotonic() + 10
        while app.state.engine.active > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        still_serving(base, asr_checkpoint)  # a's place is free again
        b.close()


def test_idle_timeout(asr_checkpoint):
    with running(serve_config(asr_checkpoint, limits={"idle_timeout_s": 0.5})) as (base, _):
        with open_ws(base) as ws:
            ws.send(speech()[:CHUNK].tobytes())
            assert json.loads(ws.recv(timeout=10))["type"] == "partial"
            t0 = time.monotonic()
            expect_error(ws, 1001, "limits.idle_timeout_s")
            assert 0.3 < time.monotonic() - t0 < 5
        still_serving(base, asr_checkpoint)


def test_origin_check(asr_checkpoint):
    cfg = serve_config(asr_checkpoint, allowed_origins=("https://app.example",))
    with running(cfg) as (base, _):
        with open_ws(base, origin="https://evil.example") as ws:
            expect_error(ws, 1008, "origin 'https://evil.example' is not allowed")
        pcm = speech("abc", seed=4)
        want = offline(asr_checkpoint, pcm, OPTIONS)[1].best.text
        assert stream_audio(base, pcm, origin="https://app.example")[1]["text"] == want
        assert stream_audio(base, pcm, origin=f"http://{base}")[1]["text"] == want  # the page's own origin


def test_bearer_token(asr_checkpoint):
    with running(serve_config(asr_checkpoint, auth_token="s3cret")) as (base, _):
        with open_ws(base) as ws:
            expect_error(ws, 1008, "bearer token")
        with open_ws(base, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            expect_error(ws, 1008, "bearer token")
        with open_ws(base, query="?token=wrong") as ws:
            expect_error(ws, 1008, "bearer token")
        pcm = speech("abc", seed=4)
        want = offline(asr_checkpoint, pcm, OPTIONS)[1].best.text
        assert stream_audio(base, pcm, additional_headers={"Authorization": "Bearer s3cret"})[1]["text"] == want
        assert stream_audio(base, pcm, query="?token=s3cret")[1]["text"] == want
