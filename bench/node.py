"""Benchmark: instances per second our DICOM node receives, against Orthanc's own Storage SCP.

Same files, same run, same disk (a temporary folder under ``--tmp``): every CT image instance
of the 12 STS patients (../shared/data/radiology/sts/*/CT/image), sent by DCMTK ``storescu``
in one association (``TCP_NODELAY=1`` in every DCMTK/Orthanc environment, see CONVENTIONS) to

- our node: ``osteomics node serve`` in its own process (durable: fsynced file + committed
  SQLite row before each Success);
- Orthanc: its own Storage SCP, own temporary storage and SQLite index (a durable PACS);
- DCMTK ``storescp`` writing to a temporary folder (no index, no fsync: the ceiling).

Each receiver starts fresh (empty storage) for every repeat; the order rotates between repeats
and the median is reported. Also: our node with 4 concurrent storescu associations, and an
Orthanc push (REST ``POST /modalities/osteomics/store`` of all the studies) to our node.
The last line is the ratio ours / Orthanc.

Usage: python bench/node.py [--repeat 3] [--tmp /tmp] [--baseline DIR]
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "radiology" / "sts"
ENV = dict(os.environ, TCP_NODELAY="1")
NODE_AE = "OSTEOMICS"


def dcmtk_tool(name: str) -> str:
    """DCMTK's ``name`` by absolute path: pynetdicom installs Python console scripts called
    storescu, storescp, ... into the venv, which shadow DCMTK's when the venv is on PATH."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    return str(path)
    sys.exit(f"DCMTK's {name} is missing from /usr/bin and /usr/local/bin: apt-get install dcmtk")


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if found is None:
        sys.exit("Orthanc is missing (not on PATH nor in /usr/sbin): apt-get install orthanc")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def our_node(folder: Path, pythonpath: Path | None = None) -> Iterator[int]:
    port = free_port()
    config = folder / "node.toml"
    config.write_text(
        f'[node]\nae_title = "{NODE_AE}"\nport = {port}\nstorage = "store"\n'
        "study_quiet_seconds = 3600\n\n"
        '[[node.allow]]\nae_title = "STORESCU"\nhost = "127.0.0.1"\n\n'
        '[[node.allow]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n',
        encoding="utf-8",
    )
    env = dict(os.environ)
    if pythonpath is not None:  # another checkout's `osteomics` (its parent folder)
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.Popen(
        [sys.executable, "-m", "osteomics.cli.main", "node", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        stop(proc)


class Orthanc:
    def __init__(self, folder: Path, node_port: int | None) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        modalities: dict[str, list[object]] = {"storescu": ["STORESCU", "127.0.0.1", 104]}
        if node_port is not None:
            modalities["osteomics"] = [NODE_AE, "127.0.0.1", node_port]
        config = {
            "Name": "bench",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": modalities,
            "Plugins": [],
        }
        (folder / "orthanc.json").write_text(json.dumps(config), encoding="utf-8")
        self.proc = subprocess.Popen(
            [orthanc_binary(), str(folder / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.rest("GET", "/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start") from None
                time.sleep(0.1)

    def rest(self, method: str, path: str, body: bytes | None = None) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, method=method), timeout=600
        ) as response:
            return json.loads(response.read() or b"null")


@contextmanager
def orthanc(folder: Path, node_port: int | None = None) -> Iterator[Orthanc]:
    server = Orthanc(folder, node_port)
    try:
        yield server
    finally:
        stop(server.proc)


@contextmanager
def storescp(folder: Path) -> Iterator[int]:
    port = free_port()
    out = folder / "received"
    out.mkdir()
    proc = subprocess.Popen(
        [dcmtk_tool("storescp"), "-aet", "STORESCP", "--output-directory", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        stop(proc)


def send(port: int, aec: str, files: list[Path], associations: int = 1) -> float:
    """Seconds for ``associations`` parallel storescu runs to deliver ``files``."""
    groups = [files[i::associations] for i in range(associations)]
    storescu = [dcmtk_tool("storescu"), "-aet", "STORESCU", "-aec", aec, "127.0.0.1", str(port)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*storescu, *map(str, g)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
        for g in groups
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {out.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - start


def measure(name: str, tmp: Path, files: list[Path], baseline: Path | None = None) -> float:
    """Seconds for one association of storescu to a fresh receiver ``name``."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=tmp))
    try:
        if name in ("osteomics", "baseline"):
            with our_node(folder, baseline if name == "baseline" else None) as port:
                return send(port, NODE_AE, files)
        if name == "orthanc":
            with orthanc(folder) as server:
                elapsed = send(server.dicom_port, "ORTHANC", files)
                assert len(server.rest("GET", "/instances")) == len(files)
                return elapsed
        with storescp(folder) as port:
            return send(port, "STORESCP", files)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also time the node of another checkout (a folder holding `osteomics/`), e.g. "
        "`git worktree add DIR/osteomics REV`, for before/after comparisons",
    )
    args = parser.parse_args()
    dcmtk_tool("storescu"), dcmtk_tool("storescp"), orthanc_binary()  # exit early if missing
    files = sorted(STS.glob("*/CT/image/*.dcm"))
    patients = len({p.parents[2].name for p in files})
    mib = sum(p.stat().st_size for p in files) / 2**20
    print(f"{len(files)} CT instances of {patients} STS patients ({mib:.0f} MiB), tmp {args.tmp}")

    receivers = ["osteomics", "orthanc", "storescp"] + (["baseline"] if args.baseline else [])
    times: dict[str, list[float]] = {r: [] for r in receivers}
    for i in range(args.repeat):
        shift = i % len(receivers)
        for name in receivers[shift:] + receivers[:shift]:
            times[name].append(measure(name, args.tmp, files, args.baseline))
        print(
            f"repeat {i + 1}: "
            + ", ".join(f"{n} {len(files) / times[n][-1]:.0f}/s" for n in receivers)
        )
    rate = {n: len(files) / statistics.median(t) for n, t in times.items()}

    folder = Path(tempfile.mkdtemp(prefix="bench-4assoc-", dir=args.tmp))
    try:
        with our_node(folder) as port:
            four = len(files) / send(port, NODE_AE, files, associations=4)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    folder = Path(tempfile.mkdtemp(prefix="bench-push-", dir=args.tmp))
    try:
        (folder / "node").mkdir()
        (folder / "orthanc").mkdir()
        with our_node(folder / "node") as port, orthanc(folder / "orthanc", port) as server:
            send(server.dicom_port, "ORTHANC", files)  # load Orthanc (not timed)
            studies = server.rest("GET", "/studies")
            body = json.dumps({"Resources": studies, "Synchronous": True}).encode()
            start = time.perf_counter()
            server.rest("POST", "/modalities/osteomics/store", body)
            push = len(files) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    med = {n: statistics.median(t) for n, t in times.items()}
    for name in receivers:
        print(
            f"{name:10s} {rate[name]:7.0f} instances/s (median {med[name]:.2f} s, one association)"
        )
    print(f"osteomics  {four:7.0f} instances/s with 4 concurrent associations")
    print(f"osteomics  {push:7.0f} instances/s pushed by Orthanc (REST /modalities/.../store)")
    if args.baseline:
        print(f"ours / baseline checkout = {rate['osteomics'] / rate['baseline']:.2f} x")
    print(f"ours / storescp (the ceiling) = {rate['osteomics'] / rate['storescp']:.2f} x")
    print(f"ours / Orthanc = {rate['osteomics'] / rate['orthanc']:.2f} x")


if __name__ == "__main__":
    main()
