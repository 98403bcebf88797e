"""PolSESS dataset on a tiny generated corpus; the shared separation example/batch helpers."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sonus.audio.io import load_audio
from sonus.data import polsess
from sonus.data.polsess import ENV_ROOT, PolSESSDataset
from sonus.data.recipes._split import CorpusError
from sonus.data.separation import SeparationExample, collate_separation, crop

from .polsess_fixture import csv_path, make_mini_polsess

SR = 8000
N_ROWS = 8  # per split: rows 0, 2, 4, 6 indoor; 1, 3, 5, 7 outdoor

# Written out independently of the module: the layers (by CSV column) each variant sums.
SPEECH = ["speaker1File", "speaker2File"]
SPEAKER_REVERB = ["reverbForSpeaker1", "reverbForSpeaker2"]
EXPECTED_MIX = {
    "SER": SPEECH + SPEAKER_REVERB + ["sceneFile", "eventFile", "reverbForEvent"],
    "SR": SPEECH + SPEAKER_REVERB + ["sceneFile"],
    "ER": SPEECH + SPEAKER_REVERB + ["eventFile", "reverbForEvent"],
    "R": SPEECH + SPEAKER_REVERB,
    "SE": SPEECH + ["sceneFile", "eventFile"],
    "S": SPEECH + ["sceneFile"],
    "E": SPEECH + ["eventFile"],
    "C": SPEECH,
}
ES_DROPS = {"speaker2File", "reverbForSpeaker2"}  # ES leaves speaker 2 out of the mixture
EXPECTED_TARGETS = {"SB": [["speaker1File"], ["speaker2File"]], "EB": [["speaker1File", "speaker2File"]], "ES": [["speaker1File"]]}
FOLDER = {"speaker1File": "clean", "speaker2File": "clean", "sceneFile": "scene", "eventFile": "event",
          "reverbForSpeaker1": "sp1_reverb", "reverbForSpeaker2": "sp2_reverb", "reverbForEvent": "ev_reverb"}  # fmt: skip
INDOOR = {"SER", "SR", "ER", "R", "C"}
OUTDOOR = {"SE", "S", "E", "C"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mini_polsess(tmp_path_factory.mktemp("polsess"), n_per_split=N_ROWS, sample_rate=SR, seconds=0.5)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A corpus a test may damage."""
    return make_mini_polsess(tmp_path / "polsess", n_per_split=3, sample_rate=SR, seconds=0.25)


def _csv_rows(root: Path, split: str) -> dict[str, dict[str, str]]:
    with open(csv_path(root, split), newline="") as f:
        return {Path(r["mixFile"]).stem: r for r in csv.DictReader(f)}


def _sum(root: Path, split: str, row: dict[str, str], columns: list[str]) -> torch.Tensor:
    return sum(load_audio(root / split / FOLDER[c] / row[c], sample_rate=SR) for c in columns)


def _rewrite_csv(path: Path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(edit(rows))


# ------------------------------------------------------------------ variants as sums of layers


@pytest.mark.parametrize("task", ["SB", "EB", "ES"])
def test_each_variant_is_the_documented_sum_of_layer_files(corpus: Path, task: str) -> None:
    rows = _csv_rows(corpus, "val")
    for variant, columns in EXPECTED_MIX.items():
        ds = PolSESSDataset(corpus, "val", task, variant=variant)
        kinds = ({"in"} if variant in INDOOR else set()) | ({"out"} if variant in OUTDOOR else set())
        examples = list(ds)
        assert [ex.id for ex in examples] == [rid for rid in rows if rid.rsplit("-", 1)[1] in kinds], variant
        for ex in examples:
            row = rows[ex.id]
            assert ex.variant == variant
            want_mix = _sum(corpus, "val", row, [c for c in columns if task != "ES" or c not in ES_DROPS])
            assert torch.allclose(ex.mix, want_mix, atol=1e-6), (task, variant, ex.id)
            want = torch.stack([_sum(corpus, "val", row, t) for t in EXPECTED_TARGETS[task]])
            assert ex.sources.shape == want.shape == (len(EXPECTED_TARGETS[task]), int(0.5 * SR))
            assert torch.allclose(ex.sources, want, atol=1e-6), (task, variant, ex.id)


def test_full_variant_rebuilds_the_stored_mix(corpus: Path) -> None:
    """SER (indoor) and SE (outdoor) keep every layer: the sum is the corpus's own mix file."""
    rows = _csv_rows(corpus, "test")
    ds = PolSESSDataset(corpus, "test", "SB", allowed_variants=["SER", "SE"])
    assert len(ds) == N_ROWS
    for ex in ds:
        stored = load_audio(corpus / "test" / "mix" / rows[ex.id]["mixFile"], sample_rate=SR)
        assert ex.variant == ("SER" if ex.id.endswith("-in") else "SE")
        assert (ex.mix - stored).abs().max() < 8 / 32768  # 16-bit rounding of up to 8 files


# ------------------------------------------------------------------ lazy loading


@pytest.mark.parametrize(
    ("task", "variant", "folders"),
    [
        ("SB", "C", {"clean": 2}),
        ("ES", "C", {"clean": 1}),
        ("SB", "S", {"clean": 2, "scene": 1}),
        ("SB", "E", {"clean": 2, "event": 1}),
        ("SB", "R", {"clean": 2, "sp1_reverb": 1, "sp2_reverb": 1}),
        ("ES", "R", {"clean": 1, "sp1_reverb": 1}),
        ("SB", "SR", {"clean": 2, "scene": 1, "sp1_reverb": 1, "sp2_reverb": 1}),
        ("EB", "ER", {"clean": 2, "event": 1, "ev_reverb": 1, "sp1_reverb": 1, "sp2_reverb": 1}),
        ("SB", "SER", {"clean": 2, "scene": 1, "event": 1, "ev_reverb": 1, "sp1_reverb": 1, "sp2_reverb": 1}),
        ("SB", "SE", {"clean": 2, "scene": 1, "event": 1}),
    ],
)
def test_only_the_layers_a_variant_needs_are_read(corpus: Path, monkeypatch: pytest.MonkeyPatch, task, variant, folders) -> None:
    ds = PolSESSDataset(corpus, "train", task, variant=variant)
    reads: list[Path] = []
    real = polsess.load_audio

    def spy(path, *args, **kwargs):
        reads.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(polsess, "load_audio", spy)
    for i in range(len(ds)):
        reads.clear()
        ex = ds[i]
        assert Counter(p.parent.name for p in reads) == Counter(folders), (variant, task, reads)
        assert "mix" not in {p.parent.name for p in reads}
        assert all(ex.id.split("-")[0] in p.stem for p in reads)  # this row's files


# ------------------------------------------------------------------ choosing variants


def test_validation_variant_is_fixed_by_the_row(corpus: Path) -> None:
    ds = PolSESSDataset(corpus, "val", "SB", seed=0)
    first = [ds[i].variant for i in range(len(ds))]
    assert [ds[i].variant for i in range(len(ds))] == first
    ds.set_epoch(5)
    assert [ds[i].variant for i in range(len(ds))] == first
    other = PolSESSDataset(corpus, "val", "SB", seed=123)
    other.set_epoch(2)
    assert [other[i].variant for i in range(len(other))] == first
    assert len(set(first)) > 1, first
    for ex in (ds[i] for i in range(len(ds))):
        assert ex.variant in (INDOOR if ex.id.endswith("-in") else OUTDOOR), (ex.id, ex.variant)
    # a row keeps its variant when the dataset is cut shorter
    assert [x.variant for x in PolSESSDataset(corpus, "val", "SB", max_samples=3)] == first[:3]


def test_training_variants_change_with_epoch_and_repeat_for_a_seed(corpus: Path) -> None:
    def variants(ds: PolSESSDataset, epoch: int) -> list[str]:
        ds.set_epoch(epoch)
        return [ds[i].variant for i in range(len(ds))]

    ds = PolSESSDataset(corpus, "train", "SB", seed=7)
    by_epoch = [variants(ds, e) for e in range(6)]
    assert len({tuple(v) for v in by_epoch}) > 1, by_epoch
    again = PolSESSDataset(corpus, "train", "SB", seed=7)
    assert variants(again, 3) == by_epoch[3]
    assert variants(again, 0) == by_epoch[0]
    other = PolSESSDataset(corpus, "train", "SB", seed=8)
    assert [variants(other, e) for e in range(6)] != by_epoch
    seen = {v for vs in by_epoch for v in vs}
    assert seen <= INDOOR | OUTDOOR and len(seen) >= 4, seen


def test_allowed_variants_restrict_the_choice(corpus: Path) -> None:
    ds = PolSESSDataset(corpus, "train", "SB", allowed_variants=["SR", "S"])
    assert len(ds) == N_ROWS
    seen = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for ex in ds:
            assert ex.variant == ("SR" if ex.id.endswith("-in") else "S"), (ex.id, ex.variant)
            seen.add(ex.variant)
    assert seen == {"SR", "S"}
    reverb_only = PolSESSDataset(corpus, "train", "SB", allowed_variants=["R", "ER"])
    assert len(reverb_only) == N_ROWS // 2  # outdoor rows have no reverberation
    assert all(r.indoor for r in reverb_only.rows)
    seen = set()
    for epoch in range(4):
        reverb_only.set_epoch(epoch)
        seen |= {x.variant for x in reverb_only}
    assert seen == {"R", "ER"}


def test_bad_variant_names_are_refused(corpus: Path) -> None:
    with pytest.raises(ValueError, match=r"'XYZ'.*SER.*SR.*ER.*R.*SE.*S.*E.*C"):
        PolSESSDataset(corpus, "train", allowed_variants=["SER", "XYZ"])
    with pytest.raises(ValueError, match="'ser'"):
        PolSESSDataset(corpus, "val", variant="ser")
    with pytest.raises(TypeError, match="list of names"):
        PolSESSDataset(corpus, "train", allowed_variants="SER")
    with pytest.raises(ValueError, match="not both"):
        PolSESSDataset(corpus, "train", allowed_variants=["SER"], variant="SER")
    with pytest.raises(ValueError, match="empty"):
        PolSESSDataset(corpus, "train", allowed_variants=[])
    with pytest.raises(ValueError, match="'XB'"):
        PolSESSDataset(corpus, "train", "XB")  # type: ignore[arg-type]


# ------------------------------------------------------------------ root, CSV and files


def test_root_from_environment(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ROOT, str(corpus))
    ds = PolSESSDataset(split="val")
    assert ds.root == corpus and len(ds) == N_ROWS
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "elsewhere"))
    assert PolSESSDataset(corpus, "val").root == corpus  # the argument wins
    with pytest.raises(FileNotFoundError, match=rf"elsewhere.*{ENV_ROOT}"):
        PolSESSDataset(split="val")
    monkeypatch.delenv(ENV_ROOT)
    with pytest.raises(CorpusError, match=rf"root=.*{ENV_ROOT}"):
        PolSESSDataset(split="val")
    with pytest.raises(FileNotFoundError, match=rf"nowhere.*root argument.*{ENV_ROOT}"):
        PolSESSDataset(tmp_path / "nowhere", "val")


def test_missing_column_names_the_csv_and_column(small: Path) -> None:
    path = csv_path(small, "train")
    _rewrite_csv(path, lambda rows: [["scene_file" if c == "sceneFile" else c for c in rows[0]], *rows[1:]])
    with pytest.raises(CorpusError, match=rf"{path}: missing column 'sceneFile'"):
        PolSESSDataset(small, "train")
    # a re-exported corpus with other names is read by mapping its columns
    ds = PolSESSDataset(small, "train", variant="S", columns={"scene": "scene_file"})
    assert len(ds) == 1 and ds[0].variant == "S"  # the one outdoor row of three


def test_missing_file_names_csv_line_and_path(small: Path) -> None:
    rows = _csv_rows(small, "val")
    second = list(rows.values())[1]  # CSV line 3, an outdoor row
    gone = small / "val" / "scene" / second["sceneFile"]
    gone.unlink()
    with pytest.raises(CorpusError, match=rf"{csv_path(small, 'val')}:3: scene file not found: {gone}"):
        PolSESSDataset(small, "val")
    # a file no variant of this dataset reads is no obstacle
    assert len(PolSESSDataset(small, "val", variant="C")) == 3
    with pytest.warns(UserWarning, match=rf"{csv_path(small, 'val')}:3: scene file not found"):
        ds = PolSESSDataset(small, "val", skip_missing=True)
    assert len(ds) == 2 and Path(second["mixFile"]).stem not in {r.id for r in ds.rows}
    assert ds.skipped == [f"{csv_path(small, 'val')}:3: scene file not found: {gone}"]


def test_malformed_rows_are_errors(small: Path) -> None:
    path = csv_path(small, "test")
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    col = header.index("reverbForEvent")

    def half_reverb(rows):
        rows[1][col] = ""  # line 2: an indoor row that lost one reverb file name
        return rows

    _rewrite_csv(path, half_reverb)
    with pytest.raises(CorpusError, match=rf"{path}:2: reverb columns"):
        PolSESSDataset(small, "test")

    def duplicate(rows):
        rows[1][col] = rows[3][col] = "x.wav"
        return rows + [rows[3]]

    _rewrite_csv(path, duplicate)
    with pytest.raises(CorpusError, match=rf"{path}:5: mixture .* repeats line 4"):
        PolSESSDataset(small, "test")


# ------------------------------------------------------------------ rate, length, batching


def test_segments_are_windows_of_the_whole_example(corpus: Path) -> None:
    seg = 0.125
    whole = PolSESSDataset(corpus, "train", "SB", seed=3)
    cut = PolSESSDataset(corpus, "train", "SB", seed=3, segment_seconds=seg)
    starts = set()
    for i in range(len(cut)):
        full, part = whole[i], cut[i]
        assert part.variant == full.variant and part.mix.shape == (int(seg * SR),)
        n = part.num_samples
        start = next(s for s in range(full.num_samples - n + 1) if torch.equal(full.mix[s : s + n], part.mix))
        assert torch.equal(full.sources[:, start : start + n], part.sources)
        starts.add(start)
    assert len(starts) > 1, starts
    assert [cut[i].mix.tolist() for i in range(2)] == [PolSESSDataset(corpus, "train", "SB", seed=3, segment_seconds=seg)[i].mix.tolist() for i in range(2)]
    val = PolSESSDataset(corpus, "val", "SB", segment_seconds=seg)
    assert torch.equal(val[0].mix, PolSESSDataset(corpus, "val", "SB")[0].mix[: int(seg * SR)])


def test_sample_rate_and_max_samples(corpus: Path) -> None:
    ds = PolSESSDataset(corpus, "test", "EB", sample_rate=16000, max_samples=3)
    assert len(ds) == 3 and ds.num_sources == 1
    assert ds[0].mix.shape == (16000 // 2,) and ds[0].sources.shape == (1, 16000 // 2)


def test_dataloader_batches(corpus: Path) -> None:
    ds = PolSESSDataset(corpus, "train", "SB")
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_separation)))
    assert batch.mix.shape == (3, SR // 2) and batch.sources.shape == (3, 2, SR // 2)
    assert batch.lengths.tolist() == [SR // 2] * 3 and len(batch.variants) == 3
    assert batch.ids == [ds.rows[i].id for i in range(3)]


def _example(name: str, n: int, c: int = 2) -> SeparationExample:
    mix = torch.arange(1, n + 1, dtype=torch.float32)
    return SeparationExample(name, mix, torch.stack([mix * (k + 2) for k in range(c)]), "S")


def test_collate_pads_to_the_longest_and_keeps_lengths() -> None:
    batch = collate_separation([_example("a", 5), _example("b", 8), _example("c", 3)])
    assert batch.mix.shape == (3, 8) and batch.sources.shape == (3, 2, 8)
    assert batch.lengths.dtype == torch.long and batch.lengths.tolist() == [5, 8, 3]
    assert batch.mix[0].tolist() == [1, 2, 3, 4, 5, 0, 0, 0]
    assert batch.sources[2, 1].tolist() == [3, 6, 9, 0, 0, 0, 0, 0]
    assert batch.ids == ["a", "b", "c"] and batch.variants == ["S"] * 3 and len(batch) == 3
    moved = batch.to("cpu")
    assert torch.equal(moved.mix, batch.mix)
    with pytest.raises(ValueError, match=r"'a': 2, 'd': 1"):
        collate_separation([_example("a", 4), _example("d", 4, c=1)])
    with pytest.raises(ValueError, match="no examples"):
        collate_separation([])


def test_crop_keeps_mix_and_sources_aligned() -> None:
    ex = _example("x", 100)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        part = crop(ex, 10, rng)
        assert part.mix.shape == (10,) and part.sources.shape == (2, 10) and part.id == "x" and part.variant == "S"
        assert torch.equal(part.sources[0], 2 * part.mix) and torch.equal(part.sources[1], 3 * part.mix)
        assert torch.equal(part.mix, torch.arange(part.mix[0], part.mix[0] + 10))  # contiguous window
        starts.add(int(part.mix[0]))
    assert len(starts) > 5 and min(starts) >= 1 and max(starts) <= 91
    assert crop(ex, 10, None).mix.tolist() == list(range(1, 11))
    padded = crop(_example("y", 4), 6, rng)
    assert padded.mix.tolist() == [1, 2, 3, 4, 0, 0] and padded.sources[1].tolist() == [3, 6, 9, 12, 0, 0]
    assert crop(_example("y", 4), 6, rng, pad=False).num_samples == 4


def test_example_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"'bad'.*\(2, 7\)"):
        SeparationExample("bad", torch.zeros(8), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"mix must be \(T,\)"):
        SeparationExample("bad", torch.zeros(1, 8), torch.zeros(2, 8))


def test_curriculum_stage_restricts_training_draws(tmp_path):
    root = make_mini_polsess(tmp_path / "polsess", n_per_split=6)
    ds = PolSESSDataset(root, "train", segment_seconds=None)
    ds.set_curriculum(["C", "S"])
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            row = ds.rows[i]
            allowed = {"C", "S"} & set(row.variants) or set(row.variants)
            assert ds[i].variant in allowed
    ds.set_curriculum(None)
    seen = {ds[i].variant for e in range(4) for i in range(len(ds)) if not ds.set_epoch(e)}
    assert seen - {"C", "S"}
    with pytest.raises(ValueError, match="subset"):
        PolSESSDataset(root, "train", allowed_variants=["SER", "C"]).set_curriculum(["S"])


def test_curriculum_follows_the_epoch_through_wrappers(tmp_path):
    """CurriculumDataset: set_epoch (what the trainer calls before each epoch's loader, also for a
    resumed run's first epoch) sets the stage of the PolSESS set under a SegmentedDataset."""
    from sonus.data.separation import CurriculumDataset, SegmentedDataset

    root = make_mini_polsess(tmp_path, n_per_split=6)
    inner = PolSESSDataset(root, "train")
    ds = CurriculumDataset(SegmentedDataset(inner, 4000, random=True), ((0, ("C", "R")), (2, ("SE", "SER"))))  # outdoor, indoor
    for epoch, stage in ((0, ("C", "R")), (1, ("C", "R")), (2, ("SE", "SER")), (5, ("SE", "SER"))):
        ds.set_epoch(epoch)
        assert inner.stage == stage and inner.epoch == epoch
        assert {ds[i].variant for i in range(len(ds))} <= set(stage)
    late = CurriculumDataset(inner, ((3, ("C",)),))
    late.set_epoch(0)
    assert inner.stage is None  # before the first stage: every variant
    with pytest.raises(ValueError, match="data=polsess"):
        CurriculumDataset(SegmentedDataset(torch.utils.data.TensorDataset(torch.zeros(3)), 10, False), ((0, ("C",)),))
