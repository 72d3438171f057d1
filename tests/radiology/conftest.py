"""Fixtures of the radiology tests: the real STS studies, free local ports, a running node and
DCMTK tools (with TCP_NODELAY=1, so that loopback C-STOREs do not stall on Nagle)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from osteomics.radiology.config import NodeConfig, load_node_config
from osteomics.radiology.node import RunningNode, start_node

NODE_AE = "OSTEOMICS"
#: Calling AE titles the test node allows from 127.0.0.1.
ALLOWED_AES = ("STORESCU", "ECHOSCU", "ORTHANC")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def port_factory() -> Callable[[], int]:
    """Gives a free 127.0.0.1 TCP port each call."""
    return free_port


@pytest.fixture(scope="session")
def sts_dir(data_dir: Path) -> Path:
    return data_dir / "radiology" / "sts"


@pytest.fixture(scope="session")
def sts001_ct(sts_dir: Path) -> list[Path]:
    """The CT images and CT RTSTRUCT of patient STS_001 (59 + 1 instances)."""
    folder = sts_dir / "STS_001" / "CT"
    return [*sorted((folder / "image").glob("*.dcm")), folder / "mask" / "RS.dcm"]


@pytest.fixture(scope="session")
def dcmtk(
    dcmtk_tool: Callable[[str], Path],
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a DCMTK tool (by name, taken by absolute path: see tests/conftest.py dcmtk_tool)
    against 127.0.0.1 with TCP_NODELAY=1 and a time limit; fails when DCMTK is missing."""
    dcmtk_tool("storescu")
    dcmtk_tool("echoscu")

    def run(tool: str, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, TCP_NODELAY="1")
        return subprocess.run(
            [str(dcmtk_tool(tool)), *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )

    return run


def write_node_toml(
    folder: Path,
    port: int,
    allow: tuple[tuple[str, str], ...],
    extra: str = "",
    quiet_seconds: float = 2,
) -> Path:
    """A node.toml in ``folder`` with storage ``store`` next to it (``extra`` is appended)."""
    lines = [
        "[node]",
        f'ae_title = "{NODE_AE}"',
        'host = "127.0.0.1"',
        f"port = {port}",
        'storage = "store"',
        f"study_quiet_seconds = {quiet_seconds}",
        "max_associations = 8",
        "",
    ]
    for ae, host in allow:
        lines += ["[[node.allow]]", f'ae_title = "{ae}"', f'host = "{host}"', ""]
    path = folder / "node.toml"
    path.write_text("\n".join(lines) + extra, encoding="utf-8")
    return path


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    """Settings of a node on a free 127.0.0.1 port allowing the DCMTK and Orthanc AEs."""
    allow = tuple((ae, "127.0.0.1") for ae in ALLOWED_AES)
    return load_node_config(write_node_toml(tmp_path, free_port(), allow))


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., RunningNode]]:
    """Start nodes with a given allow-list ((AE title, host) pairs), extra node.toml text and
    quiet time; all stopped after the test."""
    started: list[RunningNode] = []

    def make(
        allow: tuple[tuple[str, str], ...],
        name: str = "node",
        extra: str = "",
        quiet_seconds: float = 2,
    ) -> RunningNode:
        folder = tmp_path / name
        folder.mkdir()
        toml = write_node_toml(folder, free_port(), allow, extra, quiet_seconds)
        running = start_node(load_node_config(toml))
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in started:
            running.stop()


@pytest.fixture
def node(node_config: NodeConfig) -> Iterator[RunningNode]:
    """A node serving in background threads; stopped after the test."""
    running = start_node(node_config)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (writes fail with ENOSPC when full); needs root, as CI runs.

    Skipped (with the reason) only when not root; as root a failed mount fails the test."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run the full-disk tests: they mount a tmpfs and need root")
        pytest.skip("the full-disk tests mount a tmpfs and need root (CI runs them as root)")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs as root: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
