"""Reliability test 2: ``kill -9`` the node (``osteomics node serve`` in its own process) in the
middle of a storescu transfer, restart it, resend: the store holds no partial file, no row
without a file, no file without a row, and every instance that got Success is there, equal."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from test_node_dcmtk import NODE_AE, sop_uid

from osteomics.core.files import is_temp_file
from osteomics.radiology.config import NodeConfig
from osteomics.radiology.store import INDEX_NAME, QUARANTINE_NAME

PATIENTS = ("STS_001", "STS_002", "STS_003", "STS_004")


def _serve(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "osteomics.cli.main", "node", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "node ... listening on ..." once it serves
    assert "listening on" in line, line
    return proc


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _check_store(root: Path) -> dict[str, Path]:
    """The crash invariants; returns SOP Instance UID -> file."""
    files = {
        p for p in root.glob("*/*/*") if p.is_file() and p.parent.parent.name != QUARANTINE_NAME
    }
    assert not [p for p in files if is_temp_file(p)], "temporary files left after recovery"
    assert not (root / QUARANTINE_NAME).exists() or not any((root / QUARANTINE_NAME).iterdir())
    db = sqlite3.connect(root / INDEX_NAME)
    try:
        rows = db.execute("SELECT sop_instance_uid, path, size, sha256 FROM instances").fetchall()
    finally:
        db.close()
    by_uid = {}
    for uid, rel, size, sha256 in rows:
        path = root / rel
        assert path.is_file(), f"index row without file: {rel}"
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha256)
        by_uid[uid] = path
    assert set(by_uid.values()) == files, "files without index rows"
    return by_uid


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_kill_9_mid_transfer_restart_resend(
    node_config: NodeConfig, sts_dir: Path, dcmtk_tool: Callable[[str], Path]
) -> None:
    assert node_config.config_path is not None
    config, port, root = node_config.config_path, str(node_config.port), node_config.storage
    files = sorted(f for p in PATIENTS for f in (sts_dir / p / "CT").rglob("*.dcm"))
    env = dict(os.environ, TCP_NODELAY="1")
    storescu = [str(dcmtk_tool("storescu")), "-v", "-aet", "STORESCU", "-aec", NODE_AE]
    storescu += ["127.0.0.1", port]

    node = _serve(config)
    acknowledged: list[Path] = []
    try:
        sender = subprocess.Popen(
            [*storescu, *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert sender.stdout is not None
        current: Path | None = None
        deadline = time.monotonic() + 120
        for line in sender.stdout:  # storescu -v: "Sending file: X" ... "Store Response (Success)"
            if "Sending file: " in line:
                current = Path(line.split("Sending file: ", 1)[1].strip())
            elif "Received Store Response (Success)" in line and current is not None:
                acknowledged.append(current)
                if len(acknowledged) == 40:
                    os.kill(node.pid, signal.SIGKILL)  # mid-transfer, no clean-up at all
            assert time.monotonic() < deadline
        sender.wait(timeout=60)
        assert node.wait(timeout=10) == -signal.SIGKILL
        assert sender.returncode != 0  # the transfer was cut
        assert 40 <= len(acknowledged) < len(files)
    finally:
        _stop(node)

    node = _serve(config)  # recovery runs at start
    try:
        stored = _check_store(root)
        for path in acknowledged:  # every Success survived the crash, equal to what was sent
            uid = sop_uid(path)
            assert uid in stored, f"{path.name} got Success but is missing"
            assert pydicom.dcmread(stored[uid]) == pydicom.dcmread(path)
        again = subprocess.run(
            [*storescu, *map(str, files)], capture_output=True, text=True, env=env, timeout=300
        )
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        _stop(node)
    assert node.returncode == 0
    stored = _check_store(root)
    distinct = {sop_uid(p) for p in files}
    assert set(stored) == distinct
    assert len(stored) == len(distinct)
