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
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osteomics.core.plugins import discover_plugins
from osteomics.radiology.config import NodeConfig
from osteomics.radiology.errors import AssociationFailedError, NodeConfigError
from osteomics.radiology.pacs_types import MoveOutcome, PacsConnector, StoreOutcome, StudyMatch
from osteomics.radiology.store import DicomStore
from osteomics.radiology.uids import validate_uid

log = logging.getLogger(__name__)

#: The connector ``node pull`` uses unless told otherwise.
DEFAULT_CONNECTOR = "dimse"


@dataclass(frozen=True)
class PulledStudy:
    """One study of a pull: what the PACS announced, what the C-MOVE said, what is stored."""

    match: StudyMatch
    move: MoveOutcome
    stored_series: int
    stored_instances: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.match.study_uid,
            "patient_id": self.match.patient_id,
            "study_date": self.match.study_date,
            "modalities": list(self.match.modalities),
            "remote_instances": self.match.instances,
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
    """C-FIND the studies of a patient (or one study) on a remote, C-MOVE each to our AE.

    Parameters
    ----------
    config:
        The node's settings; the node itself must be serving (see the module docstring).
    remote_name:
        A ``[remotes.NAME]`` of node.toml.
    patient_id, study_uid:
        Exactly one: what to pull.
    connector:
        The PACS connector (by default the ``dimse`` plugin).

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
        The remote answered the C-FIND or C-MOVE with an error status.
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
    connector = connector or get_connector(config)
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
                )
            )
    return PullReport(remote.name, studies)


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
]
