"""DICOM export of real results: a DICOM WSI built from real TCIA H&E scored by `osteomics
necrosis`, and IBSI radiomics of the real STS_001 CT; every object written is validated by
dicom3tools' dciodvfy and parsed back with highdicom."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
from pacs_helpers import he_mosaic, osteomics_cli

from osteomics.plugins.dicom_export import export_run
from osteomics.plugins.dicom_seg import class_map, read_class_map
from osteomics.plugins.dicom_sr import (
    IBSI,
    OSTEO,
    read_necrosis_report,
    read_radiomics_report,
)
from osteomics.plugins.errors import DicomExportError
from osteomics.wsi.necrosis import CLASS_STYLE, TISSUE_CLASSES

NUMBERS = ("necrosis_rate", "ci_low", "ci_high", "viable_mm2", "necrotic_mm2", "non_tumour_mm2")


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Errors and warnings dciodvfy reports for ``path``."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.fail("dciodvfy is missing: run .ci/system-packages (apt-get install dicom3tools)")
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warn")]


def assert_valid(path: Path) -> list[str]:
    errors, warnings = dciodvfy(path)
    assert errors == [], f"{path.name}: {errors}"
    # the one kind of warning we accept: our private coding scheme is not a DICOM one
    others = [w for w in warnings if f"<{OSTEO}>" not in w and "Retired Person Name" not in w]
    assert others == [], f"{path.name}: {others}"
    return warnings


def cases_csv(run: Path) -> dict[str, dict[str, str]]:
    with open(run / "necrosis_cases.csv", newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


def geojson_class_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The class map drawn from the QuPath export (an oracle independent of tiles.parquet)."""
    labels = {CLASS_STYLE[c][0]: k + 1 for k, c in enumerate(TISSUE_CLASSES)}
    out = np.zeros(shape, np.uint8)
    for feature in json.loads(path.read_text())["features"]:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        (x0, y0), (x1, y1) = ring.min(axis=0).astype(int), ring.max(axis=0).astype(int)
        out[y0:y1, x0:x1] = labels[feature["properties"]["classification"]["name"]]
    return out


@pytest.mark.slow
def test_tiles_parquet_holds_every_scored_tile(he_necrosis_run: Path) -> None:
    tiles = pd.read_parquet(he_necrosis_run / "slides" / "Case-HE.tiles.parquet")
    slide = json.loads((he_necrosis_run / "run.json").read_text())["slides"][0]
    assert list(tiles.columns) == [
        "slide", "x_px", "y_px", "side_px", "tissue_fraction",
        "p_non_tumour", "p_necrotic", "p_viable",
    ]  # fmt: skip
    assert len(tiles) == slide["n_tiles"]
    assert (tiles["side_px"] == slide["tile_um"] / slide["mpp"]).all()
    probabilities = tiles[[f"p_{c}" for c in TISSUE_CLASSES]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # the areas of run.json follow from the table: tissue area x class probability
    tissue_mm2 = (slide["tile_um"] / 1000) ** 2 * tiles["tissue_fraction"].to_numpy()
    areas = (probabilities * tissue_mm2[:, None]).sum(axis=0)
    np.testing.assert_allclose(
        areas, [slide["viable_mm2"], slide["necrotic_mm2"], slide["non_tumour_mm2"]], rtol=1e-6
    )


@pytest.mark.slow
def test_export_necrosis_run_sr_and_seg(
    he_necrosis_run: Path, he_dicom_wsi: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dicom"
    done = osteomics_cli("export-dicom", he_necrosis_run, "--out", out)
    assert done.returncode == 0, done.stderr
    sr_path, seg_path = out / "Case-HE.necrosis.sr.dcm", out / "Case-HE.necrosis.seg.dcm"
    assert f"SR   case Case-HE: {sr_path}" in done.stdout
    assert f"SEG  slide Case-HE: {seg_path}" in done.stdout
    for path in (sr_path, seg_path):
        assert_valid(path)

    (slide_file,) = he_dicom_wsi.glob("*.dcm")
    slide = pydicom.dcmread(slide_file, stop_before_pixels=True)
    sr, seg = pydicom.dcmread(sr_path), pydicom.dcmread(seg_path)
    # the results join the slide's study and patient, and reference the slide
    for ds in (sr, seg):
        assert ds.StudyInstanceUID == slide.StudyInstanceUID
        assert ds.PatientID == slide.PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == slide.SOPInstanceUID
    assert seg.FrameOfReferenceUID == slide.FrameOfReferenceUID

    numbers = read_necrosis_report(sr)
    row = cases_csv(he_necrosis_run)["Case-HE"]
    for key in NUMBERS:
        assert numbers[key] == pytest.approx(float(row[key]), abs=5e-5), key
    assert (numbers["huvos_grade"], numbers["responder"]) == (row["huvos_grade"], row["responder"])
    model = json.loads((he_necrosis_run / "run.json").read_text())["model"]
    assert (numbers["model"], numbers["weights_sha256"]) == (
        model["name"],
        model["weights_sha256"],
    )

    labels = read_class_map(seg)
    shape = (int(slide.TotalPixelMatrixRows), int(slide.TotalPixelMatrixColumns))
    oracle = geojson_class_map(he_necrosis_run / "slides" / "Case-HE.geojson", shape)
    assert labels.shape == shape  # 128 px tiles: level 0 is the coarsest with >= 8 px a tile
    np.testing.assert_array_equal(labels, oracle)
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # the mosaic has all three classes
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        CLASS_STYLE[c][0] for c in TISSUE_CLASSES
    ]

    record = json.loads((out / "export-dicom.json").read_text())
    assert record["command"] == "export-dicom" and record["tool"] == "osteomics"
    assert [o["sop_instance_uid"] for o in record["objects"]] == [
        sr.SOPInstanceUID,
        seg.SOPInstanceUID,
    ]
    # exporting again gives the same objects (same UIDs): a PACS replaces, not duplicates
    again = export_run(he_necrosis_run, tmp_path / "again")
    assert [o.sop_instance_uid for o in again.objects] == [
        sr.SOPInstanceUID,
        seg.SOPInstanceUID,
    ]


@pytest.mark.slow
def test_sr_of_a_slide_file_opens_a_new_study(data_dir: Path, tmp_path: Path) -> None:
    """The same pixels as a tiled TIFF (not DICOM): the SR has the case as patient, a new
    study, no evidence, and the case's numbers; no SEG (nothing to overlay it on)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    tiff = folder / "Case-T.tiff"
    tifffile.imwrite(
        tiff, he_mosaic(data_dir), tile=(256, 256), photometric="rgb",
        resolution=(1e4 / 2.0, 1e4 / 2.0), resolutionunit="CENTIMETER",
    )  # fmt: skip
    run = tmp_path / "run"
    done = osteomics_cli("necrosis", tiff, "--out", run, "--workers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    report = export_run(run, tmp_path / "dicom")
    assert [o.kind for o in report.objects] == ["SR"]
    assert report.skipped == [("slide Case-T", "not a DICOM WSI: no SEG")]
    sr_path = Path(report.objects[0].path)
    assert_valid(sr_path)
    sr = pydicom.dcmread(sr_path)
    assert sr.PatientID == "Case-T"
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr
    numbers = read_necrosis_report(sr)
    row = cases_csv(run)["Case-T"]
    for key in NUMBERS:
        assert numbers[key] == pytest.approx(float(row[key]), abs=5e-5), key
    # the slide file's hash is recorded instead of a reference
    sha = json.loads((run / "run.json").read_text())["slides"][0]["inputs"][0]["sha256"]
    assert f"slide sha256 {sha}".encode() in sr_path.read_bytes()


@pytest.mark.slow  # whole-command run of several seconds: CI runs it
def test_radiomics_sr_per_roi(data_dir: Path, tmp_path: Path) -> None:
    sts_dir = data_dir / "radiology" / "sts"
    series, mask = sts_dir / "STS_001" / "CT" / "image", sts_dir / "STS_001" / "CT" / "mask"
    table_path = tmp_path / "rad" / "features.parquet"
    table_path.parent.mkdir()
    done = osteomics_cli(
        "radiomics", series, "--mask", mask / "RS.dcm", "--config", "ct", "--out", table_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "dicom"
    done = osteomics_cli("export-dicom", table_path.parent, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "STS_001" not in done.stdout + done.stderr  # no patient ID in what we print
    (sr_path,) = out.glob("*.radiomics.sr.dcm")
    warnings = assert_valid(sr_path)
    assert warnings  # our 99OSTEO family codes: dciodvfy warns, it does not fail

    sr = pydicom.dcmread(sr_path)
    table = pd.read_parquet(table_path)
    ct = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True)
    rs = pydicom.dcmread(mask / "RS.dcm", stop_before_pixels=True)
    assert sr.StudyInstanceUID == ct.StudyInstanceUID == table["study"].iloc[0]
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert rs.SOPInstanceUID in referenced and ct.SOPInstanceUID in referenced
    assert len(str(sr.StudyID)) <= 16  # the source's 17-character Study ID is made conformant

    back = read_radiomics_report(sr)
    assert len(back) == len(table)
    expected = [
        (f, i if isinstance(i, str) else None, v)
        for f, i, v in zip(table["family"], table["ibsi_id"], table["value"], strict=True)
    ]
    for (family, code, scheme, value), (t_family, t_id, t_value) in zip(
        back, expected, strict=True
    ):
        assert family == t_family
        assert (code, scheme) == (t_id, IBSI) if t_id else scheme == OSTEO
        assert value == pytest.approx(t_value, rel=1e-12)
    assert ("Co-occurrence matrix (3D, merged)", "GYBY", IBSI) in {b[:3] for b in back}


def test_export_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"command": "tile", "finished": "x"}))
    with pytest.raises(DicomExportError, match="'tile' run"):
        export_run(tmp_path, tmp_path / "out")
    with pytest.raises(DicomExportError, match="neither a finished necrosis run"):
        export_run(tmp_path / "nothing", tmp_path / "out")
    done = osteomics_cli("export-dicom", tmp_path, "--out", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


@pytest.mark.slow
def test_export_names_a_slide_that_changed(he_necrosis_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(he_necrosis_run, run)
    record = json.loads((run / "run.json").read_text())
    moved = tmp_path / "moved.dcm"
    original = Path(record["slides"][0]["inputs"][0]["file"])
    moved.write_bytes(original.read_bytes() + b"\0\0")
    record["slides"][0]["inputs"][0]["file"] = str(moved)
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(DicomExportError, match=r"moved\.dcm changed since the run"):
        export_run(run, tmp_path / "out")
    moved.unlink()
    with pytest.raises(DicomExportError, match=r"moved\.dcm is gone"):
        export_run(run, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.dcm"))  # nothing half-written


def test_class_map_from_tiles_on_a_coarser_level() -> None:
    tiles = pd.DataFrame(
        {
            "x_px": [0, 128, 256],
            "y_px": [0, 0, 128],
            "side_px": [128.0] * 3,
            "p_viable": [0.7, 0.1, 0.2],
            "p_necrotic": [0.2, 0.8, 0.2],
            "p_non_tumour": [0.1, 0.1, 0.6],
        }
    )
    labels = class_map(tiles, (64, 96), downsample=4.0)
    assert labels.shape == (64, 96)
    assert (labels[:32, :32] == 1).all() and (labels[:32, 32:64] == 2).all()
    assert (labels[32:64, 64:96] == 3).all()
    assert (labels[32:, :64] == 0).all() and (labels[:32, 64:] == 0).all()


@pytest.mark.slow
def test_seg_of_a_pyramid_is_on_a_coarser_level(
    he_necrosis_run: Path, data_dir: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    """The same slide as a 3-level pyramid (2, 4, 8 µm/px; level 0 the scored pixels): the SEG
    is on the coarsest level where a 128 px tile spans >= 8 px (level 2, 32 px a tile), and
    equals the level-0 class map taken every 4th pixel; --seg-level 0 gives level 0."""
    from pacs_helpers import write_dicom_wsi
    from PIL import Image
    from pydicom.uid import generate_uid

    image, study, files = he_mosaic(data_dir), generate_uid(), []
    for k in range(3):
        level = np.asarray(
            Image.fromarray(image).resize((image.shape[1] >> k, image.shape[0] >> k), Image.BOX)
        )
        files += write_dicom_wsi(
            level, tmp_path / "wsi", mpp=2.0 * 2**k, study_uid=study,
            template=fixtures_dir / "highdicom-sm_image.dcm",
        )  # fmt: skip
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    for path in files[1:]:  # one series: the pyramid of one slide
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series
        ds.save_as(path)
    run = tmp_path / "run"
    shutil.copytree(he_necrosis_run, run)
    record = json.loads((run / "run.json").read_text())
    record["slides"][0]["inputs"] = [
        {"role": "slide", "file": str(p), "bytes": p.stat().st_size, "sha256": ""} for p in files
    ]
    (run / "run.json").write_text(json.dumps(record))

    report = export_run(run, tmp_path / "dicom", objects=("SEG",))
    (seg_path,) = [Path(o.path) for o in report.objects]
    assert_valid(seg_path)
    seg = pydicom.dcmread(seg_path)
    assert (seg.TotalPixelMatrixRows, seg.TotalPixelMatrixColumns) == (256, 384)
    level2 = pydicom.dcmread(files[2], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID \
        == level2.SOPInstanceUID  # fmt: skip
    full = geojson_class_map(he_necrosis_run / "slides" / "Case-HE.geojson", (1024, 1536))
    np.testing.assert_array_equal(read_class_map(seg), full[::4, ::4])

    level0 = export_run(run, tmp_path / "dicom0", objects=("SEG",), seg_level=0)
    np.testing.assert_array_equal(read_class_map(pydicom.dcmread(level0.objects[0].path)), full)
    with pytest.raises(DicomExportError, match="pyramid level 3 does not exist"):
        export_run(run, tmp_path / "dicom3", objects=("SEG",), seg_level=3)
