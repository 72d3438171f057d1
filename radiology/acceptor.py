"""How the node runs an association it accepted: pynetdicom's, with three hot spots removed.

pynetdicom (3.0) runs each accepted association in two threads: the DUL reactor (socket and
PDUs) and the association reactor (DIMSE messages and their handlers). Per C-STORE of an STS
CT image (56 KB on average), measured here in-process, three things in them cost as much as
the node's own work (write, fsync and index, about 0.9 ms):

1. The association reactor (``Association._run_reactor``) sleeps a fixed 1 ms before each
   look at its message queue, so a decoded C-STORE request waits for the rest of that
   millisecond (0.5-1.1 ms). :func:`serve_promptly` gives the association a reactor that waits
   *on* the queue: it wakes the moment a message is put there, and otherwise every
   ``IDLE_WAIT_S`` to do pynetdicom's other checks, in pynetdicom's order and with its effects
   (A-RELEASE response, abort, network timeout, events, the pause checkpoint that
   ``Association.send_*`` use). bench/node.py: +13 % instances/s.
2. Every C-STORE response is built as a pydicom Dataset and encoded twice (once for the
   command group length), 0.4-0.6 ms, then queued for the DUL thread, which picks it up after
   its next idle sleep and encodes the PDU. :func:`encode_c_store_response` and
   :func:`encode_p_data_tf` write the same bytes with ``struct`` (the tests compare them with
   pynetdicom's), and :func:`send_store_responses_directly` writes them to the socket from the
   association's own thread, for the plain responses the node gives (a status, no error
   comment or offending element) on an established plain-TCP association (an SSL object must
   not be used by two threads at once) where nobody listens to ``EVT_DIMSE_SENT`` or
   ``EVT_PDU_SENT``. Anything else goes through pynetdicom as before. The DUL thread may
   write at the same time (an A-ABORT after a broken PDU or when the node shuts down), so
   every write to the association's socket, and every state-machine action, holds one
   per-association lock (:func:`exclusive_writes`): the association's thread checks that the
   association is still established (Sta6, no A-ABORT sent) and writes under it, so a
   response can neither interleave with an A-ABORT nor follow one. A response whose
   association was aborted meanwhile is dropped (pynetdicom's own path would hand it to a DUL
   thread that no longer accepts it). In-process, per CT instance from storescu:
   2.4 -> 1.8 ms; the lock costs two uncontended acquisitions per response.
3. The DUL reactor sleeps ``_run_loop_delay`` (1 ms) whenever its socket and queue are empty,
   once before the request and once before the response; ``DUL_IDLE_SLEEP_S`` shortens it.

All three reach into pynetdicom's private parts (``Association._kill``,
``_reactor_checkpoint``, ``_is_paused``, ``_serve_request``, ``dimse.msg_queue``,
``dimse.send_msg``, ``dul.state_machine.do_action``, ``dul.socket.send``,
``dul._run_loop_delay``); pyproject.toml pins
pynetdicom's minor version, and tests/radiology/test_node_acceptor.py fails when an upgrade
moves any of them.
"""

from __future__ import annotations

import logging
import queue
import ssl
import struct
import threading
import types
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from osteomics.radiology.part10 import encode_ui

log = logging.getLogger(__name__)

#: How long the association reactor waits for a message before it looks for a release
#: request, an abort or a timeout (pynetdicom sleeps 1 ms before every look).
IDLE_WAIT_S = 0.001
#: The DUL reactor's idle sleep. At 0.2 ms instead of 1 ms the node received the STS CTs from
#: storescu at 367/s instead of 312/s; 0.05 ms and 0 were no faster. An idle association
#: costs 6 % of a core instead of 3.6 % (4 idle associations: 24 % vs 14 %).
DUL_IDLE_SLEEP_S = 0.0002

_C_STORE_RSP_COMMAND_FIELD = 0x8001
_NO_DATASET = 0x0101
#: Command set element headers, Implicit VR Little Endian (PS3.7 6.3.1): tag and length.
_IMPLICIT = struct.Struct("<HHI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
#: PDU header (type, reserved, length) and PDV item header (length, context ID), big endian.
_PDU_HEADER = struct.Struct(">BBI")
_PDV_ITEM = struct.Struct(">IB")


def speed_up(assoc: Association) -> None:
    """Apply all three to an accepted association that has not started yet.

    An ``EVT_CONN_OPEN`` handler is the place: pynetdicom triggers it just before
    ``Association.start``.
    """
    serve_promptly(assoc)
    send_store_responses_directly(assoc)
    assoc.dul._run_loop_delay = DUL_IDLE_SLEEP_S


# -- 1. the association reactor -------------------------------------------------------------


class _SignallingQueue(queue.Queue[Any]):
    """A FIFO queue that sets :attr:`arrived` whenever an item is put on it."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.arrived.set()


def serve_promptly(assoc: Association) -> None:
    """Give an accepted, not yet started association the prompt reactor."""
    if not assoc.dimse.msg_queue.empty():  # pragma: no cover - a message before the reactor?
        raise RuntimeError("serve_promptly must be called before the association starts")
    assoc.dimse.msg_queue = _SignallingQueue()
    # An instance attribute: pynetdicom's Association.run() calls self._run_reactor().
    assoc._run_reactor = types.MethodType(_prompt_reactor, assoc)  # type: ignore[method-assign]


def _prompt_reactor(assoc: Association) -> None:
    """The acceptor's loop: serve each DIMSE message as it arrives, end the association on a
    release request, an abort, a dead DUL thread or the network timeout."""
    messages: _SignallingQueue = assoc.dimse.msg_queue  # type: ignore[assignment]
    assoc._is_paused = False
    while not assoc._kill:
        messages.arrived.clear()
        if messages.empty():
            messages.arrived.wait(IDLE_WAIT_S)

        # A send_*() of this association's own may hold the reactor off the queue.
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False

        context_id, message = assoc.dimse.get_msg(block=False)
        if message:
            assoc._serve_request(message, context_id)  # type: ignore[arg-type]

        if _ended(assoc):
            return


def _ended(assoc: Association) -> bool:
    """Do pynetdicom's end-of-association checks; True once the association is over."""
    if assoc.is_established and assoc.acse.is_release_requested():
        assoc.acse.send_release(is_response=True)
        log.debug("association released by the peer")
        assoc.is_released = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_RELEASED, {})
        assoc.kill()
        return True

    if assoc.acse.is_aborted():
        how = " (A-P-ABORT)" if assoc.acse.is_aborted("a-p-abort") else ""
        log.debug("association aborted%s", how)
        assoc.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for the abort
        assoc.is_aborted = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_ABORTED, {})
        assoc.kill()
        return True

    if not assoc.dul.is_alive():
        assoc.kill()
        return True

    if assoc.dul.idle_timer_expired():
        log.error("association dropped: no traffic for %s s", assoc.network_timeout)
        if assoc.network_timeout_response == "A-RELEASE":
            assoc._is_paused = True
            assoc._reactor_checkpoint.wait()
            assoc.release()
            assoc._is_paused = False
        else:
            assoc.abort()
        assoc.kill()
        return True
    return False


# -- 2. C-STORE responses -------------------------------------------------------------------


def encode_c_store_response(
    message_id: int, status: int, sop_class_uid: str, sop_instance_uid: str
) -> bytes:
    """The command set of a C-STORE response without a data set (PS3.7 9.3.1.2), Implicit VR
    Little Endian: group length, affected SOP class, command field, message ID being responded
    to, command data set type, status, affected SOP instance.

    Raises ``UnicodeEncodeError`` for a UID that is not ASCII, ``struct.error`` for a message
    ID or status outside 0..65535.
    """
    elements = b"".join(
        (
            _element(0x0002, encode_ui(sop_class_uid)),
            _element(0x0100, _U16.pack(_C_STORE_RSP_COMMAND_FIELD)),
            _element(0x0120, _U16.pack(message_id)),
            _element(0x0800, _U16.pack(_NO_DATASET)),
            _element(0x0900, _U16.pack(status)),
            _element(0x1000, encode_ui(sop_instance_uid)),
        )
    )
    return _element(0x0000, _U32.pack(len(elements))) + elements


def _element(element: int, value: bytes) -> bytes:
    return _IMPLICIT.pack(0x0000, element, len(value)) + value


class SocketWrites:
    """The lock every write to one association's socket holds, and whether an A-ABORT went out.

    Installed by :func:`exclusive_writes`; the DUL thread takes the lock around each
    state-machine action (which may send a PDU and change the state) and each socket write,
    the association's thread around its check of the state and its write of a response.
    Reentrant: an action's write takes it again in the same thread.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        #: An A-ABORT PDU was written (by the state machine, or by the DUL thread bypassing it
        #: after an exception); nothing may follow it on the wire.
        self.abort_sent = False


def exclusive_writes(assoc: Association) -> SocketWrites:
    """Make every write to ``assoc``'s socket and every state transition of its DUL exclusive.

    Wraps the association's state machine ``do_action`` (where pynetdicom sends a PDU and then
    moves to the next state) and its socket's ``send`` (also used directly by the DUL thread
    for an A-ABORT after an exception) in one reentrant lock. Call before the association
    starts (an ``EVT_CONN_OPEN`` handler).
    """
    writes = SocketWrites()
    state_machine = assoc.dul.state_machine
    do_action = state_machine.do_action

    def locked_do_action(event: str) -> None:
        with writes.lock:
            do_action(event)

    state_machine.do_action = locked_do_action  # type: ignore[method-assign]

    sock = assoc.dul.socket
    if sock is not None:
        send = sock.send

        def locked_send(bytestream: bytes) -> None:
            with writes.lock:
                if bytestream[:1] == b"\x07":  # A-ABORT PDU (PS3.8 9.3.8)
                    writes.abort_sent = True
                send(bytestream)

        sock.send = locked_send  # type: ignore[method-assign]
    return writes


#: States in which the association is over or being torn down: a response is not sent.
_ENDED_STATES = frozenset({"Sta1", "Sta13"})


def send_store_responses_directly(assoc: Association) -> None:
    """Send the association's plain C-STORE responses as bytes encoded here (see the module
    docstring); every other message goes through pynetdicom's ``send_msg``."""
    dimse = assoc.dimse
    send_by_pynetdicom = dimse.send_msg
    writes = exclusive_writes(assoc)
    state_machine = assoc.dul.state_machine

    def send_msg(primitive: Any, context_id: int) -> None:
        command = _plain_store_response(primitive)
        # One PDV of one P-DATA-TF: it must fit the peer's maximum PDU (0: no limit).
        limit = dimse.maximum_pdu_size
        if (
            command is None
            or (limit and len(command) + 6 > limit)
            or assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            send_by_pynetdicom(primitive, context_id)
            return
        # Message control header 0b11: a command fragment, the last one (PS3.8 E.2).
        fragment = b"\x03" + command
        sock = assoc.dul.socket
        if sock is not None and _may_write_directly(assoc):
            pdu = encode_p_data_tf(context_id, fragment)
            with writes.lock:  # the state cannot change, nor anyone else write, until sent
                state = state_machine.current_state
                if state == "Sta6" and not writes.abort_sent:
                    sock.send(pdu)
                    return
                if writes.abort_sent or state in _ENDED_STATES:
                    log.debug(
                        "C-STORE response to message %s not sent: the association was aborted",
                        primitive.MessageIDBeingRespondedTo,
                    )
                    return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, fragment))
        assoc.dul.send_pdu(pdata)

    dimse.send_msg = send_msg  # type: ignore[method-assign]


def _plain_store_response(primitive: Any) -> bytes | None:
    """The encoded command set of a C-STORE response that carries nothing but a status, or
    ``None`` for anything else."""
    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    status = primitive.Status
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    if status is None or sop_class is None or sop_instance is None:
        return None
    try:
        return encode_c_store_response(
            primitive.MessageIDBeingRespondedTo, status, sop_class, sop_instance
        )
    except (UnicodeEncodeError, struct.error):  # pynetdicom says what is wrong
        return None


def encode_p_data_tf(context_id: int, fragment: bytes) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) holding one presentation data value: ``fragment`` is its
    message control header and data."""
    item = _PDV_ITEM.pack(len(fragment) + 1, context_id) + fragment
    return _PDU_HEADER.pack(0x04, 0x00, len(item)) + item


def _may_write_directly(assoc: Association) -> bool:
    """True when the reactor thread may write a PDU to the socket itself rather than queue it
    for the DUL thread: a plain TCP socket (an SSL object must not be used by two threads at
    once) and nobody listening for PDU events. Whether the association is still established
    (state Sta6, where a P-DATA request is sent without a state change) is checked under the
    write lock, just before the write."""
    sock = assoc.dul.socket
    return (
        sock is not None
        and not isinstance(sock.socket, ssl.SSLSocket)
        and not assoc.get_handlers(evt.EVT_PDU_SENT)
    )
