"""The node says what it does, and nothing about the patient; failures say what failed; the
PACS types live in their own module; no pynetdicom settings change at import.

Real associations (pynetdicom as the peer) against a real node, a real closed port.
"""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from test_node_acceptor import wait_until

from osteomics.plugins.dimse_connector import DimseConnector
from osteomics.radiology.config import NodeConfig, RemoteNode
from osteomics.radiology.errors import AssociationFailedError
from osteomics.radiology.node import RunningNode, echo, start_node

NODE_AE = "OSTEOMICS"  # as the conftest's node.toml says
RADIOLOGY = Path(__file__).resolve().parents[2] / "radiology"


def _store_then(port: int, files: list[Path], end: str) -> None:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(pydicom.uid.CTImageStorage, pydicom.uid.ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    for path in files:
        assert assoc.send_c_store(path).Status == 0x0000
    if end == "release":
        assoc.release()
    else:
        assoc.abort()


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # an over-long SH in STS
def test_node_logs_associations_and_shutdown_with_ae_and_counts_never_the_patient(
    node_config: NodeConfig, sts001_ct: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    images = sts001_ct[:4]
    first = pydicom.dcmread(images[0], stop_before_pixels=True)
    with caplog.at_level(logging.INFO, logger="osteomics"):
        running = start_node(node_config)
        try:
            _store_then(running.port, images[:3], "release")
            _store_then(running.port, images[3:4], "abort")
            assert wait_until(lambda: not running.server.active_associations)
        finally:
            running.stop()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("osteomics")]
    accepted = [m for m in lines if m.startswith("association accepted from AE STORESCU")]
    assert len(accepted) == 2, lines
    assert any(
        m.startswith("association released: AE STORESCU at 127.0.0.1:")
        and m.endswith("3 instance(s) stored, 0 refused")
        for m in lines
    ), lines
    assert any(
        m.startswith("association aborted: AE STORESCU at 127.0.0.1:")
        and m.endswith("1 instance(s) stored, 0 refused")
        for m in lines
    ), lines
    assert any(m.startswith(f"node {NODE_AE} shutting down") for m in lines), lines
    assert any(m == f"node {NODE_AE} stopped" for m in lines), lines
    text = caplog.text
    assert str(first.PatientID) and str(first.PatientID) not in text
    assert str(first.PatientName) and str(first.PatientName) not in text


def test_echo_and_pacs_connector_say_connection_refused_when_nothing_listens(
    node_config: NodeConfig, port_factory: Callable[[], int]
) -> None:
    port = port_factory()  # nothing listens here
    remote = RemoteNode(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
    expected = f"connection refused by 127.0.0.1:{port} — is the PACS running?"
    with pytest.raises(AssociationFailedError) as echoed:
        echo(node_config, remote, timeout_s=5)
    assert expected in str(echoed.value)
    assert "lists our AE" not in str(echoed.value)
    with pytest.raises(AssociationFailedError) as found:
        DimseConnector(node_config, timeout_s=5).find_studies(remote, patient_id="X")
    assert expected in str(found.value)
    assert "lists our AE" not in str(found.value)


def test_echo_rejected_by_the_remote_says_it_must_list_our_ae(
    node_factory: Callable[..., RunningNode],
) -> None:
    """A node that does not allow our AE rejects the association: that message, not refused."""
    running = node_factory((("SOMEONE", "127.0.0.1"),))
    config = running.config
    remote = RemoteNode(name="self", ae_title=NODE_AE, host="127.0.0.1", port=running.port)
    with pytest.raises(AssociationFailedError) as rejected:
        echo(config, remote, timeout_s=5)
    message = str(rejected.value)
    assert "rejected the association" in message and f"lists our AE {NODE_AE}" in message
    assert "connection refused" not in message


def test_importing_the_node_leaves_pynetdicom_settings_alone_start_node_sets_them(
    tmp_path: Path, port_factory: Callable[[], int]
) -> None:
    """pynetdicom's process-wide settings change in start_node, not at import."""
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\nae_title = "{NODE_AE}"\nhost = "127.0.0.1"\nport = {port_factory()}\n'
        'storage = "store"\n',
        encoding="utf-8",
    )
    script = f"""
from pynetdicom import _config as c
before = (c.LOG_HANDLER_LEVEL, c.LOG_REQUEST_IDENTIFIERS, c.LOG_RESPONSE_IDENTIFIERS)
import osteomics.radiology.node as node
import osteomics.plugins.dimse_connector
import osteomics.cli.node
after_import = (c.LOG_HANDLER_LEVEL, c.LOG_REQUEST_IDENTIFIERS, c.LOG_RESPONSE_IDENTIFIERS)
from osteomics.radiology.config import load_node_config
running = node.start_node(load_node_config({str(toml)!r}))
running.stop()
started = (c.LOG_HANDLER_LEVEL, c.LOG_REQUEST_IDENTIFIERS, c.LOG_RESPONSE_IDENTIFIERS)
print(before, after_import, started)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    before, after_import, started = done.stdout.strip().split(") (")
    assert before.strip("(") == "'standard', True, True"  # pynetdicom's defaults
    assert after_import == "'standard', True, True"
    assert started.strip(")") == "'none', False, False"


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_dimse_connector_and_pacs_share_types_from_pacs_types_only() -> None:
    """Neither the connector nor pacs.py imports the other's internals (that the radiology room
    imports no plugin, CLI or wsi module is tests/test_architecture.py's)."""
    plugin = RADIOLOGY.parent / "plugins" / "dimse_connector.py"
    assert "osteomics.radiology.pacs" not in _imported_modules(plugin)
    assert "osteomics.radiology.node" not in _imported_modules(plugin)
    assert "osteomics.radiology.pacs_types" in _imported_modules(plugin)
    assert "osteomics.radiology.pacs_types" in _imported_modules(RADIOLOGY / "pacs.py")


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # an over-long SH in STS
def test_node_logs_the_quiet_study_job_and_jobs_claimed_done_failed_never_the_patient(
    node: RunningNode, sts001_ct: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """What a worker does with the node's jobs is in the node's log (`node serve` shows these
    loggers at INFO): the quiet study's job queued, claimed, done, failed."""
    first = pydicom.dcmread(sts001_ct[0], stop_before_pixels=True)
    with caplog.at_level(logging.INFO, logger="osteomics"):
        _store_then(node.port, sts001_ct[:2], "release")
        # The study is quiet as of a minute from now (explicit time, no waiting).
        node.jobs.queue_quiet_studies(1, now=time.time() + 60)
        job = node.jobs.claim()
        assert job is not None
        node.jobs.complete(job)
        _store_then(node.port, sts001_ct[2:3], "release")  # a new quiet period, a new job
        node.jobs.queue_quiet_studies(1, now=time.time() + 120)
        second = node.jobs.claim()
        assert second is not None and second.id != job.id
        node.jobs.fail(second, "geometry error", retry=False)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("osteomics")]
    for expected in (
        f"queued job {job.id}: study_complete of study {job.study_uid}",
        f"claimed job {job.id} (study_complete, attempt 1)",
        f"job {job.id} done",
        f"queued job {second.id}: study_complete of study {second.study_uid}",
        f"job {second.id} failed (attempt 1), now failed: geometry error",
    ):
        assert any(m.startswith(expected) for m in lines), (expected, lines)
    assert str(first.PatientID) not in caplog.text
    assert str(first.PatientName) not in caplog.text
