"""PACS connector: DIMSE (C-FIND, C-MOVE, C-STORE) through pynetdicom, as our node's AE title.

Study Root Query/Retrieve at STUDY level. A C-MOVE asks the PACS to C-STORE the study to a
destination AE title that the PACS must know (its modalities list, e.g. Orthanc's
``DicomModalities``); for ``node pull`` that is our own node, which must be serving.
:meth:`DimseConnector.store_instances` C-STOREs files (a run's SR and SEG) to a remote with one
presentation context per SOP class and transfer syntax of the files; a SOP class the remote
does not accept fails its files with a reason naming the class and the fix.
Query identifiers are never logged: the connector switches pynetdicom's identifier logging off
(:func:`osteomics.radiology.dimse.configure_pynetdicom`) before it associates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from osteomics.plugins import Plugin
from osteomics.radiology.config import NodeConfig, RemoteNode
from osteomics.radiology.dimse import (
    association_failure,
    configure_pynetdicom,
    set_tcp_nodelay,
)
from osteomics.radiology.errors import AssociationFailedError, PacsQueryError
from osteomics.radiology.pacs_types import MoveOutcome, StoreOutcome, StudyMatch

log = logging.getLogger(__name__)

_PENDING = (0xFF00, 0xFF01)
#: C-MOVE statuses with a name worth printing (PS3.4 C.4.2.1.5).
_MOVE_STATUS = {
    0xA701: "out of resources: unable to calculate number of matches",
    0xA702: "out of resources: unable to perform sub-operations",
    0xA801: "move destination unknown",
    0xA900: "identifier does not match SOP class",
    0xB000: "sub-operations complete, one or more failures or warnings",
    0xFE00: "cancelled",
}


class DimseConnector:
    """C-FIND/C-MOVE a remote PACS as the node's AE title.

    Parameters
    ----------
    config:
        The node's settings (our AE title, PDU size).
    timeout_s:
        Seconds to wait for the connection, the association and each DIMSE message; a
        C-MOVE of a big study may take long, but each pending response resets the clock.
    """

    def __init__(self, config: NodeConfig, timeout_s: float = 60.0) -> None:
        self.config = config
        self.timeout_s = timeout_s

    def _associate(
        self,
        remote: RemoteNode,
        context: str | None,
        contexts: Sequence[tuple[str, list[str]]] = (),
    ) -> Association:
        configure_pynetdicom()
        ae = AE(ae_title=self.config.ae_title)
        if context is not None:
            ae.add_requested_context(context)
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = min(self.timeout_s, 10.0)
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        assoc = ae.associate(
            remote.host,
            remote.port,
            ae_title=remote.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)],
        )
        if not assoc.is_established:
            raise AssociationFailedError(
                association_failure(
                    remote,
                    self.config.ae_title,
                    assoc,
                    min(self.timeout_s, 10.0),
                    str(self.config.config_path or "node.toml"),
                )
            )
        return assoc

    def find_studies(
        self, remote: RemoteNode, *, patient_id: str | None = None, study_uid: str | None = None
    ) -> list[StudyMatch]:
        """C-FIND (Study Root, STUDY level) by patient ID or study UID.

        Raises
        ------
        AssociationFailedError
            The remote cannot be reached or refuses us.
        PacsQueryError
            It answered with an error status, or not at all.
        """
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient_id or ""
        query.StudyInstanceUID = study_uid or ""
        query.StudyDate = ""
        query.ModalitiesInStudy = ""
        query.NumberOfStudyRelatedSeries = ""
        query.NumberOfStudyRelatedInstances = ""
        assoc = self._associate(remote, StudyRootQueryRetrieveInformationModelFind)
        matches: dict[str, StudyMatch] = {}
        try:
            responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            final = self._drain(responses, remote, "C-FIND", matches)
        finally:
            assoc.release()
        if final != 0x0000:
            raise PacsQueryError(
                f"remote {remote.name} ({remote.ae_title}) answered the C-FIND with status "
                f"0x{final:04X}; check its log"
            )
        return list(matches.values())

    def _drain(
        self,
        responses: Iterable[tuple[Dataset, Dataset | None]],
        remote: RemoteNode,
        what: str,
        matches: dict[str, StudyMatch],
    ) -> int:
        for status, identifier in responses:
            if not status or "Status" not in status:
                raise PacsQueryError(
                    f"remote {remote.name} ({remote.ae_title}) aborted the {what} or did not "
                    f"answer within {self.timeout_s} s; check it runs and lists our AE "
                    f"{self.config.ae_title} with this host"
                )
            code = int(status.Status)
            if code in _PENDING:
                if identifier is not None:
                    match = StudyMatch.from_identifier(identifier)
                    if match is not None:
                        matches[match.study_uid] = match
                    else:
                        log.warning("%s match from %s without a valid Study UID", what, remote.name)
                continue
            return code
        raise PacsQueryError(f"remote {remote.name} sent no final {what} response")

    def move_study(self, remote: RemoteNode, study_uid: str, destination_ae: str) -> MoveOutcome:
        """C-MOVE one study to ``destination_ae``; returns the final status and counts.

        Raises
        ------
        AssociationFailedError
            The remote cannot be reached or refuses us.
        PacsQueryError
            The C-MOVE failed as a whole (e.g. 0xA801, the remote does not know
            ``destination_ae``); a partial failure (0xB000) is returned, not raised.
        """
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        assoc = self._associate(remote, StudyRootQueryRetrieveInformationModelMove)
        last: Dataset | None = None
        try:
            for status, _ in assoc.send_c_move(
                query, destination_ae, StudyRootQueryRetrieveInformationModelMove
            ):
                if not status or "Status" not in status:
                    raise PacsQueryError(
                        f"remote {remote.name} ({remote.ae_title}) did not answer the C-MOVE of "
                        f"study {study_uid} within {self.timeout_s} s, or aborted"
                    )
                last = status
                if int(status.Status) not in _PENDING:
                    break
        finally:
            assoc.release()
        assert last is not None
        code = int(last.Status)
        outcome = MoveOutcome(
            study_uid,
            code,
            _count(last, "NumberOfCompletedSuboperations"),
            _count(last, "NumberOfFailedSuboperations"),
            _count(last, "NumberOfWarningSuboperations"),
        )
        if code not in (0x0000, 0xB000):
            hint = ""
            if code == 0xA801:
                hint = (
                    f"; add our node ({destination_ae}, its host and port) to the modalities "
                    f"of {remote.ae_title}"
                )
            elif code & 0xF000 == 0xC000:  # "unable to process": Orthanc's for an unknown AE
                hint = (
                    f"; check that {remote.ae_title} lists our node ({destination_ae}, its host "
                    "and port) as a move destination, then its log"
                )
            raise PacsQueryError(
                f"remote {remote.name} ({remote.ae_title}) refused the C-MOVE of study "
                f"{study_uid} to {destination_ae}: status 0x{code:04X} "
                f"({_move_status_name(code)}){hint}"
            )
        return outcome

    def store_instances(self, remote: RemoteNode, files: Sequence[Path]) -> StoreOutcome:
        """C-STORE DICOM Part-10 ``files`` to ``remote`` in one association.

        Each file is offered in its own transfer syntax (uncompressed ones also in the other
        little-endian one). A file whose SOP class the remote does not accept, that it answers
        with a failure status, or that is not a readable DICOM file is in ``failed`` with the
        reason; the others are stored.

        Raises
        ------
        AssociationFailedError
            The remote cannot be reached or refuses the association.
        """
        started = time.perf_counter()
        outcome = StoreOutcome(remote.name)
        headers: list[tuple[Path, str, str, str]] = []  # path, SOP class, instance, syntax
        for path in files:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                headers.append(
                    (
                        Path(path),
                        str(ds.SOPClassUID),
                        str(ds.SOPInstanceUID),
                        str(ds.file_meta.TransferSyntaxUID),
                    )
                )
            except (OSError, InvalidDicomError, AttributeError) as exc:
                outcome.failed.append((Path(path).name, f"not a readable DICOM file ({exc})"))
        if not headers:
            outcome.seconds = time.perf_counter() - started
            return outcome
        syntaxes: dict[str, list[str]] = {}
        for _, sop_class, _, syntax in headers:
            wanted = syntaxes.setdefault(sop_class, [])
            offered = [syntax]
            if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                offered = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            wanted.extend(s for s in offered if s not in wanted)
        assoc = self._associate(remote, None, sorted(syntaxes.items()))
        try:
            accepted = {
                (str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts
            }
            accepted_classes = {sop for sop, _ in accepted}
            for path, sop_class, instance, syntax in headers:
                if sop_class not in accepted_classes:
                    outcome.failed.append((path.name, _refused_class(remote, sop_class)))
                    continue
                if (sop_class, syntax) not in accepted and syntax not in (
                    ExplicitVRLittleEndian,
                    ImplicitVRLittleEndian,
                ):
                    outcome.failed.append(
                        (
                            path.name,
                            f"{remote.name} refused transfer syntax {syntax} "
                            f"({UID(syntax).name}) for SOP class {sop_class} "
                            f"({UID(sop_class).name}): add it to its accepted transfer syntaxes",
                        )
                    )
                    continue
                status = assoc.send_c_store(path)
                if not status or "Status" not in status:
                    outcome.failed.append(
                        (
                            path.name,
                            f"{remote.name} did not answer the C-STORE within "
                            f"{self.timeout_s} s, or aborted",
                        )
                    )
                    if not assoc.is_established:
                        break
                    continue
                code = int(status.Status)
                if code == 0x0000 or code & 0xF000 == 0xB000:  # success or warning
                    outcome.stored.append(instance)
                else:
                    comment = str(status.get("ErrorComment", "") or "")
                    outcome.failed.append(
                        (
                            path.name,
                            f"{remote.name} answered the C-STORE with status 0x{code:04X}"
                            f"{': ' + comment if comment else ''}; check its log",
                        )
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        done = set(outcome.stored) | {name for name, _ in outcome.failed}
        for path, _, instance, _ in headers:
            if instance not in done and path.name not in done:
                outcome.failed.append((path.name, f"not sent: {remote.name} ended the association"))
        outcome.seconds = time.perf_counter() - started
        return outcome


def _refused_class(remote: RemoteNode, sop_class: str) -> str:
    """Why a SOP class has no accepted presentation context, and what to do."""
    name = UID(sop_class).name
    return (
        f"{remote.name} refused SOP class {sop_class} ({name}): add it to its accepted SOP "
        f"classes ({remote.ae_title} at {remote.host}:{remote.port})"
    )


def _move_status_name(code: int) -> str:
    if code in _MOVE_STATUS:
        return _MOVE_STATUS[code]
    return "unable to process" if code & 0xF000 == 0xC000 else "failure"


def _count(status: Dataset, keyword: str) -> int:
    value: Any = status.get(keyword)
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


plugin = Plugin(
    name="dimse",
    kind="pacs_connector",
    description="PACS over DIMSE (C-FIND/C-MOVE, Study Root; C-STORE of results) with pynetdicom",
    factory=DimseConnector,
    priority=10,
)
