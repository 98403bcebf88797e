"""From the ``data`` config group to datasets: PolSESS, a LibriMix folder, or dynamic mixing.

``data.kind`` picks the corpus (``configs/data/polsess.yaml``, ``configs/data/librimix.yaml``);
the training, validation and test sets of one config come from the same builder, so
``sonus evaluate separation`` reads exactly the data the model was validated on (its
checkpoint stores the data config).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch.utils.data import Dataset

Split = Literal["train", "val", "test"]


def _get(d: Mapping[str, Any], key: str, default: Any = None) -> Any:
    v = d.get(key, default)
    return default if v is None else v


def _held_out(value: Any, key: str) -> Any:
    """``value`` if it is a held-out speaker count or a list of speaker ids (which
    ``speaker_split`` reads as strings: YAML gives numeric ids as ints); else an error naming ``key``."""
    if (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, Sequence) and not isinstance(value, str)):
        return value
    raise ValueError(f"{key}: expected a number of speakers or a list of speaker ids, got {value!r}")


def build_dataset(d: Mapping[str, Any], split: Split, seed: int = 0, variant: str | None = None) -> Dataset:
    """The ``split`` of the corpus described by the data config ``d``.

    Training sets cut random ``segment_seconds`` crops; validation sets ``val_segment_seconds``
    from the start (None: whole mixtures); test sets are always whole. ``variant`` fixes one
    PolSESS MM-IPC condition (evaluation).

    Raises:
        ValueError: an unknown ``data.kind``, or keys a kind needs are missing (named).
    """
    kind = d.get("kind")
    seg = {"train": d.get("segment_seconds"), "val": d.get("val_segment_seconds"), "test": None}[split]
    limit = {"train": d.get("max_train"), "val": d.get("max_val"), "test": d.get("max_test")}[split]
    if kind == "polsess":
        from sonus.data.polsess import PolSESSDataset

        allowed = d.get("allowed_variants")
        return PolSESSDataset(
            d.get("root"), split, d.get("task", "SB"),
            allowed_variants=None if variant else (list(allowed) if allowed else None), variant=variant,
            sample_rate=int(d.get("sample_rate", 8000)), segment_seconds=seg, max_samples=limit, seed=seed,
            skip_missing=bool(d.get("skip_missing", False)),
        )  # fmt: skip
    if kind == "librimix":
        return _librimix(d, split, seed, seg, limit)
    raise ValueError(f"data.kind must be polsess or librimix, got {kind!r}")


def _librimix(d: Mapping[str, Any], split: Split, seed: int, seg: float | None, limit: int | None) -> Dataset:
    from sonus.data.dynamic_mix import DynamicMixDataset
    from sonus.data.librimix import (
        MixConfig,
        keep_speakers,
        librispeech_utterances,
        speaker_split,
    )
    from sonus.data.librimix_folder import LibriMixDataset
    from sonus.data.manifest import read_manifest
    from sonus.data.separation import LimitedDataset, SegmentedDataset

    sr, mode = int(d.get("sample_rate", 8000)), d.get("mode", "min")
    folder = {"train": "train", "val": "dev", "test": "test"}[split]
    dyn = d.get("dynamic_mixing") or {}
    if split == "train" and dyn.get("enabled", False):
        source = dyn.get("source")
        if not source:
            raise ValueError("data.dynamic_mixing.source: the LibriSpeech folder to mix from is not set")
        utts = librispeech_utterances(source)
        split_seed, keep = int(_get(dyn, "split_seed", 42)), _get(dyn, "train_speakers", None)
        held = [_held_out(_get(dyn, k, 2), f"data.dynamic_mixing.{k}") for k in ("dev_speakers", "test_speakers")]
        split = speaker_split(utts, *held, split_seed)
        speakers = split.with_train(keep, split_seed).train
        cfg = MixConfig(
            n_src=int(d.get("n_src", 2)), sample_rate=sr, mode=mode, noise=dyn.get("noise"), reverb=dyn.get("reverb"),
            reverberant_targets=bool(dyn.get("reverberant_targets", False)), segment=seg,
        )  # fmt: skip
        mixture = d.get("mixture", "mix_clean") if dyn.get("noise") else "mix_clean"
        speed = dyn.get("speed_perturb")
        eq = dyn.get("random_eq_db")
        kwargs = {"seed": seed, "mixture": mixture, "speed_factors": None if speed is None else [float(f) for f in speed],
                  "fill": bool(dyn.get("fill_short", False)), "eq_db": None if eq is None else float(eq)}  # fmt: skip
        num_items, own = int(_get(dyn, "num_items", 2000)), keep_speakers(utts, speakers)
        extras = list(dyn.get("extra") or [])  # more voices: manifests whose lines give `speaker`
        if not extras:
            return DynamicMixDataset(own, cfg, num_items, **kwargs)
        for i, extra in enumerate(extras):
            if not _get(extra, "manifest", None):
                raise ValueError(f"data.dynamic_mixing.extra[{i}].manifest: the manifest to mix from is not set")
        shares = [float(_get(x, "share", 0.0)) for x in extras]
        if not sum(shares) < 1.0:
            raise ValueError(f"data.dynamic_mixing.extra: the shares add up to {sum(shares):g}; they must leave some for the source")
        pools = [(own, 1.0 - sum(shares))] + [(read_manifest(x["manifest"]), share) for x, share in zip(extras, shares)]
        return DynamicMixDataset.from_pools(pools, cfg, num_items, **kwargs)
    root = d.get("root")
    if not root:
        raise ValueError("data.root: the LibriMix folder (from `sonus prepare librimix` or the real LibriMix) is not set")
    ds: Dataset = LibriMixDataset(root, folder, sample_rate=sr, mode=mode, mixture=d.get("mixture", "mix_clean"))
    if limit:
        ds = LimitedDataset(ds, int(limit))
    if seg:
        ds = SegmentedDataset(ds, float(seg) * sr, random=split == "train", seed=seed)
    return ds
