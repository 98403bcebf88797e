"""Any feature sequence as input: `feature_filepath` manifests, `model.feat_in`, and the
`conformer_transducer_features` experiment trained on generated sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sonus.asr.infer import run_decode
from sonus.asr.model import load_model
from sonus.asr.train import train
from sonus.audio.io import AudioError, load_features
from sonus.cli import compose
from sonus.data.manifest import ManifestError, read_manifest
from sonus.data.recipes.feature_synth import prepare_feature_synth

from .test_train import _scalars

SMALL = [
    "model.conformer.d_model=48", "model.conformer.layers=2", "model.conformer.conv_kernel=7", "model.pred_hidden=48",
    "model.pred_layers=1", "model.pred_embed=16", "model.joint_hidden=64", "model.dropout=0.0", "training.lr=3e-3",
    "training.warmup_steps=20", "training.batch_size=32", "training.precision=32-true", "training.num_epochs=14",
    "training.train_wer_every_n_steps=0", "training.val_decode_max_utts=50", "training.progress_bar=tqdm",
    "training.model_summary=false", "data.num_workers=0", "wandb.enabled=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    prepare_feature_synth(root, train_size=300, dev_size=40, test_size=40, dim=37, seed=0)
    return root


def test_conformer_transducer_features_learns(corpus, tmp_path):
    out = tmp_path / "exp"
    cfg = compose("train", ["experiment=conformer_transducer_features", f"data.root={corpus}", f"training.output_dir={out}", *SMALL])
    assert cfg.model.feat_in == 37 and cfg.model.encoder == "conformer"
    train(cfg)
    val = _scalars(out / "tensorboard")
    assert val["val/loss_rnnt"][-1] < 0.3 * val["val/loss_rnnt"][0], val["val/loss_rnnt"]
    model, _ = load_model(out / "last.ckpt")
    assert model.frontend is None and model.cfg.feat_in == 37 and model.predictor is not None and model.las is None
    dec = compose("decode", [f"model.checkpoint={out / 'last.ckpt'}", f"data.test_manifest={corpus / 'test.jsonl'}",
                             f"output_path={tmp_path / 'd.jsonl'}", "decoding.beam_size=4"])  # fmt: skip
    summary = run_decode("rnnt", dec)
    assert summary.utterances == 40
    assert summary.first_pass.cer < 0.3, summary.first_pass  # separable runs of characters: learnt in a few epochs


def test_feature_manifest_fields(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3), np.float32))
    lines = [
        {"id": "a", "feature_filepath": "a.npy", "duration": 0.05, "text": "x"},
        {"id": "b", "feature_filepath": "a.npy", "audio_filepath": "a.wav", "duration": 0.05, "text": "x"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: give either 'audio_filepath' or 'feature_filepath'"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text(json.dumps(lines[0]) + "\n")
    (u,) = read_manifest(tmp_path / "m.jsonl", check_files=True)
    assert u.feature_filepath == str(tmp_path / "a.npy") and u.audio_filepath is None and u.path == u.feature_filepath


def test_bad_feature_files_name_the_file(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.ones((4, 3), np.float64))
    assert load_features(good, 3).dtype.is_floating_point and load_features(good).shape == (4, 3)
    with pytest.raises(AudioError, match=r"good\.npy: features have D = 3, the model expects model.feat_in = 37"):
        load_features(good, 37)
    np.save(tmp_path / "vec.npy", np.ones(4))
    with pytest.raises(AudioError, match=r"vec\.npy: features must be a numeric \(T, D\) array"):
        load_features(tmp_path / "vec.npy")
    np.save(tmp_path / "nan.npy", np.full((2, 2), np.nan))
    with pytest.raises(AudioError, match=r"nan\.npy: features contain NaN"):
        load_features(tmp_path / "nan.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(AudioError, match=r"obj\.npy: cannot read features"):  # never unpickled
        load_features(tmp_path / "obj.npy")
    (tmp_path / "cut.npy").write_bytes(good.read_bytes()[:100])
    with pytest.raises(AudioError, match=r"cut\.npy: cannot read features"):
        load_features(tmp_path / "cut.npy")
    with pytest.raises(AudioError, match=r"gone\.npy: feature file not found"):
        load_features(tmp_path / "gone.npy")


def test_audio_model_rejects_feature_manifest(corpus, tmp_path):
    cfg = compose("train", [f"data.train_manifest={corpus / 'train.jsonl'}", f"data.dev_manifest={corpus / 'dev.jsonl'}",
                            f"training.output_dir={tmp_path}", "model.tokenizer=char", "wandb.enabled=false"])  # fmt: skip
    with pytest.raises(ValueError, match=r"data.train_manifest: 300 of 300 records are feature sequences and model.feat_in=None"):
        train(cfg)
