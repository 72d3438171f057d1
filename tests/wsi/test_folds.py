"""Grouped cross-validation: patient groups when possible, else slides; never split a group."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from osteomics.wsi.folds import choose_grouping, grouped_folds
from osteomics.wsi.labelled import LabelledTile, read_labelled_folder


def _manifest_tiles(data_dir: Path) -> list[LabelledTile]:
    with open(data_dir / "osteosarcoma-tiles" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [LabelledTile(Path(r["file"]), r["label"], r["case"], r["slide"]) for r in rows]


def test_real_manifest_falls_back_to_slide_groups(data_dir: Path) -> None:
    grouping = choose_grouping(_manifest_tiles(data_dir))
    assert grouping.kind == "slide"
    # necrotic only from Case-3, viable only from Case-48: both named in the reason
    assert "Non-Viable-Tumor only from Case-3" in grouping.reason
    assert "Viable only from Case-48" in grouping.reason


def test_folder_parsing_agrees_with_manifest(data_dir: Path) -> None:
    from_folder = read_labelled_folder(data_dir / "osteosarcoma-tiles")
    from_manifest = {t.path.name: t for t in _manifest_tiles(data_dir)}
    assert sorted(t.path.name for t in from_folder) == sorted(from_manifest)
    case_map: dict[str, set[str]] = {}
    for t in from_folder:
        m = from_manifest[t.path.name]
        assert (t.label, t.slide) == (m.label, m.slide)
        case_map.setdefault(m.case, set()).add(t.case)
    # The manifest writes Case-48 where the file names say Case-48-P5: same patients, one to one.
    assert all(len(v) == 1 for v in case_map.values())
    assert len({c for v in case_map.values() for c in v}) == len(case_map) == 3


def test_no_slide_on_both_sides_of_any_fold(data_dir: Path) -> None:
    tiles = _manifest_tiles(data_dir)
    grouping = choose_grouping(tiles)
    classes = sorted({t.label for t in tiles})
    labels = np.array([classes.index(t.label) for t in tiles])
    folds = grouped_folds(labels, grouping.groups, n_folds=5, seed=0)
    assert set(folds.tolist()) == set(range(5))
    slides = np.array([f"{t.case}/{t.slide}" for t in tiles])
    for slide in set(slides.tolist()):
        assert len(set(folds[slides == slide].tolist())) == 1, slide
    # Slides A15 (Case-3) and A15 of another case would be different groups: keys hold the case.
    assert all("/" in g for g in grouping.groups)
    # Stratification keeps every class in at least 4 of the 5 held-out folds.
    for c in range(len(classes)):
        assert len(set(folds[labels == c].tolist())) >= 4


def test_patient_groups_when_every_class_has_two_patients() -> None:
    tiles = [
        LabelledTile(Path(f"{case}-{label}-{i}.jpg"), label, case, f"S{i}")
        for case in ("P1", "P2", "P3")
        for label in ("a", "b")
        for i in range(2)
    ]
    grouping = choose_grouping(tiles)
    assert grouping.kind == "patient"
    labels = np.array([0 if t.label == "a" else 1 for t in tiles])
    folds = grouped_folds(labels, grouping.groups, n_folds=5, seed=3)
    # only three patients: three folds, each exactly one patient
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    cases = np.array([t.case for t in tiles])
    for f in range(3):
        assert len(set(cases[folds == f].tolist())) == 1


def test_folds_are_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=60)
    groups = [f"g{i}" for i in rng.integers(0, 20, size=60)]
    a = grouped_folds(labels, groups, 4, seed=7)
    assert np.array_equal(a, grouped_folds(labels, groups, 4, seed=7))
