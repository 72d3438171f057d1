"""What a PACS connector and :mod:`osteomics.radiology.pacs` exchange: the C-FIND match of a
study, the outcome of its C-MOVE, and the connector protocol itself.

Connector plugins (kind ``pacs_connector``, e.g. :mod:`osteomics.plugins.dimse_connector`)
import these from here; the radiology room never imports a plugin (it finds them through their
entry points at run time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from osteomics.radiology.config import RemoteNode
from osteomics.radiology.uids import is_valid_uid


@dataclass(frozen=True)
class StudyMatch:
    """A study a PACS reported for a C-FIND (Study Root, STUDY level).

    ``series`` and ``instances`` are the PACS's Number of Study Related Series/Instances
    (``None`` when it did not say).
    """

    study_uid: str
    patient_id: str
    study_date: str | None
    modalities: tuple[str, ...]
    series: int | None
    instances: int | None

    @classmethod
    def from_identifier(cls, identifier: Any) -> StudyMatch | None:
        """The match of a C-FIND or QIDO-RS identifier (a pydicom Dataset), or None when its
        Study Instance UID is not a valid UID (data from outside is never trusted)."""
        uid = str(identifier.get("StudyInstanceUID", "")).strip("\x00 ")
        if not is_valid_uid(uid):
            return None
        modalities = identifier.get("ModalitiesInStudy", "")
        if isinstance(modalities, str):
            modalities = [m for m in modalities.split("\\") if m]
        return cls(
            study_uid=uid,
            patient_id=str(identifier.get("PatientID", "")).strip("\x00 "),
            study_date=str(identifier.get("StudyDate", "")) or None,
            modalities=tuple(sorted(str(m) for m in modalities)),
            series=int_or_none(identifier.get("NumberOfStudyRelatedSeries")),
            instances=int_or_none(identifier.get("NumberOfStudyRelatedInstances")),
        )


def int_or_none(value: Any) -> int | None:
    """An integer attribute value, or None when absent or not a number."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class MoveOutcome:
    """The final C-MOVE response of one study: status and sub-operation counts."""

    study_uid: str
    status: int
    completed: int
    failed: int
    warning: int

    @property
    def ok(self) -> bool:
        """Success (0x0000) with no failed sub-operation."""
        return self.status == 0x0000 and self.failed == 0


class PacsConnector(Protocol):
    """What a ``pacs_connector`` plugin's factory returns.

    The factory is called as ``factory(config, timeout_s=...)`` with the node's
    :class:`~osteomics.radiology.config.NodeConfig`.
    """

    def find_studies(
        self, remote: RemoteNode, *, patient_id: str | None = None, study_uid: str | None = None
    ) -> list[StudyMatch]:
        """C-FIND the studies of a patient, or one study, on ``remote``."""
        ...

    def move_study(self, remote: RemoteNode, study_uid: str, destination_ae: str) -> MoveOutcome:
        """C-MOVE one study to ``destination_ae``; the final status and counts."""
        ...


__all__ = ["MoveOutcome", "PacsConnector", "StudyMatch"]
