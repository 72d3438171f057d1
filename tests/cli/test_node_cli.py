"""`osteomics node ...` run as a user runs it: separate processes, a real node, DCMTK."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "osteomics.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def node_toml(folder: Path, port: int) -> Path:
    path = folder / "node.toml"
    path.write_text(
        f"""
[node]
ae_title = "OSTEOMICS"
host = "127.0.0.1"
port = {port}
storage = "store"

[[node.allow]]
ae_title = "STORESCU"
host = "127.0.0.1"

[[node.allow]]
ae_title = "OSTEOMICS"          # lets `node echo self` reach the node itself
host = "127.0.0.1"

[remotes.self]
ae_title = "OSTEOMICS"
host = "127.0.0.1"
port = {port}

[remotes.nobody]
ae_title = "NOBODY"
host = "127.0.0.1"
port = {free_port()}
""",
        encoding="utf-8",
    )
    return path


def test_node_serve_echo_status_ls_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    config = node_toml(tmp_path, free_port())
    proc = subprocess.Popen(
        [*CLI, "node", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the node listens (or the process dies)
        assert "listening on 127.0.0.1" in line, line + proc.stderr.read()

        echo = run_cli("node", "echo", "self", "--config", config)
        assert echo.returncode == 0, echo.stderr
        assert "C-ECHO Success" in echo.stdout

        ct = data_dir / "radiology" / "sts" / "STS_003" / "CT"
        sent = subprocess.run(
            ["storescu", "-aet", "STORESCU", "-aec", "OSTEOMICS", "+sd", "+r",
             "127.0.0.1", config.read_text().split("port = ")[1].split()[0], ct],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, TCP_NODELAY="1"),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        n_files = len(list(ct.rglob("*.dcm")))

        status = run_cli("node", "status", "--config", config, "--json")
        assert status.returncode == 0, status.stderr
        counts = json.loads(status.stdout)
        assert counts == {
            "patients": 1, "studies": 1, "series": 2, "instances": n_files, "jobs": {}
        }  # fmt: skip

        listing = run_cli("node", "ls", "--config", config, "--json")
        (study,) = json.loads(listing.stdout)
        assert study["patient_id"] == "STS_003"
        assert study["modalities"] == ["CT", "RTSTRUCT"]
        assert (study["series"], study["instances"]) == (2, n_files)
        plain = run_cli("node", "ls", "--config", config)
        assert "STS_003" in plain.stdout and "CT/RTSTRUCT" in plain.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0


def test_node_user_errors_are_one_line(tmp_path: Path) -> None:
    config = node_toml(tmp_path, free_port())
    unknown = run_cli("node", "echo", "pacs", "--config", config)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().startswith("error:") and "[remotes.pacs]" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    start = time.monotonic()
    down = run_cli("node", "echo", "nobody", "--config", config, "--timeout", "5")
    assert down.returncode == 1
    assert "could not be reached" in down.stderr and "Traceback" not in down.stderr
    assert time.monotonic() - start < 60

    missing = run_cli("node", "status", "--config", tmp_path / "nope.toml")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_node_pull_user_errors_are_one_line(tmp_path: Path) -> None:
    config = node_toml(tmp_path, free_port())  # nothing serves on its port
    cases = [
        (("--from", "pacs", "--patient-id", "STS_001"), "[remotes.pacs]"),
        (("--from", "nobody", "--patient-id", "STS_001"), "node serve"),
        (("--from", "nobody"), "exactly one of --patient-id and --study-uid"),
        (("--from", "nobody", "--study-uid", "1.2/../3"), "--study-uid"),
    ]
    for args, expected in cases:
        done = run_cli("node", "pull", "--config", config, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip().startswith("error:") and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_dimse_connector_is_a_listed_plugin() -> None:
    listing = run_cli("plugins")
    assert listing.returncode == 0, listing.stderr
    assert any(
        line.split()[:2] == ["pacs_connector", "dimse"] for line in listing.stdout.splitlines()
    ), listing.stdout
