"""Pulling studies from a PACS: C-FIND (Study Root) the matching studies, then C-MOVE each to
our own AE title, and report what arrived in the store.

The network side is a PACS-connector plugin (kind ``pacs_connector``; the built-in one is
``dimse``, :mod:`osteomics.plugins.dimse_connector`). A connector plugin's factory is called
with the node's :class:`~osteomics.radiology.config.NodeConfig` and ``timeout_s=`` and returns
an object with ``find_studies`` and ``move_study``
(:class:`~osteomics.radiology.pacs_types.PacsConnector`; the types a connector returns are in
:mod:`osteomics.radiology.pacs_types` too).

The C-MOVE sub-operations are C-STOREs from the PACS to our node, so the node must be serving
(``osteomics node serve``) while a pull runs: :func:`pull` checks that something listens on the
node's address before asking the PACS, and reads what arrived from the node's index (the node
answers each C-STORE only once the instance is durable and indexed, and the PACS sends its final
C-MOVE response only after the last sub-operation, so the index is complete when it comes).

A DICOMweb remote (``protocol = "dicomweb"`` in node.toml) has no C-MOVE: :func:`pull` finds the
studies with QIDO-RS and retrieves them with WADO-RS itself (the ``dicomweb`` connector). If our
node is serving (it holds the store's writer lock), each retrieved instance is C-STOREd to it,
one association per study, so the node stores and indexes it and queues the study's quiet-study
job as it does for a C-MOVE; the node's allow-list must then list its own AE title from this
host. If no node serves, the instances are written into the store directly (a writer), and the
node queues the jobs of studies that went quiet when it next starts.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from osteomics.core.plugins import discover_plugins
from osteomics.radiology.config import NodeConfig, RemoteNode
from osteomics.radiology.errors import AssociationFailedError, NodeConfigError
from osteomics.radiology.pacs_types import MoveOutcome, PacsConnector, StoreOutcome, StudyMatch
from osteomics.radiology.store import DicomStore, StoreLockedError
from osteomics.radiology.uids import validate_uid

log = logging.getLogger(__name__)

#: The connector ``node pull`` uses unless told otherwise.
DEFAULT_CONNECTOR = "dimse"


#: How a pulled study came: DIMSE C-MOVE, or DICOMweb WADO-RS handed to the serving node or
#: written into the store directly.
TRANSFER_C_MOVE = "C-MOVE"
TRANSFER_WADO_TO_NODE = "WADO-RS + C-STORE to the node"
TRANSFER_WADO_TO_STORE = "WADO-RS into the store"


@dataclass(frozen=True)
class PulledStudy:
    """One study of a pull: what the PACS announced, what the transfer said, what is stored.

    For a DICOMweb remote ``move`` holds the same counts as a C-MOVE's: ``completed`` the
    instances now in the store (new or already there), ``failed`` those refused, and its status
    0x0000 (all there) or 0xB000 (some failed); ``transfer`` says which way they came.
    """

    match: StudyMatch
    move: MoveOutcome
    stored_series: int
    stored_instances: int
    transfer: str = TRANSFER_C_MOVE

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.match.study_uid,
            "patient_id": self.match.patient_id,
            "study_date": self.match.study_date,
            "modalities": list(self.match.modalities),
            "remote_instances": self.match.instances,
            "transfer": self.transfer,
            "move_status": f"0x{self.move.status:04X}",
            "completed": self.move.completed,
            "failed": self.move.failed,
            "warning": self.move.warning,
            "stored_series": self.stored_series,
            "stored_instances": self.stored_instances,
        }


@dataclass(frozen=True)
class PullReport:
    """What ``node pull`` did."""

    remote: str
    studies: list[PulledStudy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every study moved without a failed sub-operation."""
        return all(s.move.ok for s in self.studies)

    @property
    def instances(self) -> int:
        return sum(s.stored_instances for s in self.studies)

    @property
    def series(self) -> int:
        return sum(s.stored_series for s in self.studies)

    @property
    def failed(self) -> int:
        return sum(s.move.failed for s in self.studies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "remote": self.remote,
            "studies": [s.to_dict() for s in self.studies],
            "series": self.series,
            "instances": self.instances,
            "failed": self.failed,
        }


def get_connector(
    config: NodeConfig, name: str = DEFAULT_CONNECTOR, timeout_s: float = 60.0
) -> PacsConnector:
    """Build the ``pacs_connector`` plugin called ``name`` for ``config``.

    The plugin's factory is called as ``factory(config, timeout_s=timeout_s)``.

    Raises
    ------
    NodeConfigError
        No such connector is installed (the message lists those that are).
    """
    plugins, _ = discover_plugins("pacs_connector")
    for plugin in plugins:
        if plugin.name == name:
            connector: PacsConnector = plugin.factory(config, timeout_s=timeout_s)
            return connector
    known = ", ".join(p.name for p in plugins) or "none"
    raise NodeConfigError(
        f"no PACS connector {name!r} is installed (installed: {known}); see `osteomics plugins`"
    )


def check_node_listening(config: NodeConfig, timeout_s: float = 3.0) -> None:
    """Raise unless something accepts TCP connections on the node's host and port.

    Raises
    ------
    AssociationFailedError
        Nothing listens there: the C-MOVE would have nowhere to deliver.
    """
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    try:
        with socket.create_connection((host, config.port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise AssociationFailedError(
            f"no node listens on {host}:{config.port} ({exc.strerror or exc}); a pull needs "
            f"the node to receive the C-MOVE: start `osteomics node serve --config "
            f"{config.config_path or 'node.toml'}` first"
        ) from exc


def pull(
    config: NodeConfig,
    remote_name: str,
    *,
    patient_id: str | None = None,
    study_uid: str | None = None,
    connector: PacsConnector | None = None,
) -> PullReport:
    """C-FIND the studies of a patient (or one study) on a remote, C-MOVE each to our AE; or,
    for a DICOMweb remote, QIDO-RS then WADO-RS (see the module docstring).

    Parameters
    ----------
    config:
        The node's settings; for a DIMSE remote the node itself must be serving.
    remote_name:
        A ``[remotes.NAME]`` of node.toml.
    patient_id, study_uid:
        Exactly one: what to pull.
    connector:
        The PACS connector (by default the plugin of the remote's protocol, ``dimse`` or
        ``dicomweb``).

    Returns
    -------
    PullReport
        Per study: the C-FIND match, the C-MOVE counts, the series and instances now stored.

    Raises
    ------
    UnknownRemoteError
        ``remote_name`` is not in node.toml.
    AssociationFailedError
        The node is not serving, or the remote cannot be reached or refuses us.
    PacsQueryError
        The remote answered the C-FIND or C-MOVE with an error status; for a DICOMweb remote a
        :class:`~osteomics.plugins.errors.DicomWebError` (401/403, 404, 5xx, timeout), after
        which the instances already stored stay stored.
    NodeConfigError
        Neither or both of ``patient_id`` and ``study_uid``, or no such connector.
    InvalidUIDError
        ``study_uid`` is not a conformant UID.
    """
    if (patient_id is None) == (study_uid is None):
        raise NodeConfigError("give exactly one of --patient-id and --study-uid")
    if study_uid is not None:
        study_uid = validate_uid(study_uid, "--study-uid")
    remote = config.remote(remote_name)
    if remote.protocol == "dicomweb":
        web: Any = connector or get_connector(config, "dicomweb")
        return _pull_web(config, remote, web, patient_id=patient_id, study_uid=study_uid)
    connector = connector or get_connector(config, remote.protocol)
    check_node_listening(config)
    matches = connector.find_studies(remote, patient_id=patient_id, study_uid=study_uid)
    log.info("pull from %s: %d study(ies) matched", remote.name, len(matches))
    moves = []
    for match in matches:
        outcome = connector.move_study(remote, match.study_uid, config.ae_title)
        log.info(
            "C-MOVE of study %s from %s: status 0x%04X, %d completed, %d failed, %d warning",
            match.study_uid,
            remote.name,
            outcome.status,
            outcome.completed,
            outcome.failed,
            outcome.warning,
        )
        moves.append((match, outcome))
    return _report(config, remote, moves, TRANSFER_C_MOVE)


class WebConnector(Protocol):
    """What :func:`pull` needs of the ``dicomweb`` connector plugin."""

    def find_studies(
        self, remote: RemoteNode, *, patient_id: str | None = None, study_uid: str | None = None
    ) -> list[StudyMatch]: ...

    def retrieve_study(self, remote: RemoteNode, study_uid: str, store: DicomStore) -> Any: ...

    def iter_study(self, remote: RemoteNode, study_uid: str) -> Iterator[bytes]: ...


def _pull_web(
    config: NodeConfig,
    remote: RemoteNode,
    connector: WebConnector,
    *,
    patient_id: str | None,
    study_uid: str | None,
) -> PullReport:
    """QIDO-RS then WADO-RS each study: into the serving node by C-STORE, or into the store."""
    matches = connector.find_studies(remote, patient_id=patient_id, study_uid=study_uid)
    log.info("pull from %s: %d study(ies) matched (QIDO-RS)", remote.name, len(matches))
    moves: list[tuple[StudyMatch, MoveOutcome]] = []
    try:
        store = DicomStore(config.storage, mode="write")
    except StoreLockedError as locked:
        transfer = TRANSFER_WADO_TO_NODE
        try:
            check_node_listening(config)
        except AssociationFailedError as exc:
            raise AssociationFailedError(f"{locked}; and {exc}") from exc
        for match in matches:
            outcome = store_on_node(config, connector.iter_study(remote, match.study_uid))
            moves.append((match, outcome))
    else:
        transfer = TRANSFER_WADO_TO_STORE
        with store:
            for match in matches:
                got = connector.retrieve_study(remote, match.study_uid, store)
                completed = got.stored + got.duplicates
                status = 0x0000 if got.failed == 0 else 0xB000
                moves.append(
                    (match, MoveOutcome(match.study_uid, status, completed, got.failed, 0))
                )
    for match, outcome in moves:
        log.info(
            "%s of study %s from %s: %d completed, %d failed",
            transfer, match.study_uid, remote.name, outcome.completed, outcome.failed,
        )  # fmt: skip
    return _report(config, remote, moves, transfer)


def _report(
    config: NodeConfig,
    remote: RemoteNode,
    moves: list[tuple[StudyMatch, MoveOutcome]],
    transfer: str,
) -> PullReport:
    """What each pulled study now holds in the store (read while the node serves)."""
    studies = []
    with DicomStore(config.storage, mode="read") as store:  # the serving node holds the lock
        for match, outcome in moves:
            summary = store.study(match.study_uid)
            studies.append(
                PulledStudy(
                    match,
                    outcome,
                    summary.series if summary else 0,
                    summary.instances if summary else 0,
                    transfer,
                )
            )
    return PullReport(remote.name, studies)


#: Transfer syntaxes proposed for each SOP class when handing instances to our node (it
#: accepts every transfer syntax pynetdicom knows; an instance in another one gets its own
#: association).
_FORWARD_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.5",  # RLE
)


def store_on_node(
    config: NodeConfig, instances: Iterable[bytes], timeout_s: float = 60.0
) -> MoveOutcome:
    """C-STORE Part 10 ``instances`` (one study) to our own serving node, as its own AE title.

    One association carries the study; an instance whose SOP class / transfer syntax the
    association lacks opens the next one with it added. The node answers each C-STORE once the
    instance is durable and indexed, so the study's quiet-study job follows as for a C-MOVE.

    Returns
    -------
    MoveOutcome
        Status 0x0000 (all stored) or 0xB000, and the C-STORE counts.

    Raises
    ------
    AssociationFailedError
        The node refused the association (its allow-list must list its own AE title from
        this host) or stopped answering.
    """
    from pydicom import dcmread
    from pynetdicom import AE, evt

    from osteomics.radiology.dimse import configure_pynetdicom, set_tcp_nodelay

    configure_pynetdicom()
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    where = f"the serving node {config.ae_title} at {host}:{config.port}"
    study = ""
    assoc: Any = None
    accepted: set[tuple[str, str]] = set()
    wanted: set[str] = set()
    completed = failed = warning = 0

    def associate(extra: tuple[str, str]) -> Any:
        nonlocal accepted
        ae = AE(ae_title=config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        ae.connection_timeout = min(timeout_s, 10.0)
        ae.maximum_pdu_size = config.max_pdu_bytes
        for sop_class in sorted(wanted):
            syntaxes = list(_FORWARD_SYNTAXES)
            if sop_class == extra[0] and extra[1] not in syntaxes:
                syntaxes.append(extra[1])
            for syntax in syntaxes:
                if len(ae.requested_contexts) < 128:
                    ae.add_requested_context(sop_class, syntax)
        new = ae.associate(
            host,
            config.port,
            ae_title=config.ae_title,
            tls_args=_client_tls(config, host),
            evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
        )
        if not new.is_established:
            if new.is_rejected:
                raise AssociationFailedError(
                    f"{where} rejected our association: to take instances pulled over "
                    f"DICOMweb it must allow its own AE title from this host; add "
                    f'[[node.allow]] ae_title = "{config.ae_title}" host = "{host}" to '
                    f"{config.config_path or 'node.toml'} and restart `osteomics node serve`"
                )
            raise AssociationFailedError(
                f"{where} did not accept an association to take the instances pulled over "
                "DICOMweb; check that `osteomics node serve` runs and its log"
            )
        accepted = {
            (str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in new.accepted_contexts
        }
        return new

    try:
        for data in instances:
            ds = dcmread(_bytes_file(data))
            study = str(ds.get("StudyInstanceUID", study))
            key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            if key not in accepted:
                wanted.add(key[0])
                if assoc is not None:
                    assoc.release()
                assoc = associate(key)
                if key not in accepted:
                    failed += 1
                    log.warning(
                        "%s refused SOP class %s in transfer syntax %s", where, key[0], key[1]
                    )
                    continue
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise AssociationFailedError(
                    f"{where} did not answer a C-STORE within {timeout_s:g} s (or aborted)"
                )
            if code == 0x0000:
                completed += 1
            elif code in (0xB000, 0xB006, 0xB007):
                completed += 1
                warning += 1
            else:
                failed += 1
                log.warning("%s answered C-STORE status 0x%04X", where, code)
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    return MoveOutcome(study, 0x0000 if failed == 0 else 0xB000, completed, failed, warning)


def _bytes_file(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def _client_tls(config: NodeConfig, host: str) -> tuple[ssl.SSLContext, str] | None:
    """A TLS client context to reach our own node when it listens with TLS: its own
    certificate as the client's, its CA (if any) to check the server."""
    if config.tls is None:
        return None
    if config.tls.ca is not None:
        context = ssl.create_default_context(cafile=str(config.tls.ca))
        context.check_hostname = False
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(config.tls.certificate), str(config.tls.key))
    return context, host


def send_files(
    config: NodeConfig,
    remote_name: str,
    files: Sequence[Path],
    connector: PacsConnector | None = None,
) -> StoreOutcome:
    """Store DICOM files (e.g. a run's SR and SEG) on a remote of node.toml.

    The connector plugin is the one named by the remote's protocol (``dimse`` unless the
    remote says ``protocol = "dicomweb"``).

    Parameters
    ----------
    config:
        The node's settings.
    remote_name:
        A ``[remotes.NAME]`` of node.toml.
    files:
        DICOM Part-10 files.
    connector:
        The connector to use instead of the remote's protocol's plugin (tests).

    Returns
    -------
    StoreOutcome
        The SOP Instance UIDs stored and the files refused, each with its reason.

    Raises
    ------
    UnknownRemoteError
        ``remote_name`` is not in node.toml.
    AssociationFailedError
        The remote cannot be reached or refuses the association.
    """
    remote = config.remote(remote_name)
    if connector is None:
        connector = get_connector(config, str(getattr(remote, "protocol", DEFAULT_CONNECTOR)))
    outcome = connector.store_instances(remote, [Path(f) for f in files])
    log.info(
        "sent %d file(s) to %s: %d stored, %d failed in %.1f s",
        len(files),
        remote.name,
        len(outcome.stored),
        len(outcome.failed),
        outcome.seconds,
    )
    return outcome


__all__ = [
    "DEFAULT_CONNECTOR",
    "PullReport",
    "PulledStudy",
    "check_node_listening",
    "get_connector",
    "pull",
    "send_files",
    "store_on_node",
]
