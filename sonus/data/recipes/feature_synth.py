"""A toy corpus of feature sequences (no audio), to try `model.feat_in` models end to end.

Each character of the text is drawn as a run of 2-5 frames near its own random prototype
vector in D dimensions (37 by default, like the brief's gesture-typing features), with
noise; words are separated by a short run of a "pause" prototype. A transducer has to
segment and label the runs: a small model learns it in a minute.
Writes ``{split}/*.npy`` (float32 (T, D)) and ``{train,dev,test}.jsonl`` manifests with
``feature_filepath``; ``duration`` is T x 10 ms::

    sonus prepare feature_synth output_dir=data/features
    sonus train experiment=conformer_transducer_features data.root=data/features
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonus.data.manifest import Utterance, write_manifest

ALPHABET = "abcdefghijklmnopqrstuvwxyz'"
WORDS = "the quick brown fox jumps over a lazy dog and we can't stop it now".split()
FRAME_S = 0.01


def prepare_feature_synth(
    output_dir: str | Path, train_size: int = 2000, dev_size: int = 200, test_size: int = 200, dim: int = 37,
    seed: int = 0, noise: float = 0.3,
) -> dict[str, Path]:  # fmt: skip
    """Write the corpus; returns the manifest path of each split."""
    sizes = {"train": train_size, "dev": dev_size, "test": test_size}
    out = Path(output_dir)
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(ALPHABET) + 1, dim)).astype(np.float32)  # last: the pause between words
    manifests = {}
    for split, n in sizes.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        utts = []
        for i in range(n):
            words = list(rng.choice(WORDS, size=int(rng.integers(1, 4))))
            rows = []
            for w, word in enumerate(words):
                if w:
                    rows += [len(ALPHABET)] * int(rng.integers(2, 4))
                for ch in word:
                    rows += [ALPHABET.index(ch)] * int(rng.integers(2, 6))
            x = protos[rows] + noise * rng.normal(size=(len(rows), dim)).astype(np.float32)
            path = out / split / f"{split}-{i:05d}.npy"
            np.save(path, x.astype(np.float32))
            utts.append(Utterance(f"{split}-{i:05d}", None, round(len(rows) * FRAME_S, 3), " ".join(words), feature_filepath=str(path)))
        manifests[split] = out / f"{split}.jsonl"
        write_manifest(manifests[split], utts)
    return manifests
