"""Endpointing: the server ends utterances by itself and the stream goes on; each segment's
final is the offline decoding of exactly that segment's audio."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sonus.serve.config import Endpoint, endpoint_reached

from .conftest import OPTIONS, offline, running, serve_config, speech
from .test_stream import CHUNK, open_ws

FRAME_S = 0.04


@pytest.mark.parametrize(
    ("tokens", "frames", "enc_frames", "want"),
    [
        ([], None, 10, None),  # nothing said yet, short
        ([], None, 250, "reset"),  # 10 s of nothing: start afresh
        ([5], [3], 34, "final"),  # frames 4..33 blank: 1.2 s after the last token
        ([5], [3], 33, None),  # 1.16 s: not yet
        ([5, 6], [3, 440], 450, None),  # 18 s long but still talking
        ([5, 6], [3, 499], 500, "final"),  # 20 s: the length rule
        ([5], None, 100, None),  # no alignment: only the length rule
    ],
)
def test_endpoint_rules(tokens, frames, enc_frames, want):
    assert endpoint_reached(Endpoint(), tokens, frames, enc_frames, FRAME_S) == want
    assert endpoint_reached(Endpoint(enabled=False), tokens, frames, enc_frames, FRAME_S) is None


def test_endpoint_options_are_checked():
    with pytest.raises(ValueError, match="endpoint.trailing_blank_s"):
        Endpoint(trailing_blank_s=0)


def test_segments_are_decoded_like_separate_utterances(asr_checkpoint):
    pcm = np.concatenate([speech("abc fed bad cab", seed=1), speech("dab bead face", seed=2)])
    ep = Endpoint(max_utterance_s=0.64, trailing_blank_s=100.0, silence_reset_s=100.0)  # the length rule only
    finals = []
    with running(serve_config(asr_checkpoint, endpoint=ep)) as (base, _), open_ws(base) as ws:
        for s in range(0, len(pcm), CHUNK):
            ws.send(pcm[s : s + CHUNK].tobytes())
        ws.send(json.dumps({"event": "end"}))
        while not finals or finals[-1]["endpoint"]:
            msg = json.loads(ws.recv(timeout=30))
            assert msg["type"] in ("partial", "final"), msg
            if msg["type"] == "final":
                finals.append(msg)
    assert len(finals) >= 3 and all(f["endpoint"] for f in finals[:-1]), [f["segment"] for f in finals]
    assert [f["segment"] for f in finals] == list(range(len(finals)))
    start = 0
    for f in finals:
        begin = round(f["start"] * 16000)
        assert begin >= start  # segments follow each other (a silent one may be skipped)
        piece = pcm[begin : f["samples"]]
        assert len(piece) == round(f["duration"] * 16000) > 0
        assert f["text"] == offline(asr_checkpoint, piece, OPTIONS)[1].best.text
        assert all(begin / 16000 <= w["start"] < w["end"] <= f["samples"] / 16000 + 1e-6 for w in f["words"])
        start = f["samples"]
    assert finals[-1]["samples"] == len(pcm)



@pytest.mark.parametrize("endpointing", [False, True])
def test_end_with_no_audio_since_the_last_final_gives_an_empty_final(asr_checkpoint, endpointing):
    """A segment with no audio (the client ends right after connecting, or right after the
    endpoint rules ended an utterance on the last whole chunk): an empty final, not an error."""
    cfg = serve_config(asr_checkpoint, endpoint=Endpoint(enabled=endpointing))
    with running(cfg) as (base, _), open_ws(base) as ws:
        ws.send(json.dumps({"sample_rate": 16000}))
        ws.send(json.dumps({"event": "end"}))
        msg = json.loads(ws.recv(timeout=30))
    assert msg["type"] == "final" and msg["text"] == "" and msg["samples"] == 0 and msg["nbest"] == [] and not msg["endpoint"], msg
