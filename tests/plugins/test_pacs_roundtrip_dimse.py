"""Pathology through a real PACS over DIMSE, end to end: a DICOM WSI built from real TCIA H&E is
uploaded to a real Orthanc; our node (``[necrosis]`` on, ``[results] send_to = "orthanc"``)
pulls it with ``osteomics node pull`` (C-FIND + C-MOVE), scores it on its own with the real
default model, and C-STOREs the SR and SEG back; they are read back from Orthanc's REST API,
parsed, compared with the run, and validated with dciodvfy. Prints the round-trip time."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pacs_helpers import OrthancWeb, free_port, osteomics_cli, start_orthanc, stop_orthanc

from osteomics.cli.node import job_handlers
from osteomics.plugins.dicom_seg import read_class_map
from osteomics.plugins.dicom_sr import read_necrosis_report
from osteomics.radiology.config import load_node_config
from osteomics.radiology.jobs import NECROSIS
from osteomics.radiology.node import RunningNode, start_node

NUMBERS = ("necrosis_rate", "ci_low", "ci_high", "viable_mm2", "necrotic_mm2", "non_tumour_mm2")


def raw(server: OrthancWeb, path: str) -> bytes:
    request = urllib.request.Request(server.url + path)
    token = f"{server.user}:{server.password}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    with urllib.request.urlopen(request, timeout=120) as response:
        data: bytes = response.read()
        return data


def dciodvfy_errors(path: Path) -> list[str]:
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.fail("dciodvfy is missing: run .ci/system-packages (apt-get install dicom3tools)")
    done = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120)
    return [x for x in (done.stdout + done.stderr).splitlines() if x.startswith("Error")]


@pytest.fixture
def node_and_orthanc(tmp_path: Path) -> Iterator[tuple[RunningNode, OrthancWeb, Path]]:
    """Our node (necrosis on, results sent to Orthanc) and an Orthanc that knows it."""
    node_port, orthanc_dir = free_port(), tmp_path / "orthanc"
    proc, server = start_orthanc(
        orthanc_dir,
        {"DicomModalities": {"osteomics": ["OSTEOMICS", "127.0.0.1", node_port]}},
    )
    toml = tmp_path / "node" / "node.toml"
    toml.parent.mkdir()
    toml.write_text(
        "[node]\n"
        'ae_title = "OSTEOMICS"\nhost = "127.0.0.1"\n'
        f'port = {node_port}\nstorage = "store"\nstudy_quiet_seconds = 1\n\n'
        '[[node.allow]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n\n'
        '[remotes.orthanc]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {server.dicom_port}\n\n"
        "[necrosis]\nenabled = true\nworkers = 1\npoll_seconds = 0.2\n\n"
        '[results]\nsend_to = "orthanc"\n',
        encoding="utf-8",
    )
    cfg = load_node_config(toml)
    node = start_node(cfg, handlers=job_handlers(cfg))
    try:
        yield node, server, toml
    finally:
        node.stop()
        stop_orthanc(proc)


def find_series(server: OrthancWeb, study_uid: str, modality: str) -> list[str]:
    """Orthanc's instance ids of the study's series of ``modality``."""
    found = server.rest(
        "POST",
        "/tools/find",
        json.dumps(
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}}
        ).encode(),
    )
    return list(found)


def wait_for_sr_and_seg(
    server: OrthancWeb, node: RunningNode, study_uid: str
) -> tuple[list[str], list[str]]:
    """Orthanc ids of the SR and SEG series the node's necrosis job sent back; fails the test
    when the job fails or nothing arrives within 300 s."""
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
    return sr_ids, seg_ids


def check_results_back(
    server: OrthancWeb,
    node: RunningNode,
    slide: pydicom.Dataset,
    ids: tuple[list[str], list[str]],
    tmp_path: Path,
) -> None:
    """The SR and SEG in Orthanc are the run's: same study and patient as the slide, the SR's
    numbers = necrosis_cases.csv, the SEG's class map = the local SEG's, dciodvfy clean."""
    study_uid = str(slide.StudyInstanceUID)
    sr_ids, seg_ids = ids
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
    assert labels.shape == (int(slide.TotalPixelMatrixRows), int(slide.TotalPixelMatrixColumns))
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # the mosaic has all three classes

    for path in (sr_path, seg_path):
        assert dciodvfy_errors(path) == [], path.name


@pytest.mark.slow
def test_wsi_from_orthanc_scored_by_the_node_sr_and_seg_back_in_orthanc(
    node_and_orthanc: tuple[RunningNode, OrthancWeb, Path], he_dicom_wsi: Path, tmp_path: Path
) -> None:
    node, server, toml = node_and_orthanc
    (slide_file,) = he_dicom_wsi.glob("*.dcm")
    slide = pydicom.dcmread(slide_file, stop_before_pixels=True)
    study_uid = str(slide.StudyInstanceUID)
    server.rest("POST", "/instances", slide_file.read_bytes())

    started = time.monotonic()
    done = osteomics_cli(
        "node", "pull", "--config", toml, "--from", "orthanc", "--study-uid", study_uid
    )
    assert done.returncode == 0, done.stderr
    pulled = time.monotonic()

    sr_ids, seg_ids = wait_for_sr_and_seg(server, node, study_uid)
    back = time.monotonic()
    print(
        f"\nDIMSE round trip: pull {pulled - started:.1f} s, pull -> SR + SEG back in Orthanc "
        f"{back - started:.1f} s"
    )
    check_results_back(server, node, slide, (sr_ids, seg_ids), tmp_path)
