"""DICOMweb remotes of node.toml (``protocol = "dicomweb"``) against a real Orthanc with its
DICOMweb plugin: ``node echo`` (QIDO-RS, limit 1), ``node pull`` (QIDO-RS + WADO-RS into the
store when no node serves, handed to the serving node by C-STORE when one does, so its
quiet-study job follows), ``send_files`` over STOW-RS; and the failures of a PACS: wrong
password, unknown study, wrong URL, 500, a silent server, a server that refuses the SEG's SOP
class (FailedSOPSequence) or the whole request (409)."""

from __future__ import annotations

import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydicom
import pytest
from pacs_helpers import OrthancWeb, free_port, osteomics_cli
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from osteomics.plugins.errors import DicomWebAuthError, DicomWebError, DicomWebNotFoundError
from osteomics.radiology.config import load_node_config
from osteomics.radiology.errors import AssociationFailedError
from osteomics.radiology.pacs import (
    TRANSFER_WADO_TO_NODE,
    TRANSFER_WADO_TO_STORE,
    pull,
    send_files,
)
from osteomics.radiology.store import DicomStore

PASSWORD_ENV = "OSTEOMICS_TEST_DICOMWEB_PASSWORD"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"


def node_toml(
    folder: Path, orthanc: OrthancWeb | None, *, port: int = 11112, extra: str = ""
) -> Path:
    """A node.toml whose remote ``web`` is ``orthanc``'s DICOMweb root (password from the
    environment), allowing the node's own AE from loopback (so a pull can hand it instances)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (
        f'[node]\nae_title = "OSTEOMICS"\nhost = "127.0.0.1"\nport = {port}\n'
        'storage = "store"\nstudy_quiet_seconds = 1\n\n'
        '[[node.allow]]\nae_title = "OSTEOMICS"\nhost = "127.0.0.1"\n\n'
    )
    if orthanc is not None:
        text += (
            f'[remotes.web]\nprotocol = "dicomweb"\nurl = "{orthanc.dicomweb_url}"\n'
            f'username = "{orthanc.user}"\npassword_env = "{PASSWORD_ENV}"\ntimeout_s = 30\n\n'
        )
    path = folder / "node.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def orthanc_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs_helpers import ORTHANC_PASSWORD

    monkeypatch.setenv(PASSWORD_ENV, ORTHANC_PASSWORD)


@pytest.fixture(scope="module")
def study_in_orthanc(
    orthanc_web: OrthancWeb, he_dicom_wsi: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """The H&E DICOM WSI sent to Orthanc with ``send_files`` (STOW-RS, chosen by the
    remote's protocol); its Study UID and file."""
    (wsi,) = sorted(he_dicom_wsi.glob("*.dcm"))
    config = load_node_config(node_toml(tmp_path_factory.mktemp("send"), orthanc_web))
    os.environ[PASSWORD_ENV] = orthanc_web.password  # module scope: before the autouse one
    outcome = send_files(config, "web", [wsi])
    assert outcome.ok and outcome.remote == "web"
    assert outcome.stored == [str(pydicom.dcmread(wsi, stop_before_pixels=True).SOPInstanceUID)]
    return str(pydicom.dcmread(wsi, stop_before_pixels=True).StudyInstanceUID), wsi


@pytest.mark.slow
def test_node_echo_of_a_dicomweb_remote_is_a_qido_search(
    orthanc_web: OrthancWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = node_toml(tmp_path, orthanc_web)
    done = osteomics_cli("node", "echo", "web", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "web: QIDO-RS answered in" in done.stdout
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password-123")
    done = osteomics_cli("node", "echo", "web", "--config", config)
    assert done.returncode == 1
    assert "HTTP 401" in done.stderr and "user/password or token" in done.stderr
    assert "wrong-password-123" not in done.stderr + done.stdout
    monkeypatch.delenv(PASSWORD_ENV)
    done = osteomics_cli("node", "echo", "web", "--config", config)
    assert done.returncode == 1 and f"{PASSWORD_ENV}, which is not set" in done.stderr


def test_pull_without_a_serving_node_writes_the_store_directly(
    orthanc_web: OrthancWeb, study_in_orthanc: tuple[str, Path], tmp_path: Path
) -> None:
    study_uid, wsi = study_in_orthanc
    config = load_node_config(node_toml(tmp_path, orthanc_web))
    report = pull(config, "web", patient_id="OSTEO-TEST-1")
    (study,) = report.studies
    assert report.ok and study.transfer == TRANSFER_WADO_TO_STORE
    assert (study.match.study_uid, study.stored_series, study.stored_instances) == (study_uid, 1, 1)
    assert (study.move.completed, study.move.failed) == (1, 0)
    with DicomStore(config.storage, mode="read") as store:
        (record,) = store.instances()
        stored = pydicom.dcmread(record.path)
    assert stored.PixelData == pydicom.dcmread(wsi).PixelData
    again = pull(config, "web", study_uid=study_uid)  # already there: counted, not rewritten
    assert again.ok and again.instances == 1 and again.studies[0].move.completed == 1


def _serve(config_path: Path, port: int) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).parent / "osteomics"
    proc = subprocess.Popen(
        [str(script), "node", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(
                    f"node did not start: {proc.communicate()[1][-2000:]!r}"
                ) from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_pull_with_a_serving_node_hands_it_the_instances_and_its_study_job_follows(
    orthanc_web: OrthancWeb, study_in_orthanc: tuple[str, Path], tmp_path: Path
) -> None:
    study_uid, wsi = study_in_orthanc
    port = free_port()
    config_path = node_toml(tmp_path, orthanc_web, port=port)
    config = load_node_config(config_path)
    proc = _serve(config_path, port)
    try:
        done = osteomics_cli(
            "node", "pull", "--from", "web", "--config", config_path, "--json",
            "--patient-id", "OSTEO-TEST-1",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        (study,) = report["studies"]
        assert study["transfer"] == TRANSFER_WADO_TO_NODE
        assert (study["study_uid"], study["stored_instances"], study["failed"]) == (
            study_uid,
            1,
            0,
        )
        deadline = time.monotonic() + 30  # study_quiet_seconds = 1: the job is queued
        while True:
            with DicomStore(config.storage, mode="read") as store:
                jobs = store.status().jobs
            if jobs.get("queued", 0) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert jobs.get("queued") == 1, jobs
        with DicomStore(config.storage, mode="read") as store:
            (record,) = store.instances()
            assert pydicom.dcmread(record.path).PixelData == pydicom.dcmread(wsi).PixelData
    finally:
        _stop(proc)


@pytest.mark.slow
def test_a_serving_node_that_does_not_allow_itself_gets_a_clear_message(
    orthanc_web: OrthancWeb, study_in_orthanc: tuple[str, Path], tmp_path: Path
) -> None:
    port = free_port()
    config_path = node_toml(tmp_path, orthanc_web, port=port)
    config_path.write_text(
        config_path.read_text().replace(
            '[[node.allow]]\nae_title = "OSTEOMICS"', '[[node.allow]]\nae_title = "ORTHANC"'
        ),
        encoding="utf-8",
    )
    proc = _serve(config_path, port)
    try:
        with pytest.raises(AssociationFailedError) as caught:
            pull(load_node_config(config_path), "web", study_uid=study_in_orthanc[0])
        message = str(caught.value)
        assert '[[node.allow]] ae_title = "OSTEOMICS" host = "127.0.0.1"' in message
        assert str(config_path) in message
    finally:
        _stop(proc)


def test_pull_failures_name_the_server_and_leave_the_store_as_it_was(
    orthanc_web: OrthancWeb,
    study_in_orthanc: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study_uid, _ = study_in_orthanc
    wrong_root = orthanc_web.url + "/not-dicom-web"
    config_path = node_toml(
        tmp_path,
        orthanc_web,
        extra=(
            f'[remotes.wrongurl]\nprotocol = "dicomweb"\nurl = "{wrong_root}"\n'
            f'username = "{orthanc_web.user}"\npassword_env = "{PASSWORD_ENV}"\n'
        ),
    )
    config = load_node_config(config_path)
    assert pull(config, "web", study_uid=study_uid).instances == 1
    before = sorted(p.name for p in config.storage.rglob("*.dcm"))

    # the study UID of no study: QIDO-RS finds nothing, the CLI says so
    done = osteomics_cli("node", "pull", "--from", "web", "--config", config_path,
                         "--study-uid", "1.2.3.4.5")  # fmt: skip
    assert done.returncode == 1 and "web: no study matched" in done.stderr
    with pytest.raises(DicomWebNotFoundError, match=r"404 .*not-dicom-web is not its DICOMweb"):
        pull(config, "wrongurl", study_uid=study_uid)
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password-123")
    with pytest.raises(DicomWebAuthError, match="HTTP 401") as caught:
        pull(config, "web", study_uid=study_uid)
    assert "wrong-password-123" not in str(caught.value)
    with DicomStore(config.storage, mode="read") as store:
        assert store.status().instances == 1
    assert sorted(p.name for p in config.storage.rglob("*.dcm")) == before


class _Broken(http.server.BaseHTTPRequestHandler):
    """QIDO-RS finds one study (and ignores ``offset``: every page is that study again);
    WADO-RS of it answers 500 (or never answers)."""

    study_uid: ClassVar[str] = "1.2.826.0.1.3680043.8.498.1"
    silent_wado: ClassVar[bool] = False
    server_port: ClassVar[int] = 0

    def do_GET(self) -> None:
        if "/studies/" not in self.path:  # QIDO-RS: one match, whatever the offset asked
            found = [{"0020000D": {"vr": "UI", "Value": [self.study_uid]}}]
            body = json.dumps(found).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.silent_wado:
            time.sleep(3)
            return
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_server() -> Iterator[type[_Broken]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    server.daemon_threads = True
    _Broken.server_port = int(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield _Broken
    finally:
        _Broken.silent_wado = False
        server.shutdown()
        server.server_close()


def test_a_server_that_ignores_the_qido_offset_gives_its_matches_once(
    broken_server: Any,
) -> None:
    from osteomics.plugins.dicomweb_connector import DicomWebConnector, DicomWebRemote

    url = f"http://127.0.0.1:{broken_server.server_port}/dicom-web"
    (match,) = DicomWebConnector(timeout_s=5).find_studies(
        DicomWebRemote("sloppy", url), patient_id="x"
    )
    assert match.study_uid == broken_server.study_uid


@pytest.mark.parametrize("silent", [False, True], ids=["500", "timeout"])
def test_a_server_error_or_a_silent_server_fails_the_pull_with_one_message(
    broken_server: Any, tmp_path: Path, silent: bool
) -> None:
    broken_server.silent_wado = silent
    url = f"http://127.0.0.1:{broken_server.server_port}/dicom-web"
    extra = f'[remotes.broken]\nprotocol = "dicomweb"\nurl = "{url}"\ntimeout_s = 1\n'
    config = load_node_config(node_toml(tmp_path, None, extra=extra))
    expected = r"did not answer the WADO-RS .* within 1 s" if silent else r"HTTP 500; check"
    with pytest.raises(DicomWebError, match=expected) as caught:
        pull(config, "broken", patient_id="x")
    assert f"DICOMweb server broken ({url})" in str(caught.value)
    with DicomStore(config.storage, mode="read") as store:
        assert store.status().instances == 0


class _RefusingStow(http.server.BaseHTTPRequestHandler):
    """STOW-RS that stores everything but Segmentation Storage: a FailedSOPSequence with
    reason 0x0122 (SOP class not supported); 409 when nothing of the request was stored; or a
    bare 409 without a body."""

    bare_409: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.bare_409:
            self.send_response(409)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        message = BytesParser().parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
        )
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        parts: Any = message.get_payload()
        for part in parts:
            ds = pydicom.dcmread(io.BytesIO(part.get_payload(decode=True)))
            item: dict[str, Any] = {
                "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
            }
            if str(ds.SOPClassUID) == SEG_STORAGE:
                item["00081197"] = {"vr": "US", "Value": [0x0122]}
                failed.append(item)
            else:
                stored.append(item)
        answer: dict[str, Any] = {}
        if stored:
            answer["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        data = json.dumps(answer).encode()
        self.send_response(200 if not failed else 202 if stored else 409)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _instance(folder: Path, sop_class: str, study_uid: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.Modality = "OSTEO-TEST-2", "SEG" if sop_class == SEG_STORAGE else "SR"
    path = folder / f"{ds.Modality}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def refusing_remote(tmp_path: Path) -> Iterator[Path]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingStow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    extra = f'[remotes.picky]\nprotocol = "dicomweb"\nurl = "{url}"\ntoken = "t0k"\n'
    try:
        yield node_toml(tmp_path, None, extra=extra)
    finally:
        _RefusingStow.bare_409 = False
        server.shutdown()
        server.server_close()


def test_a_remote_that_refuses_the_seg_sop_class_fails_it_with_the_reason(
    refusing_remote: Path, tmp_path: Path
) -> None:
    config = load_node_config(refusing_remote)
    study = generate_uid()
    sr, seg = (_instance(tmp_path, c, study) for c in (SR_STORAGE, SEG_STORAGE))
    seg_uid = str(pydicom.dcmread(seg).SOPInstanceUID)
    sr_uid = str(pydicom.dcmread(sr).SOPInstanceUID)
    outcome = send_files(config, "picky", [sr, seg])
    assert not outcome.ok and outcome.stored == [sr_uid]
    ((uid, why),) = outcome.failed
    assert uid == seg_uid and "SOP class not supported" in why and "0x0122" in why
    alone = send_files(config, "picky", [seg])  # 409: nothing of the request stored
    assert alone.stored == [] and alone.failed[0][0] == seg_uid
    assert "SOP class not supported" in alone.failed[0][1]

    _RefusingStow.bare_409 = True
    bare = send_files(config, "picky", [sr, seg])
    assert sorted(u for u, _ in bare.failed) == sorted([sr_uid, seg_uid])
    assert all("HTTP 409 (conflict)" in why for _, why in bare.failed)
    assert "t0k" not in bare.reason()


def test_a_dimse_remote_is_not_taken_for_a_dicomweb_one(tmp_path: Path) -> None:
    from osteomics.plugins.dicomweb_connector import DicomWebConnector

    extra = '[remotes.pacs]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'
    config = load_node_config(node_toml(tmp_path, None, extra=extra))
    with pytest.raises(DicomWebError, match=r'DIMSE remote .* needs protocol = "dicomweb"'):
        DicomWebConnector(config).find_studies(config.remote("pacs"), patient_id="x")


def test_a_remote_slide_reads_the_same_tiles_as_the_local_file(
    orthanc_web: OrthancWeb, study_in_orthanc: tuple[str, Path], tmp_path: Path
) -> None:
    """A DICOM WSI series on the DICOMweb server opened with wsidicom's DICOMweb source (a
    SlideSource the slide readers open): its metadata and every tile equal the local file's."""
    from osteomics.plugins.dicomweb_connector import remote_slide_source
    from osteomics.wsi.slide import open_slide

    study_uid, wsi = study_in_orthanc
    series_uid = str(pydicom.dcmread(wsi, stop_before_pixels=True).SeriesInstanceUID)
    config = load_node_config(node_toml(tmp_path, orthanc_web))
    source = remote_slide_source(config, f"dicomweb:web/{study_uid}/{series_uid}")
    assert source.is_dicom and source.files == ()
    with open_slide(source) as remote, open_slide(wsi.parent) as local:
        assert remote.backend == "wsidicom"
        assert remote.info.mpp_x == local.info.mpp_x == pytest.approx(2.0)
        assert (remote.info.width_px, remote.info.height_px) == (1536, 1024)
        for y in (0, 256, 768):
            for x in (0, 512, 1280):
                np.testing.assert_array_equal(
                    remote.read_region((x, y), 0, (256, 256)),
                    local.read_region((x, y), 0, (256, 256)),
                )


@pytest.mark.slow
def test_osteomics_info_of_a_remote_slide_and_its_bad_locators(
    orthanc_web: OrthancWeb, study_in_orthanc: tuple[str, Path], tmp_path: Path
) -> None:
    study_uid, wsi = study_in_orthanc
    series_uid = str(pydicom.dcmread(wsi, stop_before_pixels=True).SeriesInstanceUID)
    config = node_toml(tmp_path, orthanc_web)
    locator = f"dicomweb:web/{study_uid}/{series_uid}"
    done = osteomics_cli("info", locator, "--config", config, "--json")
    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout)
    assert described["decodes"] and described["backend"] == "wsidicom"
    done = osteomics_cli("info", locator)
    assert done.returncode == 1 and "give --config node.toml" in done.stderr
    done = osteomics_cli("info", f"dicomweb:web/{study_uid}/1.2.3.4", "--config", config)
    assert done.returncode == 1 and "series 1.2.3.4" in done.stderr, done.stderr
