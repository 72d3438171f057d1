"""Pathology through a real PACS over DICOMweb, end to end: a DICOM WSI built from real TCIA
H&E is STOWed to a real Orthanc; our node (``[necrosis]`` on, ``[results] send_to = "web"``, a
``protocol = "dicomweb"`` remote with its password in the environment) pulls it with
``osteomics node pull --from web`` (QIDO-RS + WADO-RS, handed to the serving node by C-STORE),
scores it on its own with the real default model, and STOWs the SR and SEG back; they are read
back from Orthanc, parsed, compared with the run, and validated with dciodvfy. Prints the
round-trip time. (The DIMSE twin: test_pacs_roundtrip_dimse.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import OrthancWeb, free_port, osteomics_cli, start_orthanc, stop_orthanc
from test_pacs_roundtrip_dimse import check_results_back, wait_for_sr_and_seg

from osteomics.cli.node import job_handlers
from osteomics.radiology.config import load_node_config
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

    sr_ids, seg_ids = wait_for_sr_and_seg(server, node, study_uid)
    back = time.monotonic()
    print(
        f"\nDICOMweb round trip: pull {pulled - started:.1f} s, pull -> SR + SEG back in "
        f"Orthanc {back - started:.1f} s"
    )
    check_results_back(server, node, slide, (sr_ids, seg_ids), tmp_path)
