"""A real PACS pushes to the node: Orthanc (own config, temporary storage, TCP_NODELAY=1) stores
the real STS_001 study through its REST API, then C-STOREs it to our node with
``POST /modalities/osteomics/store``. All traffic on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from osteomics.radiology.node import RunningNode


@dataclass
class Orthanc:
    """A running Orthanc: its REST base URL and DICOM port."""

    url: str
    dicom_port: int
    log: Path

    def rest(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")


@pytest.fixture
def orthanc(
    tmp_path: Path, node: RunningNode, port_factory: Callable[[], int]
) -> Iterator[Orthanc]:
    """Orthanc with our node in its DicomModalities; stopped after the test."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is missing: run .ci/system-packages (apt-get install orthanc)")
    folder = tmp_path / "orthanc"
    folder.mkdir()
    http_port, dicom_port = port_factory(), port_factory()
    config = {
        "Name": "osteomics-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"osteomics": ["OSTEOMICS", "127.0.0.1", node.port]},
        "Plugins": [],
    }
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log_path = folder / "orthanc.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            ["Orthanc", str(folder / "orthanc.json")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.rest("GET", "/system")
                break
            except (urllib.error.URLError, ConnectionError) as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not start ({exc}): {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_orthanc_pushes_a_study_to_the_node(
    orthanc: Orthanc, node: RunningNode, sts_dir: Path
) -> None:
    files = sorted((sts_dir / "STS_001").rglob("*.dcm"))  # CT, MR, PET and their RTSTRUCTs
    for path in files:
        orthanc.rest("POST", "/instances", path.read_bytes())
    (study_id,) = orthanc.rest("GET", "/studies")

    echo = orthanc.rest("POST", "/modalities/osteomics/echo", b"{}")
    assert echo == {} or echo is None
    start = time.perf_counter()
    orthanc.rest(
        "POST",
        "/modalities/osteomics/store",
        json.dumps({"Resources": [study_id], "Synchronous": True}).encode(),
    )
    elapsed = time.perf_counter() - start

    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    status = node.store.status()
    assert status.instances == len(sent), orthanc.log.read_text()[-2000:]
    assert (status.patients, status.studies, status.series) == (1, 1, 6)
    assert {r.attributes.sop_instance_uid for r in node.store.instances()} == sent
    (study,) = node.store.studies()
    assert study.modalities == ("CT", "MR", "PT", "RTSTRUCT")
    # Loopback push of ~180 instances: seconds, not the ~40 ms/instance of a Nagle stall.
    assert elapsed < 60
