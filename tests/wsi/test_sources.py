"""find_slides: which files and folders become slides, under which names."""

from __future__ import annotations

import shutil
from pathlib import Path

from osteomics.wsi.sources import find_slides, safe_name, source_for_path

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
ANNOTATIONS = "1.2.840.10008.5.1.4.1.1.91.1"


def test_fixture_folder(fixtures_dir: Path) -> None:
    slides, ignored = find_slides([fixtures_dir])
    by_files = {tuple(f.name for f in s.files): s for s in slides}
    assert set(by_files) == {
        ("boxes_0.dcm", "boxes_1.dcm"),  # one DICOM WSI series, two instances
        ("highdicom-sm_image.dcm",),
        ("boxes.tiff",),
        ("small.svs",),
        ("unopenable.tiff",),
        ("unreadable.svs",),
    }
    # Two DICOM series share the folder: each gets the folder's name and a series hash.
    dicom = [s for s in slides if s.is_dicom]
    assert len(dicom) == 2
    assert all(s.path == fixtures_dir and s.name.startswith("fixtures-") for s in dicom)
    assert len({s.name for s in slides}) == len(slides)
    reasons = {i.path.name: i.reason for i in ignored}
    assert reasons == {
        "highdicom-seg_image_sm_control.dcm": f"DICOM object is not a whole-slide image ({SEG})",
        "highdicom-sm_annotations.dcm": f"DICOM object is not a whole-slide image ({ANNOTATIONS})",
    }


def test_folder_search_skips_hidden_and_names_are_unique(cmu_svs: Path, tmp_path: Path) -> None:
    for sub in ("a", "b", ".cache"):
        (tmp_path / sub).mkdir()
        shutil.copy(cmu_svs, tmp_path / sub / "case 1.svs")
    (tmp_path / "a" / "README").write_text("scanner notes\n")
    slides, ignored = find_slides([tmp_path])
    assert [s.path for s in slides] == [
        tmp_path / "a" / "case 1.svs",
        tmp_path / "b" / "case 1.svs",
    ]
    names = [s.name for s in slides]
    assert len(set(names)) == 2 and all(n.startswith("case_1-") for n in names)
    assert [(i.path.name, i.reason) for i in ignored] == [
        ("README", "not a slide format (no extension)")
    ]


def test_missing_path_is_kept_to_be_reported(tmp_path: Path) -> None:
    slides, ignored = find_slides([tmp_path / "nope.svs"])
    assert [s.path for s in slides] == [tmp_path / "nope.svs"] and ignored == []


def test_source_for_a_dicom_folder_lists_its_instances(dicom_wsi_dir: Path) -> None:
    source = source_for_path(dicom_wsi_dir)
    assert source.is_dicom
    assert [f.name for f in source.files] == ["boxes_0.dcm", "boxes_1.dcm"]
    assert source.name == "boxes-dicom"


def test_safe_name() -> None:
    assert safe_name("Case 3/A15 (H&E)") == "Case_3_A15_H_E"
    assert safe_name("...") == "slide"
    assert len(safe_name("x" * 500)) == 120
