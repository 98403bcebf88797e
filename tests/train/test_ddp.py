"""Lightning DDP with 2 CPU processes on the gloo backend: the ranks train on different
utterances and end with identical weights (checked by the module at the end of training)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.asr.test_train import TINY


@pytest.mark.slow
def test_ddp_two_cpu_ranks(tone_corpus, tmp_path):
    sonus = Path(sys.executable).parent / "sonus"
    out = tmp_path / "ddp"
    cmd = [
        str(sonus), "train", f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}",
        f"training.output_dir={out}", "training.num_epochs=2", "training.accelerator=cpu", "training.devices=2",
        "training.strategy=ddp", *TINY,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    m = re.search(r"DDP: 2 ranks; weight checksums \[(.*?)\] \(identical: (\w+)\); last epoch's utterances per rank \[(\d+), (\d+)\], on more than one rank: (\d+)", log)
    assert m, log[-3000:]
    assert m.group(2) == "True"
    n0, n1, shared = int(m.group(3)), int(m.group(4)), int(m.group(5))
    assert n0 > 0 and n1 > 0 and shared == 0, (n0, n1, shared)
    assert (out / "last.ckpt").is_file() and (out / "best.ckpt").is_file()
