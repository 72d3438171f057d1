"""The node's association reactor (radiology/dimse_reactor.py) on real associations.

It replaces pynetdicom's private acceptor loop, so these tests check that it still does every
job of that loop: serve messages, answer a release, notice an abort, drop a silent peer, and
that the node serves the next association after each.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association

from osteomics.radiology.dimse_reactor import _prompt_reactor
from osteomics.radiology.node import VERIFICATION_SOP_CLASS, RunningNode

NODE_AE = "OSTEOMICS"  # as the conftest's node.toml says


def client(*contexts: str) -> AE:
    ae = AE(ae_title="STORESCU")
    for context in contexts or (VERIFICATION_SOP_CLASS,):
        ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def echo_ok(node: RunningNode) -> bool:
    assoc = client().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        return bool(assoc.is_established and assoc.send_c_echo().Status == 0x0000)
    finally:
        if assoc.is_established:
            assoc.release()


def test_pynetdicom_still_has_what_the_reactor_replaces_and_uses() -> None:
    """An upgrade that renames the private parts the reactor relies on fails here first."""
    assoc = Association(client(), "requestor")
    assert callable(Association._run_reactor)
    for name in ("_kill", "_reactor_checkpoint", "_is_paused", "network_timeout_response"):
        assert hasattr(assoc, name), name
    assert callable(assoc._serve_request)
    assert assoc.dimse.msg_queue.empty()
    assert callable(assoc.acse.is_release_requested)
    assert callable(assoc.dul.idle_timer_expired)


def test_served_association_runs_the_prompt_reactor_and_stores(
    node: RunningNode, sts001_ct: list[Path]
) -> None:
    ae = client(pydicom.uid.CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        (served,) = node.server.active_associations
        assert served._run_reactor.__func__ is _prompt_reactor
        # Several requests back to back, each answered (none left waiting on the queue).
        for path in sts001_ct[:5]:
            assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released
    assert node.store.status().instances == 5
    assert wait_until(lambda: not node.server.active_associations)


def test_release_ends_the_served_association_with_the_event(node: RunningNode) -> None:
    released: list[str] = []
    node.server.bind(evt.EVT_RELEASED, lambda event: released.append(event.assoc.name))
    assoc = client().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released  # the node answered the A-RELEASE-RQ
    assert wait_until(lambda: not node.server.active_associations)
    assert len(released) == 1
    assert echo_ok(node)


def test_peer_abort_ends_the_served_association(node: RunningNode) -> None:
    aborted: list[str] = []
    node.server.bind(evt.EVT_ABORTED, lambda event: aborted.append(event.assoc.name))
    assoc = client().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    assoc.abort()
    assert wait_until(lambda: not node.server.active_associations)
    assert wait_until(lambda: len(aborted) == 1)
    assert echo_ok(node)


@pytest.mark.parametrize("response", ["A-ABORT", "A-RELEASE"])
def test_silent_peer_is_dropped_after_the_network_timeout(node: RunningNode, response: str) -> None:
    node.server.ae.network_timeout = 0.5  # read by each new association

    def respond(event: evt.Event) -> None:
        event.assoc.network_timeout_response = response

    node.server.bind(evt.EVT_CONN_OPEN, respond)
    assoc = client().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    # The client says nothing; the node ends the association on its own.
    assert wait_until(lambda: not node.server.active_associations, timeout_s=10)
    assert wait_until(lambda: not assoc.is_established, timeout_s=10)
    assert assoc.is_aborted or assoc.is_released
    node.server.ae.network_timeout = 60
    assert echo_ok(node)
