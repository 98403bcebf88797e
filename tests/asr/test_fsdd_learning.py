"""Real speech: train `fsdd_digits` on 4 FSDD speakers (at most 3 minutes of training on
CPU) and recognise the fifth speaker's digits with digit error <= 15%."""

from __future__ import annotations

import time

import pytest

from sonus.asr.infer import run_decode
from sonus.asr.train import train
from sonus.cli import compose
from sonus.data.recipes.fsdd import prepare_fsdd

from ..conftest import SHARED_DATA

FSDD = SHARED_DATA / "fsdd"


@pytest.mark.slow
@pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD}")
def test_fsdd_digits_unseen_speaker(tmp_path):
    data = tmp_path / "fsdd"
    prepare_fsdd(FSDD, data, test_speakers=("theo",))
    exp = tmp_path / "exp"
    cfg = compose("train", ["experiment=fsdd_digits", f"data.root={data}", f"training.output_dir={exp}",
                            "wandb.enabled=false", "training.progress_bar=tqdm", "training.model_summary=false"])  # fmt: skip
    assert cfg.training.time_budget_minutes <= 3
    start = time.monotonic()
    train(cfg)
    minutes = (time.monotonic() - start) / 60
    assert minutes <= 3.5, minutes  # budget 3 min, stopped at an epoch end
    out = tmp_path / "decode.jsonl"
    dec = compose("decode", [f"model.checkpoint={exp / 'best.ckpt'}", f"data.test_manifest={data / 'test.jsonl'}",
                             f"data.dev_manifest={data / 'dev.jsonl'}", "decoding.tune=true", f"output_path={out}"])  # fmt: skip
    summary = run_decode("two_pass", dec)
    print(f"FSDD unseen speaker 'theo': digit error two-pass {100 * summary.final.wer:.1f}%, RNN-T {100 * summary.first_pass.wer:.1f}%"
          f" over {summary.utterances} utterances, trained {minutes:.1f} min")
    assert summary.utterances == 500
    assert summary.final.wer <= 0.15, summary
