"""The DICOMweb connector against a real Orthanc with its DICOMweb plugin (basic auth on, free
ports): STOW-RS of a DICOM WSI built from real H&E and of the SR + SEG of its necrosis run,
QIDO-RS search, WADO-RS retrieve into a real DicomStore; and the failures a PACS gives: 401,
404, 500, a server that accepts and never answers, nobody listening."""

from __future__ import annotations

import csv
import http.server
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest
from pacs_helpers import (
    OrthancWeb,
    free_port,
    osteomics_cli,
    start_orthanc,
    stop_orthanc,
)

from osteomics.core.plugins import discover_plugins
from osteomics.plugins.dicom_seg import read_class_map
from osteomics.plugins.dicom_sr import read_necrosis_report
from osteomics.plugins.dicomweb_connector import DicomWebConnector, DicomWebRemote
from osteomics.plugins.errors import (
    DicomWebAuthError,
    DicomWebError,
    DicomWebNotFoundError,
    DicomWebTimeoutError,
)
from osteomics.radiology.errors import PacsQueryError
from osteomics.radiology.store import DicomStore


def remote_of(orthanc: OrthancWeb, password: str | None = None) -> DicomWebRemote:
    return DicomWebRemote(
        "orthanc",
        orthanc.dicomweb_url,
        username=orthanc.user,
        password=password or orthanc.password,
    )


@pytest.fixture(scope="module")
def wsi_in_orthanc(orthanc_web: OrthancWeb, he_dicom_wsi: Path) -> str:
    """The H&E DICOM WSI, STOWed into Orthanc; its Study Instance UID."""
    files = sorted(he_dicom_wsi.glob("*.dcm"))
    outcome = DicomWebConnector(timeout_s=30).store_instances(remote_of(orthanc_web), files)
    assert outcome.ok and len(outcome.stored) == len(files)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_the_connector_is_a_plugin() -> None:
    plugins, _ = discover_plugins("pacs_connector")
    (plugin,) = [p for p in plugins if p.name == "dicomweb"]
    assert plugin.factory is DicomWebConnector
    assert isinstance(plugin.factory(None, timeout_s=5.0), DicomWebConnector)


def test_qido_search_and_wado_retrieve_into_the_store(
    orthanc_web: OrthancWeb, wsi_in_orthanc: str, he_dicom_wsi: Path, tmp_path: Path
) -> None:
    connector = DicomWebConnector(timeout_s=30)
    remote = remote_of(orthanc_web)
    (by_patient,) = connector.find_studies(remote, patient_id="OSTEO-TEST-1")
    (by_uid,) = connector.find_studies(remote, study_uid=wsi_in_orthanc)
    assert by_patient == by_uid
    assert by_uid.study_uid == wsi_in_orthanc
    assert "SM" in by_uid.modalities and by_uid.instances is not None
    assert connector.find_studies(remote, patient_id="NOBODY") == []

    with DicomStore(tmp_path / "store") as store:
        t0 = time.perf_counter()
        outcome = connector.retrieve_study(remote, wsi_in_orthanc, store)
        seconds = time.perf_counter() - t0
        again = connector.retrieve_study(remote, wsi_in_orthanc, store)
        summary = store.study(wsi_in_orthanc)
        records = list(store.instances())
    assert outcome.ok and outcome.received == outcome.stored == by_uid.instances
    assert (again.stored, again.duplicates) == (0, outcome.received)  # same bytes: idempotent
    assert summary is not None and summary.instances == outcome.received
    # the stored slide holds the pixels that were sent, and is where the store puts it
    (original,) = he_dicom_wsi.glob("*.dcm")
    sent = pydicom.dcmread(original)
    (record,) = [r for r in records if r.attributes.sop_instance_uid == sent.SOPInstanceUID]
    back = pydicom.dcmread(record.path)
    assert back.PixelData == sent.PixelData
    assert record.path.parent.parent.name == wsi_in_orthanc
    print(f"WADO-RS of the WSI study: {outcome.bytes / 1e6:.1f} MB in {seconds:.2f} s")


@pytest.mark.slow
def test_sr_and_seg_go_to_orthanc_and_come_back(
    orthanc_web: OrthancWeb, wsi_in_orthanc: str, he_necrosis_run: Path, tmp_path: Path
) -> None:
    """Score -> export -> STOW -> WADO: the SR read back from the PACS holds the numbers of
    necrosis_cases.csv; the SEG read back equals the class map of the run's tiles."""
    out = tmp_path / "dicom"
    done = osteomics_cli("export-dicom", he_necrosis_run, "--out", out)
    assert done.returncode == 0, done.stderr
    files = sorted(out.glob("*.dcm"))
    connector = DicomWebConnector(timeout_s=30)
    remote = remote_of(orthanc_web)
    t0 = time.perf_counter()
    stow = connector.store_instances(remote, files)
    stow_s = time.perf_counter() - t0
    assert stow.ok and len(stow.stored) == 2

    (match,) = connector.find_studies(remote, study_uid=wsi_in_orthanc)
    assert set(match.modalities) == {"SM", "SR", "SEG"}  # results joined the slide's study
    with DicomStore(tmp_path / "store") as store:
        t0 = time.perf_counter()
        outcome = connector.retrieve_study(remote, wsi_in_orthanc, store)
        wado_s = time.perf_counter() - t0
        paths = {r.attributes.sop_instance_uid: r.path for r in store.instances()}
    assert outcome.received == 3
    sent = {pydicom.dcmread(f).Modality: pydicom.dcmread(f) for f in files}
    sr, seg = (pydicom.dcmread(paths[sent[m].SOPInstanceUID]) for m in ("SR", "SEG"))

    with open(he_necrosis_run / "necrosis_cases.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    numbers = read_necrosis_report(sr)
    for key in ("necrosis_rate", "ci_low", "ci_high", "viable_mm2", "necrotic_mm2"):
        assert numbers[key] == pytest.approx(float(row[key]), abs=5e-5), key
    assert numbers["huvos_grade"] == row["huvos_grade"]
    np.testing.assert_array_equal(read_class_map(seg), read_class_map(sent["SEG"]))
    assert np.unique(read_class_map(seg)).tolist() == [0, 1, 2, 3]
    print(f"STOW-RS SR+SEG {stow_s:.2f} s; WADO-RS study back {wado_s:.2f} s")


def test_wrong_password_is_401_with_the_fix(orthanc_web: OrthancWeb, tmp_path: Path) -> None:
    connector = DicomWebConnector(timeout_s=10)
    bad = remote_of(orthanc_web, password="wrong")
    with pytest.raises(DicomWebAuthError) as caught:
        connector.find_studies(bad, patient_id="OSTEO-TEST-1")
    message = str(caught.value)
    assert "HTTP 401" in message and orthanc_web.dicomweb_url in message
    assert "user/password or token" in message
    assert "wrong" not in message  # never the credentials
    with DicomStore(tmp_path / "store") as store, pytest.raises(DicomWebAuthError):
        connector.retrieve_study(bad, "1.2.3.4", store)
    assert isinstance(caught.value, PacsQueryError)  # a pull's usual except still catches it


def test_unknown_study_is_404_and_nothing_is_stored(
    orthanc_web: OrthancWeb, tmp_path: Path
) -> None:
    connector = DicomWebConnector(timeout_s=10)
    with DicomStore(tmp_path / "store") as store:
        with pytest.raises(DicomWebNotFoundError, match=r"404 .*study 1\.2\.3\.4"):
            connector.retrieve_study(remote_of(orthanc_web), "1.2.3.4", store)
        assert store.status().instances == 0


class _Answer500(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server_500() -> Iterator[str]:
    """A real HTTP server on a free port that answers every request with 500."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def test_server_error_500(server_500: str) -> None:
    remote = DicomWebRemote("broken", server_500)
    with pytest.raises(DicomWebError, match=r"HTTP 500; check the server's log") as caught:
        DicomWebConnector(timeout_s=10).find_studies(remote, patient_id="x")
    assert not isinstance(caught.value, (DicomWebAuthError, DicomWebNotFoundError))


class _TokenServer(http.server.BaseHTTPRequestHandler):
    """QIDO-RS that answers an empty match list to ``Bearer good``, 401 to anything else."""

    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        type(self).seen.append(auth)
        ok = auth == "Bearer good"
        body = b"[]" if ok else b""
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_bearer_token_is_sent() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        connector = DicomWebConnector(timeout_s=10)
        assert connector.find_studies(DicomWebRemote("t", url, token="good"), patient_id="x") == []
        with pytest.raises(DicomWebAuthError, match="HTTP 401") as caught:
            connector.find_studies(DicomWebRemote("t", url, token="bad"), patient_id="x")
        assert "bad" not in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()
    assert _TokenServer.seen == ["Bearer good", "Bearer bad"]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        sock.close()


def test_a_server_that_never_answers_times_out(silent_server: str, tmp_path: Path) -> None:
    remote = DicomWebRemote("silent", silent_server, token="t0ken")
    connector = DicomWebConnector(timeout_s=1.0)
    t0 = time.perf_counter()
    with pytest.raises(DicomWebTimeoutError, match=r"did not answer .* within 1 s") as caught:
        connector.find_studies(remote, study_uid="1.2.3")
    assert time.perf_counter() - t0 < 10
    assert "t0ken" not in str(caught.value)
    with DicomStore(tmp_path / "store") as store, pytest.raises(DicomWebTimeoutError):
        connector.retrieve_study(remote, "1.2.3", store)


def test_nobody_listening_and_bad_remotes() -> None:
    remote = DicomWebRemote("gone", f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(DicomWebError, match="cannot connect to DICOMweb server gone"):
        DicomWebConnector(timeout_s=5).find_studies(remote, patient_id="x")
    with pytest.raises(DicomWebError, match="must start with http"):
        DicomWebRemote("x", "pacs:8042")
    with pytest.raises(DicomWebError, match="not both"):
        DicomWebRemote("x", "http://pacs", token="t", username="u", password="p")
    with pytest.raises(DicomWebError, match="no C-MOVE"):
        DicomWebConnector().move_study(remote, "1.2.3", "OSTEOMICS")


@pytest.mark.slow
def test_sr_and_seg_go_over_dimse_too(he_necrosis_run: Path, tmp_path: Path) -> None:
    """The same objects sent with DCMTK storescu (C-STORE, Orthanc's DICOM port) are accepted
    and come back unchanged over WADO-RS: the export suits a DIMSE-only PACS as well."""
    out = tmp_path / "dicom"
    assert osteomics_cli("export-dicom", he_necrosis_run, "--out", out).returncode == 0
    files = sorted(out.glob("*.dcm"))
    proc, orthanc = start_orthanc(tmp_path / "orthanc")
    try:
        done = subprocess.run(
            [dcmtk("storescu"), "-R", "-aet", "OSTEOMICS", "-aec", "ORTHANC",
             "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, TCP_NODELAY="1"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        sent = [pydicom.dcmread(f) for f in files]
        with DicomStore(tmp_path / "store") as store:
            outcome = DicomWebConnector(timeout_s=30).retrieve_study(
                remote_of(orthanc), str(sent[0].StudyInstanceUID), store
            )
            paths = {r.attributes.sop_instance_uid: r.path for r in store.instances()}
    finally:
        stop_orthanc(proc)
    assert outcome.received == 2
    for ds in sent:
        back = pydicom.dcmread(paths[ds.SOPInstanceUID])
        assert back.SOPClassUID == ds.SOPClassUID
        assert back.get("PixelData") == ds.get("PixelData")
        if ds.Modality == "SR":
            assert read_necrosis_report(back) == read_necrosis_report(ds)


def dcmtk(name: str) -> str:
    """DCMTK's tool by absolute path (pynetdicom's console scripts shadow it in the venv)."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        path = Path(folder) / name
        if path.is_file() and path.read_bytes()[:4] == b"\x7fELF":
            return str(path)
    pytest.fail(f"DCMTK's {name} is missing: run .ci/system-packages (apt-get install dcmtk)")
