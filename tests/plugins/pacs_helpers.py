"""Helpers of the DICOM export and DICOMweb tests: a DICOM WSI writer, a real Orthanc with
its DICOMweb plugin (basic auth on) on free ports, the real H&E mosaic, the osteomics command.
(Not a conftest: test modules import it by name.)"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: DICOMweb plugin of Debian's orthanc-dicomweb (`dpkg -L orthanc-dicomweb`).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_USER, ORTHANC_PASSWORD = "osteomics", "s3cret-test"


def write_dicom_wsi(
    image: np.ndarray,
    folder: Path,
    *,
    mpp: float,
    template: Path,
    tile_px: int = 256,
    patient_id: str = "OSTEO-TEST-1",
    study_uid: str | None = None,
) -> list[Path]:
    """Write ``image`` (H, W, 3 uint8) as a one-level TILED_FULL VL Whole Slide Microscopy
    instance (Explicit VR Little Endian), starting from a real WSI ``template`` (highdicom's
    test slide) for the modules we do not change. Returns the written file(s)."""
    ds = pydicom.dcmread(template)
    rows, cols = image.shape[:2]
    tiles_down, tiles_across = -(-rows // tile_px), -(-cols // tile_px)
    padded = np.full((tiles_down * tile_px, tiles_across * tile_px, 3), 255, np.uint8)
    padded[:rows, :cols] = image
    frames = (
        padded.reshape(tiles_down, tile_px, tiles_across, tile_px, 3)
        .swapaxes(1, 2)
        .reshape(-1, tile_px, tile_px, 3)
    )
    ds.PatientID = patient_id
    ds.PatientName = "Osteomics^Test"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = ds.Columns = tile_px
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, cols
    ds.ImagedVolumeWidth = cols * mpp / 1000.0
    ds.ImagedVolumeHeight = rows * mpp / 1000.0
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.PixelSpacing = [mpp / 1000.0, mpp / 1000.0]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.PixelData = frames.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]


@dataclass
class OrthancWeb:
    """A running Orthanc with DICOMweb: REST and DICOMweb base URLs, DICOM port, credentials."""

    url: str
    dicomweb_url: str
    dicom_port: int
    log: Path
    user: str = ORTHANC_USER
    password: str = ORTHANC_PASSWORD

    def rest(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        token = f"{self.user}:{self.password}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")


def start_orthanc(folder: Path, extra: dict[str, Any] | None = None) -> tuple[Any, OrthancWeb]:
    """Start Orthanc with the DICOMweb plugin on free ports (basic auth on); wait until up."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if binary is None or not DICOMWEB_PLUGIN.is_file():
        pytest.fail(
            "Orthanc or its DICOMweb plugin is missing: run .ci/system-packages as root "
            "(apt-get install orthanc orthanc-dicomweb)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "osteomics-dicomweb-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "DicomCheckModalityHost": True,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
        **(extra or {}),
    }
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    log_path = folder / "orthanc.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [binary, str(folder / "orthanc.json")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
    base = f"http://127.0.0.1:{http_port}"
    server = OrthancWeb(base, base + "/dicom-web", dicom_port, log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.rest("GET", "/system")
            return proc, server
        except (urllib.error.URLError, ConnectionError) as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"Orthanc did not start ({exc}): {log_path.read_text()[-2000:]}")
            time.sleep(0.2)


def stop_orthanc(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def he_mosaic(data_dir: Path) -> np.ndarray:
    """1024 x 1536 RGB at 2 µm/px: six real TCIA H&E tiles (two necrotic from Case-3, two
    viable from Case-48, two non-tumour from P9), each 1024 px at ~1 µm/px boxed to 512 px."""
    from PIL import Image

    root = data_dir / "osteosarcoma-tiles"
    picks = [
        sorted((root / label).glob("*.jpg"))[i]
        for i in (0, 1)
        for label in ("Non-Viable-Tumor", "Viable", "Non-Tumor")
    ]
    cells = [np.asarray(Image.open(p).convert("RGB").resize((512, 512), Image.BOX)) for p in picks]
    return np.concatenate([np.concatenate(cells[:3], axis=1), np.concatenate(cells[3:], axis=1)])


def osteomics_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed ``osteomics`` command (the one next to this interpreter)."""
    script = Path(sys.executable).parent / "osteomics"
    return subprocess.run(
        [str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
