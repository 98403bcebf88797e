"""The speech tokenizer at inference: ``Tokenizer.from_checkpoint(path)``, ``tokenize``, ``detokenize``.

    sonus tokenize checkpoint=CKPT input=in.wav output=codes.npy      # (n_q, frames) int16/int32
    sonus detokenize checkpoint=CKPT input=codes.npy output=out.wav
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sonus.audio.io import load_audio, resample, save_audio
from sonus.codec.model import CodecConfig, SpeechTokenizer
from sonus.train.checkpoint import read_checkpoint


class Tokenizer:
    """A trained :class:`SpeechTokenizer` in eval mode, with sample-rate handling."""

    def __init__(self, model: SpeechTokenizer) -> None:
        self.model = model.eval()
        self.cfg: CodecConfig = model.cfg

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Tokenizer:
        """A training checkpoint (Lightning ``.ckpt``), read with ``weights_only=True``."""
        ckpt = read_checkpoint(path, map_location)
        meta = ckpt.get("sonus", {})
        if meta.get("task") != "codec":
            raise RuntimeError(f"{path}: not a sonus tokenizer checkpoint (task {meta.get('task')!r})")
        model = SpeechTokenizer(CodecConfig.from_dict(meta["config"]))
        sd = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return cls(model)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def bitrate(self, n_q: int | None = None) -> float:
        return self.cfg.bitrate(n_q)

    @torch.no_grad()
    def tokenize(self, wave: torch.Tensor | np.ndarray, sample_rate: int, n_q: int | None = None) -> torch.Tensor:
        """(S,) mono waveform at ``sample_rate`` (resampled as needed) -> LongTensor (n_q, frames)."""
        x = np.asarray(wave, dtype=np.float32) if not isinstance(wave, torch.Tensor) else wave.float().cpu().numpy()
        if x.ndim != 1:
            raise ValueError(f"tokenize expects a mono (S,) waveform, got shape {x.shape}")
        x = resample(x, sample_rate, self.sample_rate)
        p = next(self.model.parameters())
        return self.model.encode(torch.from_numpy(x)[None].to(p.device), n_q)[0].cpu()

    @torch.no_grad()
    def detokenize(self, tokens: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """LongTensor (n_q', frames) (the first n_q' quantizers: any bitrate) -> (S,) waveform at ``sample_rate``."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() != 2:
            raise ValueError(f"detokenize expects (n_q, frames) tokens, got shape {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.rvq.codebook_size:
            raise ValueError(f"tokens must be in [0, {self.cfg.rvq.codebook_size}), got [{int(tokens.min())}, {int(tokens.max())}]")
        p = next(self.model.parameters())
        return self.model.decode(tokens[None].to(p.device), length)[0].float().cpu()


def tokenize_file(tok: Tokenizer, input: str | os.PathLike, output: str | os.PathLike, n_q: int | None = None) -> np.ndarray:
    """Write the codes of an audio file as a (n_q, frames) .npy; returns them."""
    codes = tok.tokenize(load_audio(input, tok.sample_rate), tok.sample_rate, n_q).numpy()
    codes = codes.astype(np.int16 if tok.cfg.rvq.codebook_size <= 32768 else np.int32)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    np.save(output, codes)
    return codes


def detokenize_file(tok: Tokenizer, input: str | os.PathLike, output: str | os.PathLike) -> torch.Tensor:
    """Decode a (n_q, frames) .npy of codes to a wav at the tokenizer's rate."""
    codes = np.load(input, allow_pickle=False)
    wave = tok.detokenize(torch.from_numpy(codes.astype(np.int64)))
    save_audio(output, wave, tok.sample_rate)
    return wave


def reconstruction_metrics(ref: np.ndarray, rec: np.ndarray, sample_rate: int, pesq: bool = True, stoi: bool = True) -> dict[str, float]:
    """MSE, MAE, peaks, log-mel distance, SI-SDR, PESQ (wide band at 16 kHz), STOI of a reconstruction."""
    from sonus.audio.features import mel_filterbank
    from sonus.metrics.signal import pesq_score, si_sdr, stoi_score

    n = min(len(ref), len(rec))
    ref, rec = np.asarray(ref[:n], np.float32), np.asarray(rec[:n], np.float32)
    out = {"mse": float(np.mean((ref - rec) ** 2)), "mae": float(np.mean(np.abs(ref - rec))),
           "peak_in": float(np.abs(ref).max()), "peak_out": float(np.abs(rec).max())}  # fmt: skip
    fb = mel_filterbank(1024, 80, sample_rate, 0.0, sample_rate / 2).t()
    w = torch.hann_window(1024)

    def logmel(x: np.ndarray) -> torch.Tensor:
        s = torch.stft(torch.from_numpy(x), 1024, 256, window=w, return_complex=True).abs().pow(2)
        return torch.log10(fb @ s + 1e-5)

    out["mel_distance"] = float((logmel(ref) - logmel(rec)).abs().mean())
    out["si_sdr"] = float(si_sdr(torch.from_numpy(rec), torch.from_numpy(ref)))
    if pesq:
        wb_ref, wb_rec = resample(ref, sample_rate, 16000), resample(rec, sample_rate, 16000)
        out["pesq_wb"] = pesq_score(wb_rec, wb_ref, 16000)
    if stoi:
        out["stoi"] = stoi_score(rec, ref, sample_rate)
    return out


def run_evaluate_tokenizer(cfg) -> dict[str, float]:
    """`sonus evaluate tokenizer`: one file (``input`` -> ``output`` wav and its metrics), or with
    ``analyze=true`` every audio file of ``test_dir``: mean metrics, codebook use over the whole
    folder, bitrate and real-time factor."""
    import time

    from sonus.metrics.codebook import CodebookCounter
    from sonus.separation.infer import AUDIO_SUFFIXES

    tok = Tokenizer.from_checkpoint(cfg.checkpoint)
    n_q = cfg.get("n_q") or tok.cfg.rvq.n_q
    m = cfg.get("metrics") or {}
    if cfg.get("analyze"):
        files = sorted(p for p in Path(cfg.test_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{cfg.test_dir}: no audio files")
    else:
        files = [Path(cfg.input)]
    counter = CodebookCounter(tok.cfg.rvq.n_q, tok.cfg.rvq.codebook_size)
    rows, seconds, busy = [], 0.0, 0.0
    from tqdm.auto import tqdm

    for f in tqdm(files, desc="tokenizer", unit="file"):
        wave = load_audio(f, tok.sample_rate)
        t0 = time.perf_counter()
        codes = tok.tokenize(wave, tok.sample_rate, n_q)
        rec = tok.detokenize(codes, length=wave.shape[0])
        busy += time.perf_counter() - t0
        seconds += wave.shape[0] / tok.sample_rate
        counter.update(codes)
        rows.append(reconstruction_metrics(wave.numpy(), rec.numpy(), tok.sample_rate, bool(m.get("pesq", True)), bool(m.get("stoi", True))))
        if not cfg.get("analyze") and cfg.get("output"):
            save_audio(cfg.output, rec, tok.sample_rate)
    usage = counter.usage()
    summary = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    summary |= {"bitrate": tok.bitrate(n_q), "rtf": busy / seconds, "codebook_used": usage.mean_used,
                "codebook_entropy": usage.mean_entropy, "files": float(len(rows))}  # fmt: skip
    for k, v in summary.items():
        print(f"{k:>18}: {v:.4f}")
    return summary
