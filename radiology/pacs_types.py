"""What a PACS connector and :mod:`osteomics.radiology.pacs` exchange: the C-FIND match of a
study, the outcome of its C-MOVE, and the connector protocol itself.

Connector plugins (kind ``pacs_connector``, e.g. :mod:`osteomics.plugins.dimse_connector`)
import these from here; the radiology room never imports a plugin (it finds them through their
entry points at run time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from osteomics.radiology.config import RemoteNode


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
