"""A real PACS pushes to the node: Orthanc (own config, temporary storage, TCP_NODELAY=1) stores
the real STS_001 study through its REST API, then C-STOREs it to our node with
``POST /modalities/osteomics/store``. All traffic on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from osteomics.plugins.dimse_connector import DimseConnector
from osteomics.radiology.config import NodeConfig, RemoteNode
from osteomics.radiology.errors import (
    AssociationFailedError,
    PacsQueryError,
    UnknownRemoteError,
)
from osteomics.radiology.node import RunningNode
from osteomics.radiology.pacs import pull


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
    tmp_path: Path,
    node: RunningNode,
    port_factory: Callable[[], int],
    request: pytest.FixtureRequest,
) -> Iterator[Orthanc]:
    """Orthanc with our node in its DicomModalities; stopped after the test. Indirect
    parameters (a dict) are added to its configuration."""
    orthanc_binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if orthanc_binary is None:
        pytest.fail(
            "Orthanc is missing (not on PATH nor in /usr/sbin): run .ci/system-packages as "
            "root, or apt-get install orthanc"
        )
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
        **getattr(request, "param", {}),
    }
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log_path = folder / "orthanc.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [orthanc_binary, str(folder / "orthanc.json")],
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


def _upload(orthanc: Orthanc, files: list[Path]) -> None:
    for path in files:
        orthanc.rest("POST", "/instances", path.read_bytes())


def _with_pacs(node: RunningNode, orthanc: Orthanc, port: int | None = None) -> NodeConfig:
    pacs = RemoteNode("pacs", "ORTHANC", "127.0.0.1", port or orthanc.dicom_port)
    return dataclasses.replace(node.config, remotes={"pacs": pacs})


@pytest.fixture
def orthanc_with_two_patients(orthanc: Orthanc, sts_dir: Path) -> dict[str, list[Path]]:
    """Orthanc holding the CT studies (images + RTSTRUCT) of STS_001 and STS_002."""
    files = {p: sorted((sts_dir / p / "CT").rglob("*.dcm")) for p in ("STS_001", "STS_002")}
    for group in files.values():
        _upload(orthanc, group)
    return files


def test_pull_by_patient_id_moves_only_that_patient(
    node: RunningNode, orthanc: Orthanc, orthanc_with_two_patients: dict[str, list[Path]]
) -> None:
    report = pull(_with_pacs(node, orthanc), "pacs", patient_id="STS_002")
    wanted = orthanc_with_two_patients["STS_002"]
    (study,) = report.studies
    assert study.match.patient_id == "STS_002"
    assert study.match.instances == len(wanted)
    assert study.match.modalities == ("CT", "RTSTRUCT")
    assert (study.move.status, study.move.completed, study.move.failed) == (0, len(wanted), 0)
    assert (study.stored_series, study.stored_instances) == (2, len(wanted))
    assert report.ok and report.instances == len(wanted) and report.failed == 0
    stored = {r.attributes.sop_instance_uid for r in node.store.instances()}
    assert stored == {_sop(p) for p in wanted}  # nothing of STS_001
    for path in wanted[:3]:  # Orthanc keeps what it received; so does the node
        record = node.store.get(_sop(path))
        assert record is not None
        assert pydicom.dcmread(record.path) == pydicom.dcmread(path)


def test_pull_by_study_uid_through_the_cli_and_findscu_agrees(
    node: RunningNode,
    orthanc: Orthanc,
    orthanc_with_two_patients: dict[str, list[Path]],
    tmp_path: Path,
    dcmtk_tool: Callable[[str], Path],
) -> None:
    wanted = orthanc_with_two_patients["STS_001"]
    study_uid = str(pydicom.dcmread(wanted[0], stop_before_pixels=True).StudyInstanceUID)

    # DCMTK's findscu, as our AE, finds the same study on Orthanc as our C-FIND does.
    found = subprocess.run(
        [str(dcmtk_tool("findscu")), "-v", "-S", "-aet", "OSTEOMICS", "-aec", "ORTHANC",
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=STS_001", "-k", "StudyInstanceUID",
         "127.0.0.1", str(orthanc.dicom_port)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, TCP_NODELAY="1"),
    )  # fmt: skip
    output = found.stdout + found.stderr
    assert "Association Rejected" not in output and "Received Final Find Response" in output
    assert study_uid in output
    ours = DimseConnector(_with_pacs(node, orthanc)).find_studies(
        _with_pacs(node, orthanc).remote("pacs"), patient_id="STS_001"
    )
    assert [m.study_uid for m in ours] == [study_uid]

    # `osteomics node pull` in its own process, the node serving here
    config = node.config.config_path
    assert config is not None
    with open(config, "a", encoding="utf-8") as f:
        f.write(
            f'\n[remotes.pacs]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
            f"port = {orthanc.dicom_port}\n"
        )
    done = subprocess.run(
        [sys.executable, "-m", "osteomics.cli.main", "node", "pull", "--config", str(config),
         "--from", "pacs", "--study-uid", study_uid, "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["instances"], report["series"], report["failed"]) == (len(wanted), 2, 0)
    (study,) = report["studies"]
    assert study["study_uid"] == study_uid and study["completed"] == len(wanted)
    assert node.store.status().instances == len(wanted)


def test_pull_errors_unknown_remote_unreachable_pacs_node_down(
    node: RunningNode, orthanc: Orthanc, port_factory: Callable[[], int]
) -> None:
    config = _with_pacs(node, orthanc)
    with pytest.raises(UnknownRemoteError, match=r"no remote 'nowhere'.*\[remotes.nowhere\]"):
        pull(config, "nowhere", patient_id="STS_001")
    down = _with_pacs(node, orthanc, port=port_factory())
    pacs_port = down.remote("pacs").port
    refused = rf"connection refused by 127\.0\.0\.1:{pacs_port} — is the PACS running\?"
    with pytest.raises(AssociationFailedError, match=refused):
        pull(down, "pacs", patient_id="STS_001")
    not_serving = dataclasses.replace(config, port=port_factory())
    with pytest.raises(AssociationFailedError, match="node serve"):
        pull(not_serving, "pacs", patient_id="STS_001")
    # Orthanc does not know this AE: it accepts the association but aborts the C-FIND.
    stranger = dataclasses.replace(config, ae_title="STRANGER")
    with pytest.raises(PacsQueryError, match="lists our AE STRANGER"):
        pull(stranger, "pacs", patient_id="STS_001")
    assert node.store.status().instances == 0


@pytest.mark.parametrize(
    "orthanc", [{"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True}], indirect=True
)
def test_pull_to_an_ae_the_pacs_does_not_know_fails_with_the_fix(
    node: RunningNode, orthanc: Orthanc, orthanc_with_two_patients: dict[str, list[Path]]
) -> None:
    """Orthanc lets anyone query and move, but cannot send to an AE title it does not list:
    the C-MOVE fails as a whole (Orthanc answers 0xC000, unable to process, where the
    standard also allows 0xA801, move destination unknown) and the message says what to fix."""
    stranger = dataclasses.replace(_with_pacs(node, orthanc), ae_title="STRANGER")
    with pytest.raises(
        PacsQueryError,
        match=r"to STRANGER: status 0xC000 \(unable to process\); check that ORTHANC lists "
        r"our node \(STRANGER, its host and port\) as a move destination",
    ):
        pull(stranger, "pacs", patient_id="STS_001")
    assert node.store.status().instances == 0


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
