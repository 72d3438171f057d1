"""The node's radiomics hook: ``[radiomics]`` in node.toml, the worker on real STS_001 files
stored in a real DicomStore, idempotent atomic output in the store's result folder,
``store:<UID>`` in the CLI, and the worker thread started by the node.

The expected features come from an independent path: the ``osteomics radiomics`` command run
in its own process on the image series folder and RTSTRUCT file (not the worker's study
reading, series picking, job handling or table writing).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from conftest import free_port, write_node_toml
from pydicom.uid import generate_uid

from osteomics.radiology.config import RadiomicsSettings, load_node_config
from osteomics.radiology.errors import NodeConfigError
from osteomics.radiology.jobs import JobQueue
from osteomics.radiology.node import start_node
from osteomics.radiology.radiomics_job import output_paths, process_next, run_study
from osteomics.radiology.store import DicomStore

CT_ONLY = RadiomicsSettings(enabled=True, modalities=("CT",), roi_pattern="GTV_Mass_.*")
MR_ONLY = RadiomicsSettings(enabled=True, modalities=("MR",), roi_pattern="GTV_Mass_.*")

Expected = dict[tuple[str, str], float]


def cli_features(image_folder: Path, rtstruct: Path, config: str, out: Path) -> Expected:
    """Features by ``osteomics radiomics FOLDER --mask RTSTRUCT`` run in its own process."""
    cmd = [sys.executable, "-m", "osteomics.cli.main", "radiomics", str(image_folder),
           "--mask", str(rtstruct), "--config", config, "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(out)
    return {(r.family, r.feature): r.value for r in table.itertuples()}


@pytest.fixture(scope="module")
def sts001_study_files(sts_dir: Path) -> list[Path]:
    """STS_001: CT slices, the CT and PET structure sets (the PET image series is not stored)."""
    base = sts_dir / "STS_001"
    return [
        *sorted((base / "CT" / "image").glob("*.dcm")),
        base / "CT" / "mask" / "RS.dcm",
        base / "PET" / "mask" / "RS.dcm",
    ]


@pytest.fixture(scope="module")
def expected_ct(sts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Expected:
    """The CT features of the shared files, by the CLI with the ``ct`` configuration."""
    base = sts_dir / "STS_001" / "CT"
    out = tmp_path_factory.mktemp("cli-ct") / "ct.parquet"
    return cli_features(base / "image", base / "mask" / "RS.dcm", "ct", out)


def _fill_store(root: Path, files: list[Path]) -> str:
    with DicomStore(root) as store:
        results = [store.store(f.read_bytes(), source=f.name) for f in files]
    assert {r.outcome for r in results} == {"stored"}
    return results[0].record.attributes.study_uid


def _same_values(table: pd.DataFrame, expected: Expected) -> None:
    got = {(r.family, r.feature): r.value for r in table.itertuples()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key


def test_worker_processes_a_study_complete_job_and_rerun_overwrites(
    tmp_path: Path, sts001_study_files: list[Path], expected_ct: Expected
) -> None:
    root = tmp_path / "store"
    study_uid = _fill_store(root, sts001_study_files)
    with DicomStore(root) as store, JobQueue(root) as queue:
        (queued,) = queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, store, CT_ONLY)
        assert done is not None
        job, result = done
        assert (job.id, job.state, job.error) == (queued.id, "done", None)
        assert process_next(queue, store, CT_ONLY) is None  # nothing else queued
        table_path, prov_path = output_paths(store, study_uid)
        assert result is not None
        assert (result.table, result.provenance) == (table_path, prov_path)
        # results live outside the DICOM tree, in the store's result folder
        assert table_path == root / "results" / "radiomics" / study_uid / "features.parquet"
        assert not (root / study_uid / "radiomics").exists()
        # Only the CT ROI: the PET structure set's series is not in the store.
        ct_series = result.runs[0][1]
        assert result.runs == (("CT", ct_series, "GTV_Mass_CT", "ct", len(expected_ct)),)
        table = pd.read_parquet(table_path)
        assert set(table.roi) == {"GTV_Mass_CT"} and set(table.modality) == {"CT"}
        assert set(table.study) == {study_uid} and set(table.series) == {ct_series}
        _same_values(table, expected_ct)
        first_mtime = table_path.stat().st_mtime_ns

        # At-least-once delivery: running the study again overwrites the same files, same
        # values, and leaves no temporary file behind.
        again = run_study(store, study_uid, CT_ONLY)
    assert again.table == table_path and table_path.stat().st_mtime_ns >= first_mtime
    _same_values(pd.read_parquet(table_path), expected_ct)
    assert sorted(p.name for p in table_path.parent.iterdir()) == sorted(
        [table_path.name, prov_path.name]
    )
    prov = json.loads(prov_path.read_text())
    assert prov["study"] == study_uid and prov["runs"][0]["roi"] == "GTV_Mass_CT"
    assert prov["runs"][0]["parameters"]["name"] == "ct"
    assert prov["runs"][0]["series"] == ct_series
    assert [i["role"] for i in prov["runs"][0]["inputs"]] == ["study"]


def test_recover_after_a_radiomics_job_logs_no_warning_and_changes_nothing(
    tmp_path: Path, sts001_study_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Bug 5: results lay inside the DICOM tree (``<storage>/radiomics/``), and every recover()
    warned "ignoring ... not a folder the store made"."""
    root = tmp_path / "store"
    study_uid = _fill_store(root, sts001_study_files)
    with DicomStore(root) as store, JobQueue(root) as queue:
        queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, store, CT_ONLY)
        assert done is not None and done[0].state == "done"
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    caplog.clear()
    with (
        caplog.at_level(logging.DEBUG, logger="osteomics.radiology.store"),
        DicomStore(root) as store,
    ):
        report = store.recover()
        status = store.status()
    assert not report.repaired
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert status.instances == len(sts001_study_files)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    # only the index files and the lock record may change by opening; no result or DICOM file
    assert {p.name for p in changed} <= {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm",
                                         "store.lock"}  # fmt: skip
    assert output_paths_exist(root, study_uid)


def output_paths_exist(root: Path, study_uid: str) -> bool:
    with DicomStore(root, mode="read") as store:
        return all(p.is_file() for p in output_paths(store, study_uid))


def test_results_of_an_older_store_are_moved_out_of_the_dicom_tree(
    tmp_path: Path, sts001_ct: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Stores of osteomics <= 0.2 kept tables in ``<storage>/radiomics/<UID>.parquet``."""
    root = tmp_path / "store"
    study_uid = _fill_store(root, sts001_ct[:2])
    legacy = root / "radiomics"
    legacy.mkdir()
    (legacy / f"{study_uid}.parquet").write_bytes(b"table")
    (legacy / f"{study_uid}.provenance.json").write_text("{}")
    with caplog.at_level(logging.WARNING), DicomStore(root) as store:
        assert not store.recover().repaired
        table, prov = output_paths(store, study_uid)
    assert table.read_bytes() == b"table" and prov.read_text() == "{}"
    assert not legacy.exists()
    assert [r.getMessage() for r in caplog.records] == []


def test_a_study_with_nothing_to_extract_fails_its_job_with_the_reason(
    tmp_path: Path, sts001_study_files: list[Path]
) -> None:
    """Bug 1 (second half): a job that produced nothing it was asked for ended ``done``."""
    no_roi = replace(CT_ONLY, roi_pattern="Liver")
    no_series = replace(CT_ONLY, modalities=("MR", "PT"))
    cases = {
        "no-roi": (no_roi, r"CT series …[0-9]{12}: no ROI matches 'Liver' \(1 ROIs\)"),
        "no-series": (no_series, "MR: no MR image series found.*; PT: no PT image series found"),
    }
    for name, (settings, reason) in cases.items():
        root = tmp_path / name
        study_uid = _fill_store(root, sts001_study_files)
        with DicomStore(root) as store, JobQueue(root) as queue:
            (queued,) = queue.queue_quiet_studies(0.0, now=time.time() + 1)
            done = process_next(queue, store, settings)
            assert done is not None
            job, result = done
            assert (job.id, job.state, result) == (queued.id, "failed", None)
            assert job.attempts == 1  # not retried: the data will not change
            assert job.error is not None and "nothing to extract" in job.error
            assert re.search(reason, job.error), job.error
            assert not output_paths(store, study_uid)[0].parent.exists()


def test_a_study_without_contours_skips_its_job_instead_of_failing_it(
    tmp_path: Path, sts001_study_files: list[Path]
) -> None:
    """A plain CT study (no RTSTRUCT, no SEG) asks for no radiomics: its job ends ``skipped``
    with the reason, neither ``done`` (no output) nor ``failed`` (nothing went wrong)."""
    root = tmp_path / "plain"
    ct_only = [f for f in sts001_study_files if f.name != "RS.dcm"]
    study_uid = _fill_store(root, ct_only)
    with DicomStore(root) as store, JobQueue(root) as queue:
        (queued,) = queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, store, CT_ONLY)
        assert done is not None
        job, result = done
        assert (job.id, job.state, result) == (queued.id, "skipped", None)
        assert job.error == "radiomics: no RTSTRUCT or SEG in the study"
        assert queue.counts() == {"skipped": 1}
        assert not output_paths(store, study_uid)[0].parent.exists()


# --- Bug 1: several image series of one modality --------------------------------------------


def _second_mr_series(sts_dir: Path, folder: Path) -> tuple[Path, Path, str]:
    """A second MR series of STS_001's study (as a STIR next to the T1 would be): the T1 slices
    with new Series/SOP Instance UIDs and other intensities (stored values halved), written to
    ``folder/image``, and a structure set drawn on it (the T1's contour, referencing the new
    series and its instances) as ``folder/RS.dcm``. Returns (image folder, RTSTRUCT, series UID).
    """
    base = sts_dir / "STS_001" / "MR_T1"
    series_uid = generate_uid()
    sop_map: dict[str, str] = {}
    (folder / "image").mkdir(parents=True)
    for path in sorted((base / "image").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        new_sop = generate_uid()
        sop_map[str(ds.SOPInstanceUID)] = new_sop
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_sop
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 902
        ds.SeriesDescription = "STIR (test copy of T1, values halved)"
        ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(folder / "image" / path.name, enforce_file_format=True)

    def remap(uid: str) -> str:  # the structure set also names slices cropped away
        return sop_map.setdefault(uid, generate_uid())

    rs = pydicom.dcmread(base / "mask" / "RS.dcm")
    rs.SOPInstanceUID = rs.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rs.SeriesInstanceUID = generate_uid()
    rs.StructureSetROISequence[0].ROIName = "GTV_Mass_MR_STIR"
    for frame in rs.ReferencedFrameOfReferenceSequence:
        for study in frame.RTReferencedStudySequence:
            for series in study.RTReferencedSeriesSequence:
                series.SeriesInstanceUID = series_uid
                for image in series.get("ContourImageSequence", []):
                    image.ReferencedSOPInstanceUID = remap(image.ReferencedSOPInstanceUID)
    for roi in rs.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            for image in contour.get("ContourImageSequence", []):
                image.ReferencedSOPInstanceUID = remap(image.ReferencedSOPInstanceUID)
    rs.save_as(folder / "RS.dcm", enforce_file_format=True)
    return folder / "image", folder / "RS.dcm", series_uid


@pytest.fixture(scope="module")
def two_mr_series(sts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """STS_001's T1 series with its structure set, a second MR series with its own, and the
    features of each by the CLI on its own series folder and structure set."""
    work = tmp_path_factory.mktemp("two-mr")
    base = sts_dir / "STS_001" / "MR_T1"
    stir_image, stir_rs, stir_uid = _second_mr_series(sts_dir, work / "stir")
    t1_uid = str(pydicom.dcmread(next((base / "image").glob("*.dcm"))).SeriesInstanceUID)
    return {
        "t1_files": sorted((base / "image").glob("*.dcm")),
        "t1_rs": base / "mask" / "RS.dcm",
        "stir_files": sorted(stir_image.glob("*.dcm")),
        "stir_rs": stir_rs,
        "t1_uid": t1_uid,
        "stir_uid": stir_uid,
        "t1": cli_features(base / "image", base / "mask" / "RS.dcm", "mr", work / "t1.parquet"),
        "stir": cli_features(stir_image, stir_rs, "mr", work / "stir.parquet"),
    }


def test_a_study_with_two_mr_series_gets_radiomics_of_each_contoured_series(
    tmp_path: Path, two_mr_series: dict[str, object]
) -> None:
    """Bug 1: a study with two image series of one modality (T1 + STIR) got no radiomics
    ("several image series") and its job ended ``done``. Each series a structure set was drawn
    on is read and computed; the table tells them apart by series."""
    d = two_mr_series
    files = [*d["t1_files"], d["t1_rs"], *d["stir_files"], d["stir_rs"]]  # type: ignore[misc]
    root = tmp_path / "store"
    study_uid = _fill_store(root, files)
    with DicomStore(root) as store, JobQueue(root) as queue:
        queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, store, MR_ONLY)
        assert done is not None
        job, result = done
        assert (job.state, job.error) == ("done", None)
        assert result is not None
        table = pd.read_parquet(result.table)
    assert set(table.study) == {study_uid}
    by_series = {uid: rows for uid, rows in table.groupby("series")}
    assert by_series.keys() == {d["t1_uid"], d["stir_uid"]}
    assert set(by_series[d["t1_uid"]].roi) == {"GTV_Mass_MR_T1"}
    assert set(by_series[d["stir_uid"]].roi) == {"GTV_Mass_MR_STIR"}
    _same_values(by_series[d["t1_uid"]], d["t1"])  # type: ignore[arg-type]
    _same_values(by_series[d["stir_uid"]], d["stir"])  # type: ignore[arg-type]
    # the two series really differ (values halved): the oracle tells a wrong pick
    assert d["t1"][("Statistics", "Mean")] != pytest.approx(  # type: ignore[index]
        d["stir"][("Statistics", "Mean")]  # type: ignore[index]
    )


def test_of_two_mr_series_the_one_the_structure_set_references_is_picked(
    tmp_path: Path, two_mr_series: dict[str, object]
) -> None:
    """Bug 1: the RTSTRUCT's referenced series picks the image series, not the modality."""
    d = two_mr_series
    files = [*d["t1_files"], *d["stir_files"], d["stir_rs"]]  # type: ignore[misc]
    root = tmp_path / "store"
    _fill_store(root, files)
    with DicomStore(root) as store, JobQueue(root) as queue:
        queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, store, MR_ONLY)
        assert done is not None and done[0].state == "done" and done[1] is not None
        table = pd.read_parquet(done[1].table)
    assert set(table.series) == {d["stir_uid"]}
    _same_values(table, d["stir"])  # type: ignore[arg-type]


def test_of_two_mr_series_none_contoured_fails_the_job_with_the_reason(
    tmp_path: Path, two_mr_series: dict[str, object], sts_dir: Path
) -> None:
    """Two MR series and only a structure set drawn on another series (the CT's): failed."""
    d = two_mr_series
    ct_rs = sts_dir / "STS_001" / "CT" / "mask" / "RS.dcm"
    files = [*d["t1_files"], *d["stir_files"], ct_rs]  # type: ignore[misc]
    root = tmp_path / "store"
    _fill_store(root, files)
    with DicomStore(root) as store, JobQueue(root) as queue:
        queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, store, MR_ONLY)
    assert done is not None and done[0].state == "failed" and done[1] is None
    assert "no RTSTRUCT or SEG references the 2 MR series" in (done[0].error or "")


@pytest.mark.slow  # 3-5 s: keeps the quick run near 3 min (CI runs it)
def test_cli_store_input_reads_the_study_from_the_node_store(
    tmp_path: Path, sts001_study_files: list[Path], expected_ct: Expected
) -> None:
    toml = write_node_toml(tmp_path, free_port(), ())
    study_uid = _fill_store(load_node_config(toml).storage, sts001_study_files)
    out = tmp_path / "out" / "features.parquet"
    cmd = [sys.executable, "-m", "osteomics.cli.main", "radiomics", f"store:{study_uid}",
           "--node-config", str(toml), "--modality", "CT", "--roi", "GTV_Mass_CT",
           "--config", "ct", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    table = pd.read_parquet(out)
    assert set(table.study) == {study_uid}
    _same_values(table, expected_ct)
    assert out.with_name("features.provenance.json").is_file()

    missing = subprocess.run(
        [*cmd[:4], "store:1.2.3.4", *cmd[5:]], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 1 and "no study 1.2.3.4 in the store" in missing.stderr
    no_toml = subprocess.run(
        [*cmd[:5], *cmd[7:]], capture_output=True, text=True, timeout=120, check=False
    )
    assert no_toml.returncode == 1 and "--node-config" in no_toml.stderr
    assert "Traceback" not in missing.stderr + no_toml.stderr


def test_node_toml_radiomics_section_defaults_and_validation(tmp_path: Path) -> None:
    toml = write_node_toml(tmp_path, free_port(), ())
    default = load_node_config(toml).radiomics
    assert default == RadiomicsSettings()
    assert (default.enabled, default.modalities) == (False, ("CT", "MR", "PT"))
    assert default.configs == {"CT": "ct", "MR": "mr", "PT": "pet"}

    (tmp_path / "my-ct.toml").write_text('name = "my-ct"\n')
    good = write_node_toml(
        tmp_path, free_port(), (),
        extra='[radiomics]\nenabled = true\nmodalities = ["CT"]\nroi_pattern = "GTV_.*"\n'
        'poll_seconds = 0.5\n[radiomics.configs]\nCT = "my-ct.toml"\n',
    )  # fmt: skip
    settings = load_node_config(good).radiomics
    assert settings.enabled and settings.modalities == ("CT",) and settings.poll_seconds == 0.5
    assert settings.configs["CT"] == str(tmp_path / "my-ct.toml")

    bad = {
        'modalities = ["CT", "US"]': "radiomics.modalities",
        'roi_pattern = "GTV_("': "not a valid regular expression",
        "poll_seconds = 0": "radiomics.poll_seconds",
        "colour = 1": "radiomics.colour",
        '[radiomics.configs]\nCT = "no-such-config"': "unknown radiomics configuration",
        '[radiomics.configs]\nXR = "ct"': "radiomics.configs.XR",
    }
    for body, message in bad.items():
        path = write_node_toml(
            tmp_path, free_port(), (), extra=f"[radiomics]\nenabled = true\n{body}\n"
        )
        with pytest.raises(NodeConfigError, match=message.replace("(", r"\(")):
            load_node_config(path)


@pytest.mark.slow
def test_node_serve_runs_the_radiomics_worker_on_a_quiet_study(
    tmp_path: Path, sts001_study_files: list[Path], expected_ct: dict[tuple[str, str], float]
) -> None:
    toml = write_node_toml(
        tmp_path, free_port(), (), quiet_seconds=0.2,
        extra='[radiomics]\nenabled = true\nmodalities = ["CT"]\npoll_seconds = 0.1\n',
    )  # fmt: skip
    config = load_node_config(toml)
    study_uid = _fill_store(config.storage, sts001_study_files)
    node = start_node(config)
    try:
        assert node.radiomics is not None
        table_path, _ = output_paths(node.store, study_uid)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and node.jobs.counts() != {"done": 1}:
            time.sleep(0.1)
        assert node.jobs.counts() == {"done": 1}
    finally:
        node.stop()
    _same_values(pd.read_parquet(table_path), expected_ct)


@pytest.mark.slow  # 3-5 s: keeps the quick run near 3 min (CI runs it)
def test_cli_on_a_study_folder_with_two_contoured_mr_series_asks_which_and_series_picks(
    tmp_path: Path, two_mr_series: dict[str, object]
) -> None:
    """Bug 1 in `osteomics radiomics STUDY_FOLDER`: with two contoured MR series the error says
    so and names them; `--series` picks one, whose features are those of its own folder."""
    d = two_mr_series
    study = tmp_path / "study"
    for name in ("t1", "stir"):
        (study / name).mkdir(parents=True)
        for path in [*d[f"{name}_files"], d[f"{name}_rs"]]:  # type: ignore[misc]
            (study / name / f"{len(list((study / name).iterdir()))}.dcm").symlink_to(path)
    out = tmp_path / "f.parquet"
    cmd = [sys.executable, "-m", "osteomics.cli.main", "radiomics", str(study), "--modality", "MR",
           "--config", "mr", "--out", str(out)]  # fmt: skip
    both = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert both.returncode == 1 and "several image series with a contour" in both.stderr
    assert str(d["stir_uid"])[-12:] in both.stderr and "Traceback" not in both.stderr
    picked = subprocess.run(
        [*cmd, "--series", str(d["stir_uid"])], capture_output=True, text=True, timeout=300
    )
    assert picked.returncode == 0, picked.stderr
    table = pd.read_parquet(out)
    assert set(table.series) == {d["stir_uid"]} and set(table.roi) == {"GTV_Mass_MR_STIR"}
    _same_values(table, d["stir"])  # type: ignore[arg-type]
