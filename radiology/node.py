"""The DICOM node: a pynetdicom Application Entity that verifies, receives and stores.

- Verification SCP (C-ECHO) and Storage SCP for CT, MR, PET, RTSTRUCT, SEG, SR and VL Whole
  Slide Microscopy, each with every transfer syntax pynetdicom knows (compressed included:
  the node stores what it receives as received, it never decodes pixel data).
- Associations are accepted only from an allow-listed calling AE title *and* host, and only
  when they call our AE title; more than ``max_associations`` at once are rejected.
- The C-STORE handler answers Success only after :meth:`DicomStore.store` has made the file
  durable and committed its index row.
- Our sockets set ``TCP_NODELAY``: pynetdicom does not, and a PDU written in two pieces would
  otherwise wait for a delayed ACK (about 40 ms on loopback).
- pynetdicom's process-wide settings are made by :func:`start_node`
  (:func:`~osteomics.radiology.dimse.configure_pynetdicom`), not at import.
- Workers: radiomics (``[radiomics]``), and the study-job workers whose work the command
  layer supplies (``necrosis`` with ``[necrosis]``, ``radiomics_send`` with ``[results]``);
  their DICOM results go to ``[results] send_to``
  (:mod:`osteomics.radiology.necrosis_job`).
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom import uid as sc
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from osteomics.radiology import acceptor
from osteomics.radiology.config import NodeConfig, RemoteNode
from osteomics.radiology.dimse import (
    association_failure,
    configure_pynetdicom,
    set_tcp_nodelay,
)
from osteomics.radiology.errors import (
    AssociationFailedError,
    InconsistentDatasetError,
    InvalidDatasetError,
    NodeConfigError,
    StorageFullError,
    StoreError,
)
from osteomics.radiology.jobs import NECROSIS, STUDY_COMPLETE, JobQueue, QuietStudyScheduler
from osteomics.radiology.necrosis_job import RADIOMICS_SEND, StudyHandler, StudyJobWorker
from osteomics.radiology.pacs_types import StoreOutcome
from osteomics.radiology.part10 import PREAMBLE, encode_file_meta
from osteomics.radiology.radiomics_job import RadiomicsWorker, StudyRadiomics
from osteomics.radiology.store import DicomStore, read_dataset_attributes

log = logging.getLogger(__name__)

#: C-STORE status codes the node answers with (PS3.4 table B.2-1, PS3.7 annex C).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

#: The storage SOP classes the node accepts.
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    sc.CTImageStorage,
    sc.EnhancedCTImageStorage,
    sc.LegacyConvertedEnhancedCTImageStorage,
    sc.MRImageStorage,
    sc.EnhancedMRImageStorage,
    sc.EnhancedMRColorImageStorage,
    sc.LegacyConvertedEnhancedMRImageStorage,
    sc.PositronEmissionTomographyImageStorage,
    sc.EnhancedPETImageStorage,
    sc.LegacyConvertedEnhancedPETImageStorage,
    sc.RTStructureSetStorage,
    sc.SegmentationStorage,
    sc.BasicTextSRStorage,
    sc.EnhancedSRStorage,
    sc.ComprehensiveSRStorage,
    sc.Comprehensive3DSRStorage,
    sc.VLWholeSlideMicroscopyImageStorage,
)

#: Verification SOP Class (C-ECHO).
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

#: Seconds without network traffic before an idle association is dropped.
NETWORK_TIMEOUT_S = 60.0
#: Seconds to wait for an association request after a connection opens.
ACSE_TIMEOUT_S = 30.0
#: Seconds to wait for a DIMSE message inside an association.
DIMSE_TIMEOUT_S = 60.0


@dataclass
class RunningNode:
    """A node serving in background threads; :meth:`stop` ends it.

    Attributes
    ----------
    config:
        The settings it runs with.
    store:
        The study store it writes to (closed by :meth:`stop`).
    server:
        pynetdicom's threaded association server.
    port:
        The port it actually listens on (useful when the config asked for port 0).
    jobs:
        The job queue in the store's index.
    scheduler:
        The thread that queues ``study_complete`` jobs for quiet studies.
    radiomics:
        The radiomics worker thread (``[radiomics] enabled = true``), or ``None``.
    workers:
        The study-job worker threads by job kind (``necrosis``, ``radiomics_send``).
    """

    config: NodeConfig
    store: DicomStore
    server: ThreadedAssociationServer
    port: int
    jobs: JobQueue
    scheduler: QuietStudyScheduler
    radiomics: RadiomicsWorker | None = None
    workers: dict[str, StudyJobWorker] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop accepting, end the running associations, stop the scheduler (and the radiomics
        worker, after its current study), close the store."""
        log.info(
            "node %s shutting down (%d association(s) open)",
            self.config.ae_title,
            len(self.server.active_associations),
        )
        self.server.shutdown()
        self.scheduler.stop()
        if self.radiomics is not None:
            self.radiomics.stop()
        for worker in self.workers.values():
            worker.stop()
        self.jobs.close()
        self.store.close()
        log.info("node %s stopped", self.config.ae_title)


def build_ae(config: NodeConfig) -> AE:
    """The pynetdicom AE of ``config``: its contexts, limits and timeouts (not yet listening)."""
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.max_pdu_bytes
    ae.maximum_associations = config.max_associations
    ae.network_timeout = NETWORK_TIMEOUT_S
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.require_called_aet = True
    # A first, coarse gate; the (AE title, host) pair is checked in _on_requested.
    if config.allow:  # an empty allow-list rejects everyone in _on_requested
        ae.require_calling_aet = sorted({p.ae_title for p in config.allow})
    ae.add_supported_context(VERIFICATION_SOP_CLASS, ALL_TRANSFER_SYNTAXES)
    for uid in STORAGE_SOP_CLASSES:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    return ae


def start_node(
    config: NodeConfig,
    store: DicomStore | None = None,
    on_radiomics: Callable[[StudyRadiomics], None] | None = None,
    handlers: dict[str, StudyHandler] | None = None,
) -> RunningNode:
    """Recover the store, queue jobs for studies that went quiet while the node was down, then
    listen on ``config.host:config.port`` and queue ``study_complete`` jobs in background threads.

    Parameters
    ----------
    config:
        The node's settings.
    store:
        An open store to use; by default one is opened at ``config.storage``.
    on_radiomics:
        Called with each study's radiomics result once its job is done (the CLI scores it
        with the ``[fusion]`` signature); errors there are logged, the job stays done.
    handlers:
        The work of study jobs by kind, supplied by the command layer (the radiology room does
        not import the pathology room): ``necrosis`` (required with ``[necrosis] enabled``)
        and ``radiomics_send``. A worker thread runs each; with ``[results] send_to`` their
        DICOM objects are sent there.

    Returns
    -------
    RunningNode
        Call :meth:`RunningNode.stop` to end it.

    Raises
    ------
    StoreError
        The storage cannot be opened.
    AssociationFailedError
        The address cannot be bound (port in use, address not local).
    NodeConfigError
        ``[necrosis] enabled`` without a ``necrosis`` handler.
    """
    job_handlers = dict(handlers or {})
    if config.necrosis.enabled and NECROSIS not in job_handlers:
        raise NodeConfigError(
            f"{config.config_path or 'node.toml'}: [necrosis] enabled = true needs the "
            "pathology room's scoring: run the node with `osteomics node serve`, or pass a "
            "necrosis handler to start_node"
        )
    kinds = (STUDY_COMPLETE, NECROSIS) if config.necrosis.enabled else (STUDY_COMPLETE,)
    configure_pynetdicom(serving=True)
    store = store or DicomStore(config.storage)
    report = store.recover()
    if report.repaired:
        log.warning("store repaired at start: %s", report)
    jobs = JobQueue(config.storage)
    jobs.queue_quiet_studies(config.study_quiet_seconds, kinds=kinds)
    ae = build_ae(config)
    peers = AssociationLog()
    events: list[Any] = [
        (evt.EVT_CONN_OPEN, set_tcp_nodelay),
        (evt.EVT_CONN_OPEN, _speed_up),
        (evt.EVT_REQUESTED, _on_requested, [config]),
        (evt.EVT_C_STORE, _on_c_store_counted, [store, peers]),
        *peers.handlers(),
    ]
    try:
        server = ae.start_server(
            (config.host, config.port),
            block=False,
            evt_handlers=events,
            ssl_context=_server_ssl_context(config),
        )
    except OSError as exc:
        jobs.close()
        store.close()
        raise AssociationFailedError(
            f"node {config.ae_title} cannot listen on {config.host}:{config.port} "
            f"({exc.strerror or exc}); choose another [node] port or host in "
            f"{config.config_path or 'node.toml'}"
        ) from exc
    assert server is not None
    port = int(server.server_address[1])
    log.info("node %s listening on %s:%d", config.ae_title, config.host, port)
    scheduler = QuietStudyScheduler(jobs, config.study_quiet_seconds, kinds=kinds).start()
    worker = None
    if config.radiomics.enabled:
        if config.results.send_to is not None and RADIOMICS_SEND in job_handlers:
            on_radiomics = _queue_send_after(config, on_radiomics)
        worker = RadiomicsWorker(store, config.radiomics, on_result=on_radiomics).start()
        log.info("radiomics worker started (%s)", ", ".join(config.radiomics.modalities))
    workers = {
        kind: StudyJobWorker(
            store,
            kind,
            handler,
            poll_seconds=config.necrosis.poll_seconds,
            send=_sender(config),
            send_to=config.results.send_to,
        ).start()
        for kind, handler in job_handlers.items()
        if kind != NECROSIS or config.necrosis.enabled
    }
    for kind in workers:
        log.info(
            "%s worker started%s",
            kind,
            f", results sent to {config.results.send_to}" if config.results.send_to else "",
        )
    return RunningNode(config, store, server, port, jobs, scheduler, worker, workers)


def _queue_send_after(
    config: NodeConfig, then: Callable[[StudyRadiomics], None] | None
) -> Callable[[StudyRadiomics], None]:
    """After a study's radiomics job is done: queue its ``radiomics_send`` job (durable, so the
    SR is sent, and retried, by the queue's rules), then call ``then`` (the fusion scoring)."""

    def after(result: StudyRadiomics) -> None:
        with JobQueue(config.storage) as queue:
            queue.enqueue(RADIOMICS_SEND, result.study_uid)
        if then is not None:
            then(result)

    return after


def _sender(config: NodeConfig) -> Callable[[Sequence[Path]], StoreOutcome] | None:
    """``send_files`` to ``[results] send_to``, or None when results stay on disk."""
    remote = config.results.send_to
    if remote is None:
        return None

    def send(files: Sequence[Path]) -> StoreOutcome:
        from osteomics.radiology.pacs import send_files

        return send_files(config, remote, files)

    return send


def serve(
    config: NodeConfig,
    ready: Callable[[RunningNode], None] | None = None,
    on_radiomics: Callable[[StudyRadiomics], None] | None = None,
    handlers: dict[str, StudyHandler] | None = None,
) -> None:
    """Run the node in the foreground until SIGINT or SIGTERM.

    ``ready`` is called once the node listens (the CLI prints where); ``on_radiomics`` after
    each study's radiomics job is done; ``handlers`` do the study jobs (see :func:`start_node`).
    """
    node = start_node(config, on_radiomics=on_radiomics, handlers=handlers)
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        log.info("node %s: %s received", config.ae_title, signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None:
            ready(node)
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        node.stop()


@dataclass(frozen=True)
class EchoResult:
    """The outcome of a C-ECHO: status and round-trip time in milliseconds."""

    remote: str
    status: int
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.status == STATUS_SUCCESS


def echo(config: NodeConfig, remote: RemoteNode, timeout_s: float = 10.0) -> EchoResult:
    """C-ECHO ``remote`` as our AE title.

    Raises
    ------
    AssociationFailedError
        The remote could not be reached, rejected the association or did not answer.
    """
    configure_pynetdicom()
    ae = AE(ae_title=config.ae_title)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    start = time.perf_counter()
    assoc = ae.associate(
        remote.host,
        remote.port,
        ae_title=remote.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
    )
    if not assoc.is_established:
        raise AssociationFailedError(
            association_failure(
                remote, config.ae_title, assoc, timeout_s, str(config.config_path or "node.toml")
            )
        )
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise AssociationFailedError(
            f"remote {remote.name} ({remote.ae_title}) did not answer the C-ECHO in {timeout_s} s"
        )
    return EchoResult(remote.name, int(status.Status), (time.perf_counter() - start) * 1000)


# -- event handlers -------------------------------------------------------------------------


def _speed_up(event: evt.Event) -> None:
    """Run the accepted association without pynetdicom's idle sleeps and with C-STORE
    responses encoded directly (see radiology/acceptor.py)."""
    acceptor.speed_up(event.assoc)


def _on_requested(event: evt.Event, config: NodeConfig) -> None:
    """Reject an association unless its calling AE title and host are allow-listed."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    calling = request.calling_ae_title.strip() if request is not None else ""
    host = assoc.requestor.address
    if not config.is_allowed(calling, host):
        log.warning(
            "rejected association from %r at %s: not on the allow-list of %s",
            calling,
            host,
            config.config_path or "node.toml",
        )
        # rejected-permanent, service-user, calling AE title not recognised
        assoc.acse.send_reject(0x01, 0x01, 0x03)
        # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ is out and
        # the peer closed, otherwise the socket is shut before the PDU leaves.
        assoc.kill()


class AssociationLog:
    """Logs each accepted association: one line when it is accepted, one when it ends
    (released, aborted, or its connection closed) with the instances stored and refused in it.

    Names AE titles, addresses and counts only, never patient data. Its handlers are bound by
    :func:`start_node`; :func:`_on_c_store_counted` counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # association -> [calling AE, "host:port", stored, refused]
        self._open: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()

    def handlers(self) -> list[tuple[Any, Any]]:
        """The pynetdicom event handlers to bind."""
        return [
            (evt.EVT_ACCEPTED, self._accepted),
            (evt.EVT_RELEASED, lambda event: self._ended(event, "released")),
            (evt.EVT_ABORTED, lambda event: self._ended(event, "aborted")),
            (evt.EVT_CONN_CLOSE, lambda event: self._ended(event, _how_it_ended(event.assoc))),
        ]

    def count(self, assoc: Any, stored: bool) -> None:
        """Count one C-STORE of ``assoc``: stored (Success) or refused."""
        with self._lock:
            entry = self._open.get(assoc)
            if entry is not None:
                entry[2 if stored else 3] += 1

    def _accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        where = f"{assoc.requestor.address}:{assoc.requestor.port}"
        with self._lock:
            self._open[assoc] = [calling, where, 0, 0]
        log.info("association accepted from AE %s at %s", calling, where)

    def _ended(self, event: evt.Event, how: str) -> None:
        with self._lock:
            entry = self._open.pop(event.assoc, None)
        if entry is None:  # already logged, or never accepted (rejected: logged at the request)
            return
        calling, where, stored, refused = entry
        log.info(
            "association %s: AE %s at %s, %d instance(s) stored, %d refused",
            how,
            calling,
            where,
            stored,
            refused,
        )


def _how_it_ended(assoc: Any) -> str:
    """For a closed connection: whether its association was aborted or released first (the
    close can come before pynetdicom's EVT_ABORTED or EVT_RELEASED)."""
    if assoc.is_aborted or assoc.acse.is_aborted():
        return "aborted"
    if assoc.is_released:
        return "released"
    return "closed without release"


def _on_c_store_counted(event: evt.Event, store: DicomStore, peers: AssociationLog) -> int:
    """:func:`_on_c_store`, counted for the association's log line."""
    status = _on_c_store(event, store)
    peers.count(event.assoc, status == STATUS_SUCCESS)
    return status


def _on_c_store(event: evt.Event, store: DicomStore) -> int:
    """Store one received instance; Success only once it is durable and indexed."""
    calling = event.assoc.requestor.ae_title.strip()
    source = f"C-STORE from AE {calling}"
    request = cast(C_STORE, event.request)
    sop_class_uid = str(request.AffectedSOPClassUID)
    sop_instance_uid = str(request.AffectedSOPInstanceUID)
    transfer_syntax = str(event.context.transfer_syntax)
    try:
        # The File Meta Information pynetdicom's ``event.encoded_dataset()`` would write
        # (same bytes, see part10.encode_file_meta), at a tenth of its cost.
        head = PREAMBLE + encode_file_meta(
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax,
            PYNETDICOM_IMPLEMENTATION_UID,
            PYNETDICOM_IMPLEMENTATION_VERSION,
        )
        data = head + cast(BytesIO, request.DataSet).getvalue()
    except (UnicodeEncodeError, AttributeError) as exc:  # not ASCII, or no data set
        log.error("%s: cannot build the file of the received dataset: %s", source, exc)
        return STATUS_CANNOT_UNDERSTAND
    try:
        attrs = read_dataset_attributes(data, len(head), transfer_syntax, source)
        if sop_instance_uid != attrs.sop_instance_uid or sop_class_uid != attrs.sop_class_uid:
            log.error(
                "%s refused: the command names SOP Instance %a of class %a, the dataset %s "
                "of class %s",
                source,
                sop_instance_uid[:80],
                sop_class_uid[:80],
                attrs.sop_instance_uid,
                attrs.sop_class_uid,
            )
            return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS
        result = store.store(data, source=source, attributes=attrs)
    except StorageFullError as exc:
        log.error("%s", exc)
        return STATUS_OUT_OF_RESOURCES
    except InconsistentDatasetError as exc:
        log.error("refused: %s", exc)
        return STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS
    except InvalidDatasetError as exc:
        log.error("refused: %s", exc)
        return STATUS_CANNOT_UNDERSTAND
    except StoreError as exc:
        log.error("%s", exc)
        return STATUS_OUT_OF_RESOURCES
    except Exception:  # never let a bug kill the association without a status
        log.exception("%s: unexpected error while storing", source)
        return STATUS_PROCESSING_FAILURE
    log.debug("%s: %s %s", source, result.outcome, result.record.attributes.sop_instance_uid)
    return STATUS_SUCCESS


class _DeferredHandshakeContext(ssl.SSLContext):
    """An SSL context whose server sockets shake hands on first use, not in ``accept``.

    pynetdicom wraps each accepted socket in its single accepting thread; with the default
    handshake-on-wrap, one peer that connects and sends nothing (or plain DICOM) would hold up
    every other connection. Deferred, the handshake runs in the association's own thread.
    """

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if kwargs.get("server_side"):
            kwargs["do_handshake_on_connect"] = False
            sock.settimeout(ACSE_TIMEOUT_S)
        return super().wrap_socket(sock, *args, **kwargs)


def _server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """A server TLS context from ``[node.tls]`` (peer certificates required when ``ca`` is set)."""
    if config.tls is None:
        return None
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls.certificate), str(config.tls.key))
    if config.tls.ca is not None:
        context.load_verify_locations(str(config.tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
