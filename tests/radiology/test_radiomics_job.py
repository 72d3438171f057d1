"""The node's radiomics hook: ``[radiomics]`` in node.toml, the worker on real STS_001 files
stored in a real DicomStore, idempotent atomic output, ``store:<UID>`` in the CLI, and the
worker thread started by the node."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, write_node_toml

from osteomics.radiology.config import RadiomicsSettings, load_node_config
from osteomics.radiology.errors import NodeConfigError
from osteomics.radiology.jobs import JobQueue
from osteomics.radiology.node import start_node
from osteomics.radiology.radiomics import extract_features, load_config
from osteomics.radiology.radiomics.dicom import read_dicom_series, read_rtstruct_mask
from osteomics.radiology.radiomics_job import output_paths, process_next, run_study
from osteomics.radiology.store import DicomStore

CT_ONLY = RadiomicsSettings(enabled=True, modalities=("CT",), roi_pattern="GTV_Mass_.*")


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
def expected_ct(sts_dir: Path) -> dict[tuple[str, str], float]:
    """The CT features computed straight from the shared files with the ``ct`` configuration."""
    base = sts_dir / "STS_001" / "CT"
    image = read_dicom_series(base / "image")
    mask = read_rtstruct_mask(base / "mask" / "RS.dcm", image, "GTV_Mass_CT")
    values = extract_features(image.volume, mask, load_config("ct"))
    return {(v.family, v.feature): v.value for v in values}


def _fill_store(root: Path, files: list[Path]) -> str:
    with DicomStore(root) as store:
        results = [store.store(f.read_bytes(), source=f.name) for f in files]
    assert {r.outcome for r in results} == {"stored"}
    return results[0].record.attributes.study_uid


def _same_values(table: pd.DataFrame, expected: dict[tuple[str, str], float]) -> None:
    got = {(r.family, r.feature): r.value for r in table.itertuples()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key


def test_worker_processes_a_study_complete_job_and_rerun_overwrites(
    tmp_path: Path, sts001_study_files: list[Path], expected_ct: dict[tuple[str, str], float]
) -> None:
    root = tmp_path / "store"
    study_uid = _fill_store(root, sts001_study_files)
    with JobQueue(root) as queue:
        (queued,) = queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, root, CT_ONLY)
        assert done is not None
        job, result = done
        assert (job.id, job.state, job.error) == (queued.id, "done", None)
        assert process_next(queue, root, CT_ONLY) is None  # nothing else queued
    assert result is not None
    table_path, prov_path = output_paths(root, study_uid)
    assert (result.table, result.provenance) == (table_path, prov_path)
    assert table_path == root / "radiomics" / f"{study_uid}.parquet"
    # Only the CT ROI: the PET structure set's series is not in the store.
    assert result.runs == (("CT", "GTV_Mass_CT", "ct", len(expected_ct)),)
    table = pd.read_parquet(table_path)
    assert set(table.roi) == {"GTV_Mass_CT"} and set(table.modality) == {"CT"}
    assert set(table.study) == {study_uid}
    _same_values(table, expected_ct)
    first_mtime = table_path.stat().st_mtime_ns

    # At-least-once delivery: running the study again overwrites the same files, same values,
    # and leaves no temporary file behind.
    again = run_study(root, study_uid, CT_ONLY)
    assert again.table == table_path and table_path.stat().st_mtime_ns >= first_mtime
    _same_values(pd.read_parquet(table_path), expected_ct)
    assert sorted(p.name for p in (root / "radiomics").iterdir()) == sorted(
        [table_path.name, prov_path.name]
    )
    prov = json.loads(prov_path.read_text())
    assert prov["study"] == study_uid and prov["runs"][0]["roi"] == "GTV_Mass_CT"
    assert prov["runs"][0]["config"]["name"] == "ct"


def test_worker_completes_a_study_without_matching_roi_without_output(
    tmp_path: Path, sts001_study_files: list[Path]
) -> None:
    root = tmp_path / "store"
    study_uid = _fill_store(root, sts001_study_files)
    settings = replace(CT_ONLY, roi_pattern="Liver")
    with JobQueue(root) as queue:
        queue.queue_quiet_studies(0.0, now=time.time() + 1)
        done = process_next(queue, root, settings)
    assert done is not None and done[0].state == "done"
    assert done[1] is not None and done[1].table is None
    assert not output_paths(root, study_uid)[0].exists()


def test_cli_store_input_reads_the_study_from_the_node_store(
    tmp_path: Path, sts001_study_files: list[Path], expected_ct: dict[tuple[str, str], float]
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
        table_path, _ = output_paths(config.storage, study_uid)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and node.jobs.counts() != {"done": 1}:
            time.sleep(0.1)
        assert node.jobs.counts() == {"done": 1}
    finally:
        node.stop()
    _same_values(pd.read_parquet(table_path), expected_ct)
