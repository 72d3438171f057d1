"""`osteomics node ...` run as a user runs it: separate processes, a real node, DCMTK."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pydicom

CLI = [sys.executable, "-m", "osteomics.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def node_toml(folder: Path, port: int, quiet_seconds: float = 30) -> Path:
    path = folder / "node.toml"
    path.write_text(
        f"""
[node]
ae_title = "OSTEOMICS"
host = "127.0.0.1"
port = {port}
storage = "store"
study_quiet_seconds = {quiet_seconds}

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


def test_node_serve_echo_status_ls_end_to_end_and_the_node_says_what_it_does(
    tmp_path: Path, data_dir: Path, dcmtk_tool: Callable[[str], Path]
) -> None:
    """serve, echo, a DCMTK push, status, ls; the served node's stderr names associations
    (AE, address, instance count), the quiet study's job and the shutdown, never the patient;
    `status` says the queued job has no worker; `ls --json` gives ISO 8601 times."""
    port = free_port()
    config = node_toml(tmp_path, port, quiet_seconds=1)
    proc = subprocess.Popen(
        [*CLI, "node", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served_log: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # blocks until the node listens (or the process dies)
            served_log.append(line)
            if "Ctrl-C stops it" in line:
                break
        assert any("listening on 127.0.0.1" in line for line in served_log), served_log

        echo = run_cli("node", "echo", "self", "--config", config)
        assert echo.returncode == 0, echo.stderr
        assert "C-ECHO Success" in echo.stdout

        ct = data_dir / "radiology" / "sts" / "STS_003" / "CT"
        sent = subprocess.run(
            [dcmtk_tool("storescu"), "-aet", "STORESCU", "-aec", "OSTEOMICS", "+sd", "+r",
             "127.0.0.1", str(port), ct],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, TCP_NODELAY="1"),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        n_files = len(list(ct.rglob("*.dcm")))

        # The study goes quiet after 1 s; the scheduler then queues its job (no worker runs it).
        deadline = time.monotonic() + 60
        while True:
            status = run_cli("node", "status", "--config", config, "--json")
            assert status.returncode == 0, status.stderr
            counts = json.loads(status.stdout)
            if counts["jobs"] or time.monotonic() > deadline:
                break
        assert counts == {
            "patients": 1, "studies": 1, "series": 2, "instances": n_files,
            "jobs": {"queued": 1}, "failures": [],
        }  # fmt: skip
        assert "1 job(s) queued and no worker is enabled" in status.stderr
        assert "[radiomics] enabled = true" in status.stderr
        plain_status = run_cli("node", "status", "--config", config)
        assert "jobs: 1 queued" in plain_status.stdout
        assert "no worker is enabled" in plain_status.stderr

        before = datetime.now().astimezone()
        listing = run_cli("node", "ls", "--config", config, "--json")
        (study,) = json.loads(listing.stdout)
        assert study["patient_id"] == "STS_003"
        assert study["modalities"] == ["CT", "RTSTRUCT"]
        assert (study["series"], study["instances"]) == (2, n_files)
        received = datetime.fromisoformat(study["last_received"])
        assert received.tzinfo is not None  # ISO 8601 with its offset
        assert timedelta(0) <= before - received < timedelta(minutes=10)
        plain = run_cli("node", "ls", "--config", config)
        assert "STS_003" in plain.stdout and "CT/RTSTRUCT" in plain.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, rest = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    log = "".join(served_log) + rest
    assert "association accepted from AE STORESCU at 127.0.0.1:" in log, log
    assert "association released: AE STORESCU at 127.0.0.1:" in log, log
    assert f"{n_files} instance(s) stored, 0 refused" in log, log
    assert "association accepted from AE OSTEOMICS" in log  # the echo
    assert "queued job 1: study_complete" in log, log
    assert "SIGTERM received" in log and "node OSTEOMICS stopped" in log, log
    patient = pydicom.dcmread(next(ct.rglob("*.dcm")), stop_before_pixels=True)
    assert str(patient.PatientID) not in log
    assert str(patient.PatientName) not in log


def test_node_user_errors_are_one_line(tmp_path: Path) -> None:
    config = node_toml(tmp_path, free_port())
    unknown = run_cli("node", "echo", "pacs", "--config", config)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().startswith("error:") and "[remotes.pacs]" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    start = time.monotonic()
    down = run_cli("node", "echo", "nobody", "--config", config, "--timeout", "5")
    assert down.returncode == 1
    nobody_port = config.read_text().split("[remotes.nobody]")[1].split("port = ")[1].split()[0]
    assert f"connection refused by 127.0.0.1:{nobody_port} — is the PACS running?" in down.stderr, (
        down.stderr
    )
    assert "lists our AE" not in down.stderr and "Traceback" not in down.stderr
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
