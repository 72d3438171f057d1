"""Benchmark: pulling a DICOM WSI study from a PACS over DICOMweb (WADO-RS) vs DIMSE (C-MOVE).

One Orthanc (own temporary storage, DICOMweb plugin, ``TCP_NODELAY=1``) holds a three-level
DICOM WSI pyramid built from the six real TCIA H&E tiles of the tests (1, 2 and 4 µm/px,
uncompressed: about 25 MB). Each repeat pulls the same study into a fresh, empty node store:

- DIMSE: ``osteomics.radiology.pacs.pull`` (C-FIND, then C-MOVE to our node, which serves in
  its own process: ``osteomics node serve``; Orthanc C-STOREs each instance to it);
- DICOMweb: ``DicomWebConnector.retrieve_study`` (QIDO-RS is not timed, WADO-RS is, each
  instance stored durably through ``DicomStore.store`` as it arrives).

Both end with every instance durable and indexed in a node store. The order alternates between
repeats; medians are reported. The last line is the ratio DICOMweb / DIMSE (time).

Usage: python bench/pacs.py [--repeat 3] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ENV = dict(os.environ, TCP_NODELAY="1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.1)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def build_wsi(folder: Path) -> list[Path]:
    """Three pyramid levels of the H&E mosaic as one series (tests/plugins/pacs_helpers)."""
    sys.path.insert(0, str(ROOT / "tests" / "plugins"))
    from pacs_helpers import write_dicom_wsi  # type: ignore[import-not-found]
    from PIL import Image
    from pydicom.uid import generate_uid

    root = DATA / "osteosarcoma-tiles"
    picks = [
        sorted((root / label).glob("*.jpg"))[i]
        for i in (0, 1)
        for label in ("Non-Viable-Tumor", "Viable", "Non-Tumor")
    ]
    cells = [np.asarray(Image.open(p).convert("RGB")) for p in picks]  # 1024 px, ~1 µm/px
    level0 = np.concatenate([np.concatenate(cells[:3], axis=1), np.concatenate(cells[3:], axis=1)])
    study = generate_uid()
    files = []
    for k, mpp in enumerate((1.0, 2.0, 4.0)):
        image = np.asarray(
            Image.fromarray(level0).resize((level0.shape[1] >> k, level0.shape[0] >> k), Image.BOX)
        )
        files += write_dicom_wsi(
            image,
            folder / f"level{k}",
            mpp=mpp,
            template=DATA / "wsi" / "fixtures" / "highdicom-sm_image.dcm",
            study_uid=study,
        )
    return files


def start_orthanc(folder: Path, node_port: int) -> tuple[subprocess.Popen[bytes], int, int]:
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bench-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"osteomics": ["OSTEOMICS", "127.0.0.1", node_port]},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if binary is None or not DICOMWEB_PLUGIN.is_file():
        sys.exit("Orthanc or orthanc-dicomweb is missing: run .ci/system-packages as root")
    proc = subprocess.Popen(
        [binary, str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    wait_http(f"http://127.0.0.1:{http_port}/system", proc)
    return proc, http_port, dicom_port


def node_toml(folder: Path, port: int, orthanc_dicom_port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.toml"
    path.write_text(
        f'[node]\nae_title = "OSTEOMICS"\nhost = "127.0.0.1"\nport = {port}\n'
        'storage = "store"\nstudy_quiet_seconds = 3600\n\n'
        '[[node.allow]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n\n'
        f'[remotes.orthanc]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_dicom_port}\n",
        encoding="utf-8",
    )
    return path


def pull_dimse(folder: Path, node_port: int, orthanc_dicom_port: int, study: str) -> float:
    """C-FIND + C-MOVE the study to a fresh node serving in its own process."""
    from osteomics.radiology.config import load_node_config
    from osteomics.radiology.pacs import pull

    config_path = node_toml(folder, node_port, orthanc_dicom_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "osteomics.cli.main", "node", "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        wait_port(node_port, proc)
        config = load_node_config(config_path)
        t0 = time.perf_counter()
        report = pull(config, "orthanc", study_uid=study)
        elapsed = time.perf_counter() - t0
        assert report.ok and report.instances == 3, report.to_dict()
        return elapsed
    finally:
        stop(proc)


def pull_dicomweb(folder: Path, http_port: int, study: str) -> float:
    from osteomics.plugins.dicomweb_connector import DicomWebConnector, DicomWebRemote
    from osteomics.radiology.store import DicomStore

    remote = DicomWebRemote("orthanc", f"http://127.0.0.1:{http_port}/dicom-web")
    connector = DicomWebConnector(timeout_s=120)
    (match,) = connector.find_studies(remote, study_uid=study)
    with DicomStore(folder / "store") as store:
        t0 = time.perf_counter()
        outcome = connector.retrieve_study(remote, match.study_uid, store)
        elapsed = time.perf_counter() - t0
    assert outcome.ok and outcome.stored == 3, outcome
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-pacs-") as name:
        tmp = Path(name)
        files = build_wsi(tmp / "wsi")
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        node_port = free_port()
        proc, http_port, dicom_port = start_orthanc(tmp / "orthanc", node_port)
        try:
            for f in files:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{http_port}/instances", data=f.read_bytes(), method="POST"
                )
                urllib.request.urlopen(request, timeout=120).close()
            import pydicom

            study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            dimse, web = [], []
            for k in range(args.repeat):
                order = ("dimse", "dicomweb") if k % 2 == 0 else ("dicomweb", "dimse")
                for which in order:
                    folder = tmp / f"run{k}-{which}"
                    if which == "dimse":
                        dimse.append(pull_dimse(folder, node_port, dicom_port, study))
                    else:
                        web.append(pull_dicomweb(folder, http_port, study))
                    shutil.rmtree(folder, ignore_errors=True)
        finally:
            stop(proc)
    d, w = statistics.median(dimse), statistics.median(web)
    print(f"WSI study: {len(files)} instances, {size_mb:.1f} MB, {args.repeat} repeats")
    print(f"DIMSE C-FIND + C-MOVE to our node: median {d:.3f} s ({size_mb / d:.0f} MB/s)")
    print(f"DICOMweb WADO-RS into the store:   median {w:.3f} s ({size_mb / w:.0f} MB/s)")
    print(f"DICOMweb / DIMSE time: {w / d:.2f}")


if __name__ == "__main__":
    main()
