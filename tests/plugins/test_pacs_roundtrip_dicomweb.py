"""Pathology through a real PACS over DICOMweb, end to end: a DICOM WSI built from real TCIA
H&E is STOWed to a real Orthanc; our node (``[necrosis]`` on, ``[results] send_to = "web"``, a
``protocol = "dicomweb"`` remote with its password in the environment) pulls it with
``osteomics node pull --from web`` (QIDO-RS + WADO-RS, handed to the serving node by C-STORE),
scores it on its own with the real default model, and STOWs the SR and SEG back; they are read
back from Orthanc, parsed, compared with the run, and validated with dciodvfy. Prints the
round-trip time. (The DIMSE twin: test_pacs_roundtrip_dimse.py.)"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pacs_helpers import OrthancWeb, free_port, osteomics_cli, start_orthanc, stop_orthanc
from test_pacs_roundtrip_dimse import NUMBERS, dciodvfy_errors, find_series, raw

from osteomics.cli.node import job_handlers
from osteomics.plugins.dicom_seg import read_class_map
from osteomics.plugins.dicom_sr import read_necrosis_report
from osteomics.radiology.config import load_node_config
from osteomics.radiology.jobs import NECROSIS
from osteomics.radiology.node import RunningNode, start_node
from osteomics.radiology.pacs import send_files

PASSWORD_ENV = "OSTEOMICS_TEST_ROUNDTRIP_PASSWORD"


@pytest.fixture
def node_and_orthanc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningNode, OrthancWeb, Path]]:
    """Our node (necrosis on, results STOWed to Orthanc's DICOMweb) and an Orthanc that does
    not know the node as a DICOM modality (nothing goes over DIMSE between them)."""
    node_port = free_port()
    proc, server = start_orthanc(tmp_path / "orthanc")
    monkeypatch.setenv(PASSWORD_ENV, server.password)
    toml = tmp_path / "node" / "node.toml"
    toml.parent.mkdir()
    toml.write_text(
        "[node]\n"
        'ae_title = "OSTEOMICS"\nhost = "127.0.0.1"\n'
        f'port = {node_port}\nstorage = "store"\nstudy_quiet_seconds = 1\n\n'
        '[[node.allow]]\nae_title = "OSTEOMICS"\nhost = "127.0.0.1"\n\n'
        f'[remotes.web]\nprotocol = "dicomweb"\nurl = "{server.dicomweb_url}"\n'
        f'username = "{server.user}"\npassword_env = "{PASSWORD_ENV}"\n\n'
        "[necrosis]\nenabled = true\nworkers = 1\npoll_seconds = 0.2\n\n"
        '[results]\nsend_to = "web"\n',
        encoding="utf-8",
    )
    cfg = load_node_config(toml)
    node = start_node(cfg, handlers=job_handlers(cfg))
    try:
        yield node, server, toml
    finally:
        node.stop()
        stop_orthanc(proc)


@pytest.mark.slow
def test_wsi_from_orthanc_over_dicomweb_scored_by_the_node_sr_and_seg_stowed_back(
    node_and_orthanc: tuple[RunningNode, OrthancWeb, Path], he_dicom_wsi: Path, tmp_path: Path
) -> None:
    node, server, toml = node_and_orthanc
    (slide_file,) = he_dicom_wsi.glob("*.dcm")
    slide = pydicom.dcmread(slide_file, stop_before_pixels=True)
    study_uid = str(slide.StudyInstanceUID)
    assert send_files(node.config, "web", [slide_file]).ok  # STOW-RS

    started = time.monotonic()
    done = osteomics_cli(
        "node", "pull", "--config", toml, "--from", "web", "--study-uid", study_uid
    )
    assert done.returncode == 0, done.stderr
    assert "WADO-RS + C-STORE to the node" in done.stdout
    pulled = time.monotonic()

    deadline = time.monotonic() + 300
    while True:
        sr_ids = find_series(server, study_uid, "SR")
        seg_ids = find_series(server, study_uid, "SEG")
        if sr_ids and seg_ids:
            break
        jobs = node.jobs.jobs(study_uid=study_uid, kind=NECROSIS)
        if jobs and jobs[-1].state == "failed":
            pytest.fail(f"necrosis job failed: {jobs[-1].error}")
        if time.monotonic() > deadline:
            pytest.fail(f"SR/SEG not in Orthanc after 300 s; jobs: {jobs}")
        time.sleep(0.5)
    back = time.monotonic()
    print(
        f"\nDICOMweb round trip: pull {pulled - started:.1f} s, pull -> SR + SEG back in "
        f"Orthanc {back - started:.1f} s"
    )
    for _ in range(50):  # the job is marked done right after the send returns
        (job,) = node.jobs.jobs(study_uid=study_uid, kind=NECROSIS)
        if job.state == "done":
            break
        time.sleep(0.1)
    assert job.state == "done", job.error

    run_dir = node.config.storage / "results" / "necrosis" / study_uid
    (sr_id,), (seg_id,) = sr_ids, seg_ids
    sr_path, seg_path = tmp_path / "sr.dcm", tmp_path / "seg.dcm"
    sr_path.write_bytes(raw(server, f"/instances/{sr_id}/file"))
    seg_path.write_bytes(raw(server, f"/instances/{seg_id}/file"))
    sr, seg = pydicom.dcmread(sr_path), pydicom.dcmread(seg_path)
    for ds in (sr, seg):
        assert ds.StudyInstanceUID == study_uid and ds.PatientID == slide.PatientID

    numbers = read_necrosis_report(sr)
    with open(run_dir / "necrosis_cases.csv", newline="") as fh:
        (row,) = [r for r in csv.DictReader(fh) if r["case"] == study_uid]
    for key in NUMBERS:
        assert numbers[key] == pytest.approx(float(row[key]), abs=5e-5), key
    assert (numbers["huvos_grade"], numbers["responder"]) == (row["huvos_grade"], row["responder"])

    (local_seg,) = (run_dir / "dicom").glob("*.seg.dcm")
    labels = read_class_map(seg)
    np.testing.assert_array_equal(labels, read_class_map(pydicom.dcmread(local_seg)))
    assert set(np.unique(labels)) == {0, 1, 2, 3}

    for path in (sr_path, seg_path):
        assert dciodvfy_errors(path) == [], path.name
