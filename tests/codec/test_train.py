"""`sonus train experiment=tokenizer_librispeech` on a tiny LibriSpeech-layout folder: runs,
lowers the validation loss, writes self-contained checkpoints and plots."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from sonus.cli import main


def _librispeech(root, n_spk=2, n_utt=6, sr=16000):
    rng = np.random.default_rng(0)
    for s in range(n_spk):
        d = root / str(100 + s) / "1"
        d.mkdir(parents=True)
        lines = []
        for u in range(n_utt):
            t = np.arange(int(sr * 1.2)) / sr
            f0 = rng.uniform(100, 250)
            x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t)) * 0.1
            uid = f"{100 + s}-1-{u:04d}"
            sf.write(d / f"{uid}.flac", x.astype(np.float32), sr)
            lines.append(f"{uid} HELLO")
        (d / f"{100 + s}-1.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_train_args(src, out, epochs: int) -> list[str]:
    """`sonus train` arguments of a tiny 8 kHz tokenizer on the folder ``_librispeech`` made."""
    return [
        "train", "experiment=tokenizer_librispeech", f"data.source={src}", "data.val_fraction=0.2", "data.num_workers=0",
        "data.segment_seconds=0.5", "data.val_segment_seconds=1.0", "model.sample_rate=8000", "model.hop=80", "model.n_fft=320",
        "model.n_mels=32", "model.hidden_dim=32", "model.encoder_layers=1", "model.decoder_layers=1", "model.rvq.dim=16",
        "model.rvq.n_q=2", "model.rvq.codebook_size=16", f"training.output_dir={out}", f"training.num_epochs={epochs}",
        "training.batch_size=4", "training.lr=3e-3", "training.warmup_steps=2", "training.total_steps=100",
        "training.progress_bar=tqdm", "training.model_summary=false", "wandb.enabled=false",
    ]  # fmt: skip


def test_tokenizer_training_runs_and_lowers_val_loss(tmp_path):
    src = _librispeech(tmp_path / "ls")
    out = tmp_path / "exp"
    assert main(tiny_train_args(src, out, epochs=6)) == 0
    ck = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    val = [v for _, v in ck["curves"]["val/loss"]]
    assert len(val) == 6 and val[-1] < 0.8 * val[0], val
    assert ck["sonus"]["task"] == "codec" and ck["sonus"]["config"]["rvq"]["n_q"] == 2
    assert (out / "best.ckpt").is_file() and list((out / "plots").glob("reconstruction_epoch*.png"))


def test_tokenize_detokenize_commands(tmp_path):
    from sonus.codec.infer import Tokenizer
    from sonus.codec.model import CodecConfig, SpeechTokenizer
    from sonus.codec.quantize import RVQConfig

    cfg = CodecConfig(sample_rate=8000, hop=80, n_fft=320, n_mels=32, hidden_dim=32, encoder_layers=1, decoder_layers=1,
                      rvq=RVQConfig(dim=16, n_q=3, codebook_size=16))  # fmt: skip
    model = SpeechTokenizer(cfg)
    ckpt = tmp_path / "c.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "sonus": {"task": "codec", "config": cfg.to_dict()}}, ckpt)
    wav = tmp_path / "in.wav"
    sf.write(wav, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)  # 16 kHz in: resampled
    assert main(["tokenize", f"checkpoint={ckpt}", f"input={wav}", f"output={tmp_path / 'c.npy'}", "n_q=2"]) == 0
    codes = np.load(tmp_path / "c.npy")
    assert codes.shape == (2, 8000 // 80 + 1) and codes.max() < 16
    assert main(["detokenize", f"checkpoint={ckpt}", f"input={tmp_path / 'c.npy'}", f"output={tmp_path / 'out.wav'}"]) == 0
    out, sr = sf.read(tmp_path / "out.wav")
    assert sr == 8000 and abs(len(out) - 8000) <= 80
    tok = Tokenizer.from_checkpoint(ckpt)
    assert tok.bitrate(2) == 100 * 2 * 4
    import pytest

    with pytest.raises(ValueError, match="tokens must be in"):
        tok.detokenize(torch.full((2, 5), 16))


def test_evaluate_tokenizer_on_a_file_and_a_folder(tmp_path, capsys):
    from sonus.codec.model import CodecConfig, SpeechTokenizer
    from sonus.codec.quantize import RVQConfig

    cfg = CodecConfig(sample_rate=8000, hop=80, n_fft=320, n_mels=32, hidden_dim=32, encoder_layers=1, decoder_layers=1,
                      rvq=RVQConfig(dim=16, n_q=2, codebook_size=16))  # fmt: skip
    model = SpeechTokenizer(cfg)
    ckpt = tmp_path / "c.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "sonus": {"task": "codec", "config": cfg.to_dict()}}, ckpt)
    src = _librispeech(tmp_path / "ls", n_spk=1, n_utt=3)
    one = next(src.rglob("*.flac"))
    assert main(["evaluate", "tokenizer", f"checkpoint={ckpt}", f"input={one}", f"output={tmp_path / 'r.wav'}", "metrics.pesq=false"]) == 0
    assert (tmp_path / "r.wav").is_file()
    assert main(["evaluate", "tokenizer", f"checkpoint={ckpt}", "analyze=true", f"test_dir={src}", "metrics.pesq=false"]) == 0
    printed = capsys.readouterr().out
    for key in ("mse", "mae", "peak_in", "mel_distance", "si_sdr", "stoi", "bitrate", "rtf", "codebook_used", "codebook_entropy"):
        assert key in printed
    assert "files: 3.0000" in printed
