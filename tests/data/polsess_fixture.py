"""A tiny PolSESS corpus made on the spot, in the real layout and CSV schema.

Every layer has its own signal (speakers and reverberations are tones at their own
frequencies, the scene is steady noise, the event a noise burst), and the stored mix is
the sum of all of a row's layers, as the corpus generator writes it. Rows alternate
indoor (even rows, with reverberation files) and outdoor (odd rows, reverb columns empty).
The column names are written out here, not imported, so that a wrong name in
``sonus.data.polsess.COLUMNS`` fails the tests.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from sonus.audio.io import save_audio

CSV_COLUMNS = [
    "subset", "speaker1File", "speaker2File", "SSR", "eventFile", "sceneFile",
    "reverbForSpeaker1", "reverbForSpeaker2", "reverbForEvent", "mixFile", "sceneClass", "eventClass",
]  # fmt: skip
LAYER_FOLDERS = ("clean", "event", "mix", "scene", "sp1_reverb", "sp2_reverb", "ev_reverb")
# tone frequency (Hz) and amplitude of the tonal layers; all sum to < 1 without clipping
_TONES = {"sp1": (300.0, 0.20), "sp2": (520.0, 0.15), "sp1_reverb": (1100.0, 0.05), "sp2_reverb": (1500.0, 0.04), "ev_reverb": (2300.0, 0.03)}


def csv_path(root: Path, split: str) -> Path:
    return Path(root) / split / f"corpus_PolSESS_C_in_{split}_final.csv"


def _layers(n: int, sr: int, indoor: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = np.arange(n) / sr
    out = {}
    for name, (freq, amp) in _TONES.items():
        if indoor or name in ("sp1", "sp2"):
            f = freq * rng.uniform(0.95, 1.05)
            out[name] = (amp * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))).astype(np.float32)
    out["scene"] = (0.02 * rng.standard_normal(n)).astype(np.float32)
    burst = np.zeros(n, np.float32)
    a, b = int(0.3 * n), int(0.6 * n)
    burst[a:b] = 0.08 * rng.standard_normal(b - a) * np.hanning(b - a)
    out["event"] = burst
    return out


def make_mini_polsess(root: Path, n_per_split: int = 4, sample_rate: int = 8000, seconds: float = 1.0, seed: int = 0) -> Path:
    """Write ``n_per_split`` mixtures per split under ``root``; returns ``root`` (the corpus root).

    ``ROOT/<split>/{clean,event,mix,scene,sp1_reverb,sp2_reverb,ev_reverb}/*.wav`` (16-bit)
    and ``ROOT/<split>/corpus_PolSESS_C_in_<split>_final.csv``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    for split in ("train", "val", "test"):
        base = root / split
        for folder in LAYER_FOLDERS:
            (base / folder).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(n_per_split):
            indoor = i % 2 == 0
            stem = f"{split}{i:03d}"
            layers = _layers(n, sample_rate, indoor, rng)
            names = {
                "sp1": f"{stem}_s1.wav", "sp2": f"{stem}_s2.wav", "scene": f"{stem}_sc.wav", "event": f"{stem}_ev.wav",
                "sp1_reverb": f"sp1_{stem}.wav", "sp2_reverb": f"sp2_{stem}.wav", "ev_reverb": f"ev_{stem}.wav",
            }  # fmt: skip
            folders = {"sp1": "clean", "sp2": "clean", "scene": "scene", "event": "event",
                       "sp1_reverb": "sp1_reverb", "sp2_reverb": "sp2_reverb", "ev_reverb": "ev_reverb"}  # fmt: skip
            for name, wave in layers.items():
                save_audio(base / folders[name] / names[name], wave, sample_rate)
            mix_name = f"{stem}-mix-{'in' if indoor else 'out'}.wav"
            save_audio(base / "mix" / mix_name, sum(layers.values()), sample_rate)
            records.append({
                "subset": split,
                "speaker1File": names["sp1"],
                "speaker2File": names["sp2"],
                "SSR": int(rng.integers(-5, 6)),
                "eventFile": names["event"],
                "sceneFile": names["scene"],
                "reverbForSpeaker1": names["sp1_reverb"] if indoor else "",
                "reverbForSpeaker2": names["sp2_reverb"] if indoor else "",
                "reverbForEvent": names["ev_reverb"] if indoor else "",
                "mixFile": mix_name,
                "sceneClass": "office" if indoor else "street",
                "eventClass": "door" if indoor else "car_horn",
            })  # fmt: skip
        with open(csv_path(root, split), "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(records)
    return root
