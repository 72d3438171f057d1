"""What a PACS connector and :mod:`osteomics.radiology.pacs` exchange: the C-FIND match of a
study, the outcome of its C-MOVE, and the connector protocol itself.

Connector plugins (kind ``pacs_connector``, e.g. :mod:`osteomics.plugins.dimse_connector`)
import these from here; the radiology room never imports a plugin (it finds them through their
entry points at run time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from osteomics.radiology.config import RemoteNode
from osteomics.radiology.errors import PacsQueryError
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


@dataclass
class StoreOutcome:
    """What a store (C-STORE or STOW-RS) of some files to one remote did.

    Attributes
    ----------
    remote:
        The ``NAME`` of ``[remotes.NAME]`` the files went to.
    stored:
        The SOP Instance UIDs the remote accepted.
    failed:
        ``(file name or SOP Instance UID, reason)`` of each file it did not store; the reason
        says what to do (e.g. "add Segmentation Storage to its accepted SOP classes").
    seconds:
        Wall-clock time of the whole store.
    """

    remote: str
    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every file stored (nothing failed)."""
        return not self.failed

    def reason(self) -> str:
        """One line naming each failed file and why ("" when all stored)."""
        return "; ".join(f"{name}: {why}" for name, why in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "remote": self.remote,
            "stored": list(self.stored),
            "failed": [list(f) for f in self.failed],
            "seconds": round(self.seconds, 3),
        }


class SendFailedError(PacsQueryError):
    """Results could not be stored on a remote (refused SOP class, error status, no answer)."""


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

    def store_instances(self, remote: RemoteNode, files: Sequence[Path]) -> StoreOutcome:
        """Store DICOM Part-10 ``files`` on ``remote`` (C-STORE or STOW-RS).

        A file the remote does not take is in ``failed`` with the reason; only a remote that
        cannot be reached at all raises
        (:class:`~osteomics.radiology.errors.AssociationFailedError`).
        """
        ...


__all__ = ["MoveOutcome", "PacsConnector", "SendFailedError", "StoreOutcome", "StudyMatch"]
