"""Separation end to end on a generated mini PolSESS: `sonus train` raises SI-SDR, checkpoints
reload weights-only, `sonus evaluate separation` and `sonus separate` write their outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from sonus.audio.io import load_audio
from sonus.cli import main
from sonus.separation.infer import load_separator
from tests.data.polsess_fixture import make_mini_polsess

TINY = ["model.params.n_filters=32", "model.params.bn_channels=32", "model.params.hidden_channels=64", "model.params.skip_channels=32", "model.params.n_blocks=4", "model.params.n_repeats=1"]


def _train_args(root: Path, out: Path, epochs: int) -> list[str]:
    return [
        "train", "experiment=sep_convtasnet", "data=polsess", f"data.root={root}", "data.num_workers=0",
        "data.segment_seconds=1.0", *TINY, f"training.output_dir={out}", f"training.num_epochs={epochs}",
        "training.batch_size=4", "training.lr=5e-3", "training.progress_bar=tqdm", "training.model_summary=false",
        "wandb.enabled=false", "data.curriculum=[[0, [C, S]], [2, [SER, SR, ER, R, SE, S, E, C]]]",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("sep")
    root = make_mini_polsess(base / "polsess", n_per_split=8, seconds=1.0)
    out = base / "exp"
    assert main(_train_args(root, out, 8)) == 0
    return root, out


def test_training_raises_si_sdr(trained):
    _, out = trained
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    val = [v for _, v in ckpt["curves"]["val/loss"]]  # negative SI-SDR per validation
    assert len(val) == 8
    assert val[-1] < val[0] - 3.0, val  # at least 3 dB better
    assert ckpt["sonus"]["model"] == "convtasnet" and ckpt["sonus"]["data"]["kind"] == "polsess"
    assert (out / "best.ckpt").is_file() and list(out.glob("sep-*.ckpt"))
    assert list((out / "plots").glob("separation_epoch*.png")) and (out / "plots" / "loss.png").is_file()


def test_evaluate_writes_rows_and_summary_per_variant(trained, tmp_path):
    root, out = trained
    results = tmp_path / "results.csv"
    assert main(["evaluate", "separation", f"checkpoint={out / 'best.ckpt'}", "metrics.pesq=false", f"output={results}"]) == 0
    rows = list(csv.DictReader(open(results)))
    assert len(rows) == 8 and {"si_sdr", "si_sdri", "sdr", "stoi"} <= set(rows[0])
    summary = {r["variant"]: r for r in csv.DictReader(open(results.with_name("results_summary.csv")))}
    assert "overall" in summary and len(summary) > 2  # several variants + overall
    assert float(summary["overall"]["si_sdri"]) > 3.0
    one = tmp_path / "ser.csv"
    assert main(["evaluate", "separation", f"checkpoint={out / 'best.ckpt'}", "variant=SER", "metrics.pesq=false", "metrics.stoi=false", f"output={one}"]) == 0
    assert {r["variant"] for r in csv.DictReader(open(one))} == {"SER"}


def test_separate_writes_one_file_per_source(trained, tmp_path):
    root, out = trained
    mix = next((root / "test" / "mix").glob("*.wav"))
    assert main(["separate", f"checkpoint={out / 'best.ckpt'}", f"input={mix}", f"output_dir={tmp_path}"]) == 0
    files = sorted(tmp_path.glob("*.wav"))
    assert [f.name for f in files] == [f"{mix.stem}_s1.wav", f"{mix.stem}_s2.wav"]
    assert load_audio(files[0], 8000).shape == load_audio(mix, 8000).shape
    sep = load_separator(out / "best.ckpt")
    assert sep.sample_rate == 8000 and not sep.model.training
    chunked = tmp_path / "chunked"  # 1 s mixtures in stitched chunks of 0.5 s: same files, same lengths
    assert main(["separate", f"checkpoint={out / 'best.ckpt'}", f"input={mix}", f"output_dir={chunked}", "chunk_seconds=0.5", "overlap_seconds=0.25"]) == 0
    assert [f.name for f in sorted(chunked.glob("*.wav"))] == [f.name for f in files]
    assert load_audio(next(chunked.glob("*.wav")), 8000).shape == load_audio(mix, 8000).shape


def test_resume_continues_from_last(trained, tmp_path):
    root, out = trained
    # a run of 2 epochs, then resumed to 3, ends where an uninterrupted 3-epoch run ends
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_train_args(root, a, 2)) == 0
    assert main(_train_args(root, a, 3)) == 0
    assert main(_train_args(root, b, 3)) == 0
    wa = torch.load(a / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(b / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_not_a_separation_checkpoint(tmp_path):
    bad = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "sonus": {"task": "asr"}}, bad)
    with pytest.raises(RuntimeError, match="not a sonus separation checkpoint"):
        load_separator(bad)


def test_resume_mid_epoch_continues_from_last(trained, tmp_path):
    """Stopped by training.max_steps in the middle of an epoch (2 batches an epoch, 3 steps) and
    resumed: the shuffle (EpochSampler) skips the batch already trained on, so the run ends
    where an uninterrupted one ends."""
    root, out = trained
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*_train_args(root, a, 3), "training.max_steps=3"]) == 0
    assert torch.load(a / "last.ckpt", weights_only=True)["global_step"] == 3
    assert main(_train_args(root, a, 3)) == 0
    assert main(_train_args(root, b, 3)) == 0
    ca, cb = torch.load(a / "last.ckpt", weights_only=True), torch.load(b / "last.ckpt", weights_only=True)
    assert ca["global_step"] == cb["global_step"] == 6
    assert all(torch.allclose(ca["state_dict"][k], cb["state_dict"][k], atol=1e-6) for k in ca["state_dict"])
