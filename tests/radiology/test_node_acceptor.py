"""How the node runs accepted associations (radiology/acceptor.py), on real associations.

The reactor replaces pynetdicom's private acceptor loop, so these tests check that it still
does every job of that loop: serve messages, answer a release, notice an abort, drop a silent
peer, and that the node serves the next association after each. The C-STORE responses the node
encodes itself must be pynetdicom's bytes.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
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
from pynetdicom.transport import AssociationSocket

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
    # acceptor.exclusive_writes wraps these two: every state-machine action, every write.
    assert callable(assoc.dul.state_machine.do_action)
    assert callable(AssociationSocket.send) and callable(AssociationSocket.close)


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
        # ... under the lock that the DUL thread's actions and writes take too (bug 7).
        assert served.dul.state_machine.do_action.__qualname__.startswith("exclusive_writes")
        assert served.dul.socket.send.__qualname__.startswith("exclusive_writes")
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


# -- an abort racing the C-STORE responses, seen on the wire by a raw-socket peer -------------

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"
#: An unknown PDU type (PS3.8 9.3.1 defines 0x01-0x07): the node must answer with an A-ABORT.
_UNKNOWN_PDU = b"\x0a\x00\x00\x00\x00\x00"
#: A-ABORT PDU, service-user source (PS3.8 9.3.8).
_A_ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def _associate_rq(calling: str, called: str) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) for CT Image Storage in Implicit VR Little Endian."""
    context = _item(
        0x20,
        bytes([1, 0, 0, 0])
        + _item(0x30, _CT_IMAGE_STORAGE.encode())
        + _item(0x40, _IMPLICIT_VR_LE.encode()),
    )
    user = _item(
        0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.1")
    )
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return _pdu(0x01, body)


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set in Implicit VR Little Endian, with its group length."""
    body = b"".join(struct.pack("<HHI", 0, tag, len(v)) + v for tag, v in elements)
    return struct.pack("<HHII", 0, 0x0000, 4, len(body)) + body


def _c_store_rq(message_id: int, sop_instance_uid: str, dataset: bytes) -> bytes:
    """The P-DATA-TF PDUs of one C-STORE request (PS3.7 9.3.1.1): command, then the data set in
    fragments of at most 16 KiB."""
    command = _command(
        [
            (0x0002, _uid(_CT_IMAGE_STORAGE)),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, _uid(sop_instance_uid)),
        ]
    )
    out = [_pdu(0x04, struct.pack(">IB", len(command) + 2, 1) + b"\x03" + command)]
    step = 16384
    for start in range(0, len(dataset), step):
        control = b"\x02" if start + step >= len(dataset) else b"\x00"
        chunk = dataset[start : start + step]
        out.append(_pdu(0x04, struct.pack(">IB", len(chunk) + 2, 1) + control + chunk))
    return b"".join(out)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise AssertionError(f"the node closed the connection after {len(data)} of {n} bytes")
        data += more
    return data


def _responses_on_the_wire(wire: bytes, sent_ids: set[int]) -> tuple[list[int], bool]:
    """Parse what the node wrote after the A-ASSOCIATE-AC: whole P-DATA-TF PDUs, each one
    C-STORE response command, optionally ended by one A-ABORT and nothing after it.

    Returns the message IDs answered, in wire order, and whether an A-ABORT came last.
    """
    answered: list[int] = []
    offset = 0
    while offset < len(wire):
        assert len(wire) - offset >= 6, f"a truncated PDU header at byte {offset}: {wire!r}"
        pdu_type, _, length = struct.unpack_from(">BBI", wire, offset)
        body = wire[offset + 6 : offset + 6 + length]
        assert len(body) == length, f"a truncated PDU at byte {offset}: {wire[offset:]!r}"
        offset += 6 + length
        if pdu_type == 0x07:
            assert length == 4, f"a garbled A-ABORT: {body!r}"
            assert offset == len(wire), f"bytes after the A-ABORT: {wire[offset:]!r}"
            return answered, True
        assert pdu_type == 0x04, f"PDU type 0x{pdu_type:02X} among the responses: {wire!r}"
        pdv_length, context_id = struct.unpack_from(">IB", body)
        assert pdv_length == length - 4 and context_id == 1, f"a garbled PDV: {body!r}"
        assert body[5] == 0x03, f"not a last command fragment: {body!r}"
        command = body[6:]
        elements: dict[int, bytes] = {}
        pos = 0
        while pos < len(command):
            group, tag, size = struct.unpack_from("<HHI", command, pos)
            assert group == 0, f"a garbled command set: {command!r}"
            elements[tag] = command[pos + 8 : pos + 8 + size]
            pos += 8 + size
        assert pos == len(command)
        assert struct.unpack("<I", elements[0x0000])[0] == len(command) - 12
        assert struct.unpack("<H", elements[0x0100])[0] == 0x8001  # C-STORE-RSP
        message_id = struct.unpack("<H", elements[0x0120])[0]
        assert message_id in sent_ids and message_id not in answered
        assert struct.unpack("<H", elements[0x0900])[0] == 0x0000
        answered.append(message_id)
    return answered, False


def test_abort_racing_c_store_responses_never_garbles_the_wire_nor_follows_the_abort(
    node: RunningNode, sts001_ct: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Bug 7: the association's thread writes C-STORE responses while the DUL thread may write
    an A-ABORT. A raw peer streams C-STOREs and then either sends a PDU the node must abort on
    (our side aborts) or aborts itself, many times, reading every byte the node writes: whole
    PDUs only, every response a well-formed C-STORE-RSP, nothing after the node's A-ABORT, no
    exception in the node's threads, and the node serves the next association."""
    images = [pydicom.dcmread(p) for p in sts001_ct[:12]]
    datasets = []
    for path, image in zip(sts001_ct, images, strict=False):
        raw = path.read_bytes()
        meta_end = 132 + 12 + int(image.file_meta.FileMetaInformationGroupLength)
        assert image.file_meta.TransferSyntaxUID == _IMPLICIT_VR_LE
        datasets.append((str(image.SOPInstanceUID), raw[meta_end:]))

    thread_errors: list[str] = []
    previous_hook = threading.excepthook

    def record(args: threading.ExceptHookArgs) -> None:
        thread_errors.append(f"{getattr(args.thread, 'name', '?')}: {args.exc_value!r}")

    threading.excepthook = record
    aborted_by_node = 0
    answered_total = 0
    try:
        for iteration in range(30):
            count = 1 + iteration % len(datasets)
            requests = b"".join(
                _c_store_rq(i + 1, uid, data) for i, (uid, data) in enumerate(datasets[:count])
            )
            node_aborts = iteration % 2 == 0
            with socket.create_connection(("127.0.0.1", node.port), timeout=10) as peer:
                peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer.sendall(_associate_rq("STORESCU", NODE_AE))
                header = _read_exactly(peer, 6)
                assert header[0] == 0x02, f"association not accepted: {header!r}"
                _read_exactly(peer, struct.unpack(">I", header[2:])[0])
                # Everything at once: the abort comes while responses are being written.
                peer.sendall(requests + (_UNKNOWN_PDU if node_aborts else _A_ABORT))
                wire = b""
                closed_by_us = False
                while True:
                    try:
                        more = peer.recv(65536)
                    except TimeoutError:
                        raise AssertionError(
                            f"iteration {iteration}: the node neither closed nor went on "
                            f"after {wire!r}"
                        ) from None
                    if not more:
                        break
                    wire += more
                    if not closed_by_us and b"\x07\x00\x00\x00\x00\x04" in wire:
                        # The node aborted: we close, it then closes (ARTIM not waited for).
                        peer.shutdown(socket.SHUT_WR)
                        closed_by_us = True
            sent_ids = set(range(1, count + 1))
            answered, node_abort_seen = _responses_on_the_wire(wire, sent_ids)
            assert answered == sorted(answered), answered
            assert node_abort_seen == node_aborts, (iteration, wire)
            aborted_by_node += node_abort_seen
            answered_total += len(answered)
    finally:
        threading.excepthook = previous_hook

    assert aborted_by_node == 15
    assert not thread_errors, thread_errors
    pynetdicom_errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "Unknown PDU type" not in r.getMessage()
    ]
    assert not [m for m in pynetdicom_errors if "Invalid event" in m or "DUL" in m], (
        pynetdicom_errors
    )
    assert wait_until(lambda: not node.server.active_associations)
    assert echo_ok(node)
    assert answered_total > 0  # the race was run: responses went out before the aborts
