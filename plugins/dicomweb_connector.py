"""PACS connector: DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store), dicomweb-client.

The DICOMweb counterpart of :mod:`osteomics.plugins.dimse_connector`. A DICOMweb remote is a
base URL (the server's DICOMweb root, e.g. ``http://pacs:8042/dicom-web``) with optional
bearer token or basic-auth user and password (:class:`DicomWebRemote`).

- :meth:`DicomWebConnector.find_studies`: QIDO-RS ``/studies`` by PatientID or
  StudyInstanceUID, the same :class:`~osteomics.radiology.pacs_types.StudyMatch` as C-FIND.
- :meth:`DicomWebConnector.retrieve_study`: WADO-RS ``/studies/{uid}``, instance by instance
  (streamed: one instance in memory at a time) into the node's
  :class:`~osteomics.radiology.store.DicomStore` through :meth:`DicomStore.store` (durable,
  indexed, idempotent for instances already there). DICOMweb has no C-MOVE: the connector
  pulls itself, so no node needs to be serving.
- :meth:`DicomWebConnector.store_instances`: STOW-RS of Part 10 files (our SR and SEG).

Failures are :class:`~osteomics.plugins.errors.DicomWebError` subclasses naming the server
(its URL, never the credentials) and the fix: 401/403 (credentials), 404 (no such study, or a
wrong DICOMweb root), 5xx (the server's log), timeouts and refused connections. Patient IDs
are never logged.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from osteomics.core.plugins import Plugin
from osteomics.plugins.errors import (
    DicomWebAuthError,
    DicomWebError,
    DicomWebNotFoundError,
    DicomWebTimeoutError,
)
from osteomics.radiology.errors import InvalidDatasetError
from osteomics.radiology.pacs_types import MoveOutcome, StudyMatch, int_or_none
from osteomics.radiology.store import DicomStore
from osteomics.radiology.uids import validate_uid

log = logging.getLogger(__name__)

#: QIDO-RS attributes asked for besides the defaults (tags, hex).
_STUDY_FIELDS = ("00201206", "00201208", "00080061", "00100020", "00080020")


@dataclass(frozen=True)
class DicomWebRemote:
    """A DICOMweb server.

    Attributes
    ----------
    name:
        What users call it (messages, node.toml ``[remotes.NAME]`` in a later version).
    url:
        The DICOMweb root (``http://host:8042/dicom-web``): QIDO, WADO and STOW share it.
    token:
        Bearer token (``Authorization: Bearer ...``), or None.
    username, password:
        HTTP basic authentication, or None.
    """

    name: str
    url: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise DicomWebError(
                f"remote {self.name}: DICOMweb URL {self.url!r} must start with http:// or https://"
            )
        if self.token and (self.username or self.password):
            raise DicomWebError(
                f"remote {self.name}: give a token or a user and password, not both"
            )


@dataclass(frozen=True)
class RetrieveOutcome:
    """What a WADO-RS retrieve of one study did: instances received and stored (new),
    already in the store, and refused by the store (with the reasons)."""

    study_uid: str
    received: int
    stored: int
    duplicates: int
    failed: int
    bytes: int
    seconds: float
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.received > 0


@dataclass(frozen=True)
class StowOutcome:
    """What a STOW-RS request stored: SOP Instance UIDs accepted and refused (with the
    server's failure reason code, PS3.18 table I.2-1)."""

    stored: tuple[str, ...]
    failed: tuple[tuple[str, int | None], ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failed


class DicomWebConnector:
    """QIDO-RS / WADO-RS / STOW-RS against a DICOMweb server.

    Parameters
    ----------
    config:
        The node's settings (unused by DICOMweb; the plugin factory contract passes it).
    timeout_s:
        Seconds to wait for the connection and for each read from the server.
    """

    def __init__(self, config: Any = None, timeout_s: float = 60.0) -> None:
        self.config = config
        self.timeout_s = timeout_s

    # -- plumbing ----------------------------------------------------------------------------

    def _client(self, remote: DicomWebRemote) -> Any:
        # imported here: discovering the plugin must work where dicomweb-client is missing
        # (`osteomics plugins` then says so), e.g. a node installed before it was a dependency
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        headers: dict[str, str] = {}
        if remote.token:
            headers["Authorization"] = f"Bearer {remote.token}"
        elif remote.username is not None:
            session.auth = (remote.username, remote.password or "")
        client = DICOMwebClient(
            remote.url.rstrip("/"),
            session=session,
            headers=headers or None,
            timeout=(min(self.timeout_s, 10.0), self.timeout_s),
        )
        client.set_http_retry_params(retry=False)
        return client

    @contextmanager
    def _errors(self, remote: DicomWebRemote, what: str) -> Iterator[None]:
        """Turn requests' exceptions into one clear :class:`DicomWebError`."""
        import requests

        where = f"DICOMweb server {remote.name} ({remote.url})"
        try:
            yield
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code in (401, 403):
                raise DicomWebAuthError(
                    f"{where} refused the {what}: HTTP {code} "
                    f"({'unauthorised' if code == 401 else 'forbidden'}); check the "
                    "user/password or token given for this remote"
                ) from exc
            if code == 404:
                raise DicomWebNotFoundError(
                    f"{where} answered 404 to the {what}: no such study there, or "
                    f"{remote.url} is not its DICOMweb root (Orthanc: /dicom-web)"
                ) from exc
            raise DicomWebError(
                f"{where} failed the {what}: HTTP {code}; check the server's log"
            ) from exc
        except requests.exceptions.Timeout as exc:
            raise DicomWebTimeoutError(
                f"{where} did not answer the {what} within {self.timeout_s:g} s; check that "
                "it runs and is not overloaded, or raise the timeout"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise DicomWebError(
                f"cannot connect to {where} for the {what} ({type(exc).__name__}); check the "
                "URL, that the server runs and that this host may reach it"
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise DicomWebError(f"{where}: the {what} failed ({exc})") from exc

    # -- QIDO-RS -----------------------------------------------------------------------------

    def find_studies(
        self,
        remote: DicomWebRemote,
        *,
        patient_id: str | None = None,
        study_uid: str | None = None,
    ) -> list[StudyMatch]:
        """QIDO-RS search for the studies of a patient, or one study.

        Raises
        ------
        DicomWebError
            (or a subclass) when the server refuses, fails or does not answer.
        """
        filters: dict[str, str] = {}
        if patient_id is not None:
            filters["PatientID"] = patient_id
        if study_uid is not None:
            filters["StudyInstanceUID"] = validate_uid(study_uid, "study UID")
        with self._errors(remote, "QIDO-RS study search"):
            results = self._client(remote).search_for_studies(
                search_filters=filters, fields=list(_STUDY_FIELDS), get_remaining=True
            )
        matches = []
        for item in results:
            match = StudyMatch.from_identifier(Dataset.from_json(item))
            if match is None:
                log.warning("QIDO-RS match from %s without a valid Study UID", remote.name)
                continue
            matches.append(match)
        return matches

    def move_study(
        self, remote: DicomWebRemote, study_uid: str, destination_ae: str
    ) -> MoveOutcome:
        """DICOMweb has no C-MOVE: use :meth:`retrieve_study` (the connector pulls itself).

        Raises
        ------
        DicomWebError
            Always.
        """
        raise DicomWebError(
            f"remote {remote.name} is a DICOMweb server: it cannot send study {study_uid} to "
            f"{destination_ae} (no C-MOVE); retrieve it with WADO-RS (retrieve_study) instead"
        )

    # -- WADO-RS -----------------------------------------------------------------------------

    def retrieve_study(
        self, remote: DicomWebRemote, study_uid: str, store: DicomStore
    ) -> RetrieveOutcome:
        """WADO-RS retrieve every instance of a study into ``store`` (a writer).

        Instances arrive one at a time and each is stored durably before the next is read;
        an instance the store refuses (invalid, inconsistent) is counted as failed with its
        reason, the others are kept.

        Raises
        ------
        DicomWebError
            (or a subclass) when the server refuses (401/403), has no such study (404),
            fails (5xx) or times out; instances stored before that stay stored.
        """
        study_uid = validate_uid(study_uid, "study UID")
        t0 = time.perf_counter()
        received = stored = duplicates = failed = size = 0
        reasons: list[str] = []
        source = f"WADO-RS from {remote.name}"
        with self._errors(remote, f"WADO-RS retrieve of study {study_uid}"):
            for ds in self._client(remote).iter_study(study_uid):
                received += 1
                data = _part10(ds)
                size += len(data)
                try:
                    result = store.store(data, source=source)
                except InvalidDatasetError as exc:
                    failed += 1
                    reasons.append(str(exc))
                    continue
                if result.outcome == "stored":
                    stored += 1
                else:  # "duplicate", or "conflict": the copy already stored is kept
                    duplicates += 1
                    if result.outcome == "conflict":
                        reasons.append(
                            f"instance {result.record.attributes.sop_instance_uid}: the store "
                            "holds other bytes under this UID (kept)"
                        )
        seconds = time.perf_counter() - t0
        log.info(
            "WADO-RS study %s from %s: %d instances (%d new, %d already stored, %d failed), "
            "%.1f MB in %.2f s",
            study_uid, remote.name, received, stored, duplicates, failed, size / 1e6, seconds,
        )  # fmt: skip
        if received == 0:
            raise DicomWebNotFoundError(
                f"DICOMweb server {remote.name} ({remote.url}) returned no instance of study "
                f"{study_uid}; check the UID with a QIDO-RS search"
            )
        return RetrieveOutcome(
            study_uid, received, stored, duplicates, failed, size, seconds, tuple(reasons)
        )

    # -- STOW-RS -----------------------------------------------------------------------------

    def store_instances(
        self, remote: DicomWebRemote, files: Sequence[Path | Dataset]
    ) -> StowOutcome:
        """STOW-RS Part 10 files (or datasets) to the server, one request per study.

        Raises
        ------
        DicomWebError
            (or a subclass) when the server refuses the request as a whole; instances it
            refuses one by one are in :attr:`StowOutcome.failed`.
        """
        datasets = [f if isinstance(f, Dataset) else pydicom.dcmread(f) for f in files]
        by_study: dict[str, list[Dataset]] = {}
        for ds in datasets:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        t0 = time.perf_counter()
        stored: list[str] = []
        failed: list[tuple[str, int | None]] = []
        client = self._client(remote)
        for study_uid, members in by_study.items():
            with self._errors(remote, f"STOW-RS of {len(members)} instance(s)"):
                response = client.store_instances(members, study_instance_uid=study_uid)
            for item in response.get("ReferencedSOPSequence", []) if response else []:
                stored.append(str(item.ReferencedSOPInstanceUID))
            for item in response.get("FailedSOPSequence", []) if response else []:
                reason = item.get("FailureReason")
                failed.append((str(item.ReferencedSOPInstanceUID), int_or_none(reason)))
        return StowOutcome(tuple(stored), tuple(failed), time.perf_counter() - t0)


def _part10(ds: Dataset) -> bytes:
    """A Part 10 file of a dataset WADO-RS returned (preamble and File Meta Information)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


plugin = Plugin(
    name="dicomweb",
    kind="pacs_connector",
    description="PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS) with dicomweb-client",
    factory=DicomWebConnector,
    priority=20,
    requires=("dicomweb_client", "requests"),
)
