"""``model.init_checkpoint``: a new run starts from a trained model's sizes, tokenizer and weights,
with a fresh optimizer and step; a file that is no sonus ASR checkpoint is an error naming it."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sonus.asr.model import TwoPassASR, load_checkpoint, save_model
from sonus.asr.train import model_config_from, train
from sonus.cli import compose
from sonus.data.manifest import read_manifest
from sonus.text.tokenizer import CharTokenizer, Tokenizer, TokenizerError

# The experiment asks for other sizes than the checkpoint has, and for the pruned loss the checkpoint
# was not trained with: the checkpoint's sizes must win, the loss stays the experiment's.
RUN = [
    "model.tokenizer=unigram", "model.vocab_size=20", "model.encoder_hidden=40", "model.encoder_layers=1",
    "model.pred_hidden=24", "model.pred_embed=8", "model.joint_hidden=24", "model.las.enc2_hidden=16",
    "model.las.dec_hidden=24", "model.las.embedding_dim=8", "model.loss=pruned", "model.pruned.range=3",
    "training.batch_size=16", "training.max_duration=30", "training.max_steps=2", "training.train_wer_every_n_steps=0",
    "training.progress_bar=tqdm", "training.model_summary=false", "data.num_workers=0", "wandb.enabled=false",
]  # fmt: skip
CKPT_SIZES = [
    "model.encoder_hidden=32", "model.encoder_layers=2", "model.pred_hidden=16", "model.pred_embed=8",
    "model.joint_hidden=32", "model.las.enc2_hidden=16", "model.las.dec_hidden=16", "model.las.embedding_dim=8",
]  # fmt: skip


def _save_source(path: Path, tok: Tokenizer) -> Path:
    """A checkpoint with the sizes of CKPT_SIZES, the full RNN-T loss and random weights."""
    m = compose("train", CKPT_SIZES).model
    torch.manual_seed(7)
    model = TwoPassASR(model_config_from(m, tok.vocab_size, n_mels=80, sample_rate=16000))
    save_model(path, model, tok, normalize={"lowercase": True, "remove_punctuation": True})
    return path


def _overrides(corpus: dict[str, Path], out: Path, init: Path | str) -> list[str]:
    return [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}", f"training.output_dir={out}", f"model.init_checkpoint={init}", *RUN]


class _AtStart(pl.Callback):
    """Keeps the weights and tokenizer the run starts training with."""

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.weights = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
        self.tokenizer = module.tokenizer


def test_run_starts_from_the_checkpoint(tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    texts = [u.text for u in read_manifest(tone_corpus["train"])]
    source = _save_source(tmp_path / "source.ckpt", CharTokenizer.train(texts))
    src = load_checkpoint(source)
    out, start = tmp_path / "run", _AtStart()
    train(compose("train", _overrides(tone_corpus, out, source)), callbacks=[start])

    assert start.tokenizer.to_bytes() == src.tokenizer.to_bytes()  # a char tokenizer, though the run asks for unigram
    assert (out / "tokenizer.chars").read_bytes() == src.tokenizer.to_bytes()
    for k, v in src.model.state_dict().items():
        if not k.startswith("cmvn."):
            assert torch.equal(start.weights[k], v), k
    # CMVN is refitted on the new training data; the pruned loss' projections are new
    assert not torch.equal(start.weights["cmvn.mean"], src.model.state_dict()["cmvn.mean"])
    assert {"simple_am.weight", "simple_lm.weight"} <= set(start.weights) - set(src.model.state_dict())

    raw = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert raw["global_step"] == 2  # a fresh run, not a resumed one
    trained = load_checkpoint(out / "last.ckpt").model.cfg
    assert trained.encoder == src.model.cfg.encoder and trained.las.enc2_hidden == 16
    assert trained.rnnt_loss.kind == "pruned" and trained.rnnt_loss.prune_range == 3


def test_text_the_tokenizer_cannot_spell_names_the_utterance(tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    source = _save_source(tmp_path / "abc.ckpt", CharTokenizer("abc "))  # the corpus also says d, e, f
    with pytest.raises(TokenizerError, match=r"train\.jsonl: utterance 'train-\d+' \(record \d+\): characters not in"):
        train(compose("train", _overrides(tone_corpus, tmp_path / "run", source)))


def test_bad_checkpoints_are_errors_naming_the_file(tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    def run(init: Path) -> None:
        train(compose("train", _overrides(tone_corpus, tmp_path / "run", init)))

    with pytest.raises(FileNotFoundError, match=r"model\.init_checkpoint: checkpoint not found: .*absent\.ckpt"):
        run(tmp_path / "absent.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    _save_source(corrupt, CharTokenizer("abcdef "))
    corrupt.write_bytes(corrupt.read_bytes()[:1000])  # truncated
    with pytest.raises(RuntimeError, match=r"model\.init_checkpoint=.*corrupt\.ckpt: not a usable sonus ASR checkpoint"):
        run(corrupt)
    torch.save({"state_dict": {}, "sonus": {"task": "separation", "model": "convtasnet"}}, tmp_path / "sep.ckpt")
    with pytest.raises(RuntimeError, match=r"sep\.ckpt: not a usable sonus ASR checkpoint .*no 'model_config'"):
        run(tmp_path / "sep.ckpt")
    torch.save({"sonus": {"model_config": {"n_src": 2}}, "state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(RuntimeError, match=r"foreign\.ckpt: not a usable sonus ASR checkpoint .*unknown keys in model"):
        run(tmp_path / "foreign.ckpt")
