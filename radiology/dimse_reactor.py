"""Serve an accepted association's DIMSE messages as soon as they are decoded.

pynetdicom (3.0) runs one reactor thread per accepted association
(``Association._run_reactor``). Each turn of its loop first sleeps a fixed 1 ms, then takes a
decoded message off the DIMSE queue if one is there, then looks for a release request, an
abort, a dead DUL thread and the network timeout. A C-STORE request that is decoded while the
reactor sleeps therefore waits for the rest of that millisecond (about 0.5-1.1 ms, measured
1.06 ms per sleep here) before its handler runs: a fifth of the node's time per CT instance.

:func:`serve_promptly` gives an accepted association a reactor that waits *on* the queue
instead: it wakes the moment a message is put there, and otherwise every
``IDLE_WAIT_S`` to do pynetdicom's other checks, in pynetdicom's order and with its effects
(A-RELEASE response, abort, timeout handling, events). It also honours pynetdicom's pause
checkpoint, which ``Association.send_*`` use to keep the reactor off the queue while they wait
for a response of their own.

The reactor is pynetdicom's private method, so this module depends on pynetdicom's internals
(``Association._kill``, ``_reactor_checkpoint``, ``_is_paused``, ``_serve_request``,
``dimse.msg_queue``); pyproject.toml pins pynetdicom's minor version and
tests/radiology/test_node_reactor.py fails when an upgrade moves any of them.
"""

from __future__ import annotations

import logging
import queue
import threading
import types
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association

log = logging.getLogger(__name__)

#: How long the reactor waits for a message before it looks for a release request, an abort
#: or a timeout (pynetdicom sleeps 1 ms before every look).
IDLE_WAIT_S = 0.001


class _SignallingQueue(queue.Queue[Any]):
    """A FIFO queue that sets :attr:`arrived` whenever an item is put on it."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.arrived.set()


def serve_promptly(assoc: Association) -> None:
    """Give an accepted, not yet started association the prompt reactor.

    Call it before the association thread starts (an ``EVT_CONN_OPEN`` handler is the place:
    pynetdicom triggers it just before ``Association.start``).
    """
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
        log.info("association released by the peer")
        assoc.is_released = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_RELEASED, {})
        assoc.kill()
        return True

    if assoc.acse.is_aborted():
        how = " (A-P-ABORT)" if assoc.acse.is_aborted("a-p-abort") else ""
        log.info("association aborted%s", how)
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
