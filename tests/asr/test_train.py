"""Training end to end on generated tone 'speech': loss goes down, keys are logged,
checkpoints are written and reload, training resumes, decoding writes results."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sonus.asr.infer import run_decode
from sonus.asr.model import load_model
from sonus.asr.train import train
from sonus.cli import compose, main

TINY = [
    "model.tokenizer=char", "model.encoder_hidden=64", "model.encoder_layers=2", "model.pred_hidden=48",
    "model.pred_embed=16", "model.joint_hidden=64", "model.las.enc2_hidden=32", "model.las.dec_hidden=48",
    "model.las.embedding_dim=16", "model.specaugment.time_masks=1", "training.lr=3e-3", "training.warmup_steps=20",
    "training.batch_size=16", "training.max_duration=30", "training.train_wer_every_n_steps=5",
    "training.progress_bar=tqdm", "training.model_summary=false", "data.num_workers=0", "wandb.enabled=false",
]  # fmt: skip

EXPECTED_TRAIN = ["train/loss_total", "train/loss_rnnt", "train/loss_las", "train/wer_rnnt", "train/wer_2pass", "train/cer_rnnt", "train/cer_2pass", "lr"]
EXPECTED_VAL = ["val/loss_total", "val/loss_rnnt", "val/loss_las", "val/wer_rnnt", "val/wer_2pass", "val/cer_rnnt", "val/cer_2pass", "epoch"]


def _scalars(tb_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {k: [e.value for e in acc.Scalars(k)] for k in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tone_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "tone"
    cfg = compose("train", [f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", f"training.output_dir={out}", "training.num_epochs=15", *TINY])
    train(cfg)
    return out, tone_corpus


def test_training_lowers_loss_and_logs_every_key(trained):
    out, _ = trained
    for name in ("best.ckpt", "last.ckpt", "tokenizer.chars", "config.yaml"):
        assert (out / name).is_file(), name
    scalars = _scalars(out / "tensorboard")
    for key in EXPECTED_TRAIN + EXPECTED_VAL:
        assert key in scalars, (key, sorted(scalars))
    val = scalars["val/loss_total"]
    assert len(val) == 15
    assert val[-1] < 0.6 * val[0], val
    assert scalars["val/cer_2pass"][-1] < scalars["val/cer_2pass"][0]
    assert sorted((out / "plots").glob("attention_epoch*.png")) and (out / "plots" / "loss_curve.png").is_file()


def test_top_k_checkpoints_by_validation_loss(trained):
    """training.save_top_k=3 files named rnnt-{epoch:02d}-{val_loss:.2f}.ckpt: the 3 lowest val/loss_total."""
    out, _ = trained
    files = sorted(out.glob("rnnt-*.ckpt"))
    assert len(files) == 3, files
    val = _scalars(out / "tensorboard")["val/loss_total"]
    assert sorted(float(f.stem.split("-")[2]) for f in files) == pytest.approx(sorted(val)[:3], abs=0.006)
    load_model(files[0])  # self-contained like best.ckpt


def test_checkpoint_is_self_contained_and_weights_only(trained):
    out, _ = trained
    raw = torch.load(out / "best.ckpt", map_location="cpu", weights_only=True)  # must not need pickle
    assert "sonus" in raw and "model_config" in raw["sonus"]
    model, tok = load_model(out / "best.ckpt")
    assert model.las is not None and tok.vocab_size == model.cfg.vocab_size


def test_resume_continues_from_last(trained, tmp_path):
    out, corpus = trained
    before = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    cfg = compose("train", [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}", f"training.output_dir={out}", "training.num_epochs=16", *TINY])
    train(cfg)
    after = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    per_epoch = before["global_step"] / 15
    assert after["global_step"] - before["global_step"] == pytest.approx(per_epoch, abs=1), (before["global_step"], after["global_step"])
    assert len(_scalars(out / "tensorboard")["val/loss_total"]) == 16  # one more validation, none repeated


def test_decode_two_pass_writes_results_and_summary(trained, tmp_path):
    out, corpus = trained
    res = tmp_path / "dec.jsonl"
    cfg = compose("decode", [f"model.checkpoint={out / 'best.ckpt'}", f"data.test_manifest={corpus['dev']}", f"data.dev_manifest={corpus['dev']}", "decoding.tune=true", f"output_path={res}"])
    summary = run_decode("two_pass", cfg)
    rows = [json.loads(line) for line in res.read_text().splitlines()]
    assert len(rows) == 24
    assert {"id", "ref", "hyp", "nbest"} <= set(rows[0])
    assert rows[0]["nbest"] and {"text", "score"} <= set(rows[0]["nbest"][0])
    s = json.loads(res.with_suffix(".summary.json").read_text())
    assert s["final"]["wer"] == pytest.approx(summary.final.wer)
    assert s["tuned_dev_wer"] == pytest.approx(summary.final.wer)  # tuned on the very manifest it then decodes
    assert 0.0 <= summary.las_weight <= 1.0
    assert summary.final.wer < 0.9, summary  # it learned something (untrained: 100%, empty output)


def test_cli_decode_rnnt_and_errors(trained, tmp_path, capsys):
    out, corpus = trained
    res = tmp_path / "r.jsonl"
    assert main(["decode", "rnnt", f"model.checkpoint={out / 'best.ckpt'}", f"data.test_manifest={corpus['dev']}", "decoding.beam_size=2", f"output_path={res}"]) == 0
    assert "WER" in capsys.readouterr().out
    assert main(["decode", "three_pass"]) == 2
    assert main(["train", "not-an-override"]) == 2


def test_pruned_loss_trains(tone_corpus, tmp_path):
    out = tmp_path / "pruned"
    cfg = compose("train", [
        f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", f"training.output_dir={out}",
        "training.num_epochs=8", "model.loss=pruned", "model.pruned.range=3", "model.pruned.warmup_steps=10", *TINY,
        "training.precision=bf16-mixed", "training.grad_clip=5.0",  # as the demo: fused Adam, clipped under bf16
    ])  # fmt: skip
    train(cfg)
    ck = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["optimizer_states"][0]["param_groups"][0]["fused"] is True
    scalars = _scalars(out / "tensorboard")
    assert "train/loss_rnnt_simple" in scalars and "train/loss_rnnt_pruned" in scalars
    val = scalars["val/loss_rnnt"]
    assert val[-1] < 0.7 * val[0], val
    model, _ = load_model(out / "last.ckpt")
    assert model.cfg.rnnt_loss.kind == "pruned" and model.simple_am is not None


def test_conformer_encoder_trains(tone_corpus, tmp_path):
    out = tmp_path / "conformer"
    cfg = compose("train", [
        f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", f"training.output_dir={out}",
        "training.num_epochs=8", "model.encoder=conformer", "model.conformer.d_model=32", "model.conformer.layers=2",
        "model.conformer.subsampling=stack", "model.dropout=0.0", *TINY,
    ])  # fmt: skip
    train(cfg)
    val = _scalars(out / "tensorboard")["val/loss_rnnt"]
    assert val[-1] < 0.7 * val[0], val
    model, _ = load_model(out / "last.ckpt")
    assert model.cfg.encoder.kind == "conformer" and model.cfg.encoder.conformer.d_model == 32


def test_ctc_only_model_trains(tone_corpus, tmp_path):
    """model.loss_weights.rnnt=0: no transducer; CTC first pass (validated with a CTC search), LAS second pass."""
    out = tmp_path / "ctc"
    cfg = compose("train", [
        f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", f"training.output_dir={out}",
        "training.num_epochs=8", "model.loss_weights.rnnt=0", "model.loss_weights.ctc=1", "decoding.strategy=ctc_prefix_beam",
        *TINY,
    ])  # fmt: skip
    train(cfg)
    scalars = _scalars(out / "tensorboard")
    assert {"val/loss_ctc", "val/wer_ctc", "val/cer_ctc", "val/wer_2pass", "train/loss_ctc"} <= set(scalars)
    assert "val/loss_rnnt" not in scalars and "train/loss_rnnt" not in scalars
    val = scalars["val/loss_ctc"]
    assert val[-1] < 0.7 * val[0], val
    model, _ = load_model(out / "last.ckpt")
    assert model.predictor is None and model.ctc is not None and not model.cfg.transducer


def test_resume_gives_the_uninterrupted_result(tone_corpus, tmp_path):
    """Train 4 epochs at once, or 2 then resume from last.ckpt for 2 more: the same weights.
    The checkpoint restores model, optimizer, schedule, loop position and the random streams."""
    common = [f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", *TINY]
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(compose("train", [*common, f"training.output_dir={once}", "training.num_epochs=4"]))
    train(compose("train", [*common, f"training.output_dir={twice}", "training.num_epochs=2"]))
    train(compose("train", [*common, f"training.output_dir={twice}", "training.num_epochs=4"]))  # resumes
    a = torch.load(once / "last.ckpt", weights_only=True)
    b = torch.load(twice / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"] > 0
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert _scalars(once / "tensorboard")["val/loss_total"][-1] == pytest.approx(_scalars(twice / "tensorboard")["val/loss_total"][-1])


class _Crash(pl.Callback):
    """Fail like a killed process at optimizer step ``at``, before anything is saved there."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def _same_weights(a_path: Path, b_path: Path) -> None:
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"] > 0, (a["global_step"], b["global_step"])
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_resume_mid_epoch_gives_the_uninterrupted_result(tone_corpus, tmp_path):
    """Interrupted partway through an epoch, resumed, the run ends with the weights of one never
    interrupted: (1) stopped by ``training.max_steps`` and resumed into a new folder through
    ``training.ckpt_path``; (2) crashed, with ``last.ckpt`` written every step
    (``training.last_every_minutes=0``), and resumed from it. The skipped batches are the
    epoch's own: without :func:`~sonus.train.callbacks.resume_loader_position` the resumed epoch
    would start over on batches it already trained on."""
    common = [f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", *TINY, "training.num_epochs=2"]
    once = tmp_path / "once"
    train(compose("train", [*common, f"training.output_dir={once}"]))
    steps = torch.load(once / "last.ckpt", weights_only=True)["global_step"]
    per_epoch = steps // 2
    assert per_epoch >= 4, steps
    stop = per_epoch + per_epoch // 2  # in the second epoch

    first, second = tmp_path / "stopped", tmp_path / "continued"
    train(compose("train", [*common, f"training.output_dir={first}", f"training.max_steps={stop}"]))
    assert torch.load(first / "last.ckpt", weights_only=True)["global_step"] == stop
    train(compose("train", [*common, f"training.output_dir={second}", f"training.ckpt_path={first / 'last.ckpt'}"]))
    _same_weights(once / "last.ckpt", second / "last.ckpt")

    crashed = tmp_path / "crashed"
    every_step = [*common, f"training.output_dir={crashed}", "training.last_every_minutes=0"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose("train", every_step), callbacks=[_Crash(at=per_epoch // 2)])  # in the first epoch
    assert torch.load(crashed / "last.ckpt", weights_only=True)["global_step"] == per_epoch // 2 - 1
    train(compose("train", every_step))  # resumes from last.ckpt
    _same_weights(once / "last.ckpt", crashed / "last.ckpt")


def test_gradient_accumulation_steps_once_per_k_batches(tone_corpus, tmp_path):
    """training.accumulate_grad_batches=3: one optimizer step per 3 batches (and one for an epoch's
    remainder), the learning-rate schedule counting optimizer steps; the run still learns."""
    import math

    from sonus.data.manifest import read_manifest
    from sonus.data.sampler import DurationBucketSampler

    out = tmp_path / "accumulate"
    train(compose("train", [
        f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", f"training.output_dir={out}",
        *TINY, "training.num_epochs=3", "training.accumulate_grad_batches=3",
    ]))  # fmt: skip
    batches = len(DurationBucketSampler([u.duration for u in read_manifest(tone_corpus["train"])], 30.0, 16))
    assert batches >= 6, batches
    raw = torch.load(out / "last.ckpt", weights_only=True)
    assert raw["global_step"] == 3 * math.ceil(batches / 3), (raw["global_step"], batches)
    scalars = _scalars(out / "tensorboard")
    assert scalars["lr"][-1] == pytest.approx(3e-3 * min(1.0, (raw["global_step"]) / 20), rel=0.2)  # warmup counts optimizer steps
    assert scalars["val/loss_total"][-1] < scalars["val/loss_total"][0]


def test_wandb_offline_logs_beside_tensorboard(tone_corpus, tmp_path):
    """wandb.enabled=true (offline: no key, no network) and TensorBoard together: both get the
    scalars, W&B the attention plots too. Two trainings in one process (a sweep's trials) get a
    W&B run each, each finished with its records written."""
    tiny = [o for o in TINY if not o.startswith("wandb.")]
    for name in ("first", "second"):
        out = tmp_path / name
        train(compose("train", [
            f"data.train_manifest={tone_corpus['train']}", f"data.dev_manifest={tone_corpus['dev']}", f"training.output_dir={out}",
            *tiny, "training.num_epochs=2", "wandb.enabled=true", "wandb.mode=offline",
        ]))  # fmt: skip
        assert "val/loss_total" in _scalars(out / "tensorboard")
        runs = list((out / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        records = b"".join(f.read_bytes() for f in runs[0].glob("*.wandb"))  # protobuf records: key names are plain bytes
        for key in ("val/loss_total", "train/loss_rnnt", "val/wer_2pass"):
            assert key.encode() in records, (name, key)
        assert list((runs[0] / "files" / "media" / "images").rglob("attention*.png")), name
