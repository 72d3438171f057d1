"""PACS connector: DIMSE (C-FIND, C-MOVE) through pynetdicom, as our node's AE title.

Study Root Query/Retrieve at STUDY level. A C-MOVE asks the PACS to C-STORE the study to a
destination AE title that the PACS must know (its modalities list, e.g. Orthanc's
``DicomModalities``); for ``node pull`` that is our own node, which must be serving.
Query identifiers are never logged: the connector switches pynetdicom's identifier logging off
(:func:`osteomics.radiology.dimse.configure_pynetdicom`) before it associates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
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
from osteomics.radiology.pacs_types import MoveOutcome, StudyMatch

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

    def _associate(self, remote: RemoteNode, context: str) -> Association:
        configure_pynetdicom()
        ae = AE(ae_title=self.config.ae_title)
        ae.add_requested_context(context)
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
    description="PACS over DIMSE (C-FIND/C-MOVE, Study Root) with pynetdicom",
    factory=DimseConnector,
    priority=10,
)
