"""How the node runs accepted associations (radiology/acceptor.py), on real associations.

The reactor replaces pynetdicom's private acceptor loop, so these tests check that it still
does every job of that loop: serve messages, answer a release, notice an abort, drop a silent
peer, and that the node serves the next association after each. The C-STORE responses the node
encodes itself must be pynetdicom's bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from osteomics.radiology.acceptor import (
    DUL_IDLE_SLEEP_S,
    _plain_store_response,
    _prompt_reactor,
    encode_c_store_response,
    encode_p_data_tf,
)
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
    assert callable(assoc.dimse.send_msg)
    assert assoc.dul.state_machine.current_state == "Sta1"  # Sta6 once established
    assert assoc.dul._run_loop_delay == 0.001  # what acceptor.DUL_IDLE_SLEEP_S shortens


def pynetdicom_encoding(primitive: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@pytest.mark.parametrize(
    ("message_id", "status", "sop_class", "sop_instance"),
    [
        (1, 0x0000, pydicom.uid.CTImageStorage, "1.2.3.4"),  # even-length instance UID
        (65535, 0xA700, pydicom.uid.MRImageStorage, "1.2.826.0.1.3680043.8.498.1"),  # odd
        (7, 0xC000, pydicom.uid.RTStructureSetStorage, "1." + "2" * 62),  # 64 characters
        (300, 0xA900, pydicom.uid.SegmentationStorage, "1.23"),
        (2, 0x0110, pydicom.uid.VLWholeSlideMicroscopyImageStorage, "1.2.3"),
    ],
)
def test_c_store_response_bytes_equal_pynetdicom(
    message_id: int, status: int, sop_class: str, sop_instance: str
) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.Status = status
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    ours = encode_c_store_response(message_id, status, sop_class, sop_instance)
    assert ours == pynetdicom_encoding(primitive)
    assert _plain_store_response(primitive) == ours


@pytest.mark.parametrize("context_id", [1, 3, 255])
def test_p_data_tf_bytes_equal_pynetdicom(context_id: int) -> None:
    fragment = b"\x03" + encode_c_store_response(5, 0, pydicom.uid.CTImageStorage, "1.2.3")
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, fragment))
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    assert encode_p_data_tf(context_id, fragment) == pdu.encode()


def test_responses_with_more_than_a_status_are_left_to_pynetdicom() -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.Status = 0xC000
    primitive.AffectedSOPClassUID = pydicom.uid.CTImageStorage
    primitive.AffectedSOPInstanceUID = "1.2.3"
    primitive.ErrorComment = "cannot understand"
    assert _plain_store_response(primitive) is None
    request = C_STORE()  # a request (no MessageIDBeingRespondedTo) is not a response
    request.MessageID = 1
    assert _plain_store_response(request) is None


def test_served_association_runs_the_prompt_reactor_and_stores(
    node: RunningNode, sts001_ct: list[Path]
) -> None:
    ae = client(pydicom.uid.CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        (served,) = node.server.active_associations
        assert served._run_reactor.__func__ is _prompt_reactor
        assert served.dimse.send_msg.__qualname__.startswith("send_store_responses_directly")
        assert served.dul._run_loop_delay == DUL_IDLE_SLEEP_S
        assert served.dul.state_machine.current_state == "Sta6"  # responses written directly
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
