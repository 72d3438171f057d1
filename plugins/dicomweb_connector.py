"""PACS connector: DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store), dicomweb-client.

The DICOMweb counterpart of :mod:`osteomics.plugins.dimse_connector`. A DICOMweb remote is a
base URL (the server's DICOMweb root, e.g. ``http://pacs:8042/dicom-web``) with optional
bearer token or basic-auth user and password (:class:`DicomWebRemote`), or a node.toml
remote with ``protocol = "dicomweb"`` (:class:`~osteomics.radiology.config.RemoteNode`): every
method takes either.

- :meth:`DicomWebConnector.find_studies`: QIDO-RS ``/studies`` by PatientID or
  StudyInstanceUID, the same :class:`~osteomics.radiology.pacs_types.StudyMatch` as C-FIND.
- :meth:`DicomWebConnector.retrieve_study`: WADO-RS ``/studies/{uid}``, instance by instance
  (streamed: one instance in memory at a time) into the node's
  :class:`~osteomics.radiology.store.DicomStore` through :meth:`DicomStore.store` (durable,
  indexed, idempotent for instances already there). DICOMweb has no C-MOVE: the connector
  pulls itself, so no node needs to be serving.
- :meth:`DicomWebConnector.store_instances`: STOW-RS of Part 10 files (our SR and SEG), a
  :class:`~osteomics.radiology.pacs_types.StoreOutcome` whose ``failed`` names each instance the
  server refused and why (FailedSOPSequence, or a 409/400 refusing the request).
- :meth:`DicomWebConnector.echo`: a QIDO-RS study search with limit 1 (``node echo``).
- :meth:`DicomWebConnector.iter_study`: WADO-RS, yielding each instance's Part 10 bytes
  (``node pull`` hands them to a serving node by C-STORE).
- :meth:`DicomWebConnector.open_slide`: a remote DICOM WSI read tile by tile through
  wsidicom's DICOMweb source (nothing downloaded beyond the frames read).

Failures are :class:`~osteomics.plugins.errors.DicomWebError` subclasses naming the server
(its URL, never the credentials) and the fix: 401/403 (credentials), 404 (no such study, or a
wrong DICOMweb root), 5xx (the server's log), timeouts and refused connections. Patient IDs
are never logged.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
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
from osteomics.radiology.config import RemoteNode
from osteomics.radiology.errors import InvalidDatasetError
from osteomics.radiology.pacs_types import MoveOutcome, StoreOutcome, StudyMatch, int_or_none
from osteomics.radiology.store import DicomStore
from osteomics.radiology.uids import validate_uid
from osteomics.wsi.sources import SlideSource

log = logging.getLogger(__name__)

#: QIDO-RS attributes asked for besides the defaults (tags, hex).
_STUDY_FIELDS = ("00201206", "00201208", "00080061", "00100020", "00080020")


@dataclass(frozen=True)
class DicomWebRemote:
    """A DICOMweb server.

    Attributes
    ----------
    name:
        What users call it (messages; the ``NAME`` of node.toml's ``[remotes.NAME]``).
    url:
        The DICOMweb root (``http://host:8042/dicom-web``): QIDO, WADO and STOW share it.
    token:
        Bearer token (``Authorization: Bearer ...``), or None.
    username, password:
        HTTP basic authentication, or None.
    timeout_s:
        Seconds to wait for each answer (None: the connector's ``timeout_s``).
    """

    name: str
    url: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float | None = None

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


#: STOW-RS Failure Reason codes (PS3.18 table I.2-1, PS3.4 C-STORE statuses) and what to do.
_FAILURE_REASONS = {
    0x0110: "processing failure; check the server's log",
    0x0111: "duplicate SOP Instance UID refused; the server already holds another copy",
    0x0122: (
        "SOP class not supported: the server refuses this kind of object; add its SOP class "
        "to the classes the server accepts"
    ),
    0x0124: "not authorised to store this instance; check the remote's permissions",
    0xA700: "out of resources on the server (disk full?)",
    0xA900: "data set does not match its SOP class",
    0xC000: "the server cannot understand the instance",
    0xC122: "transfer syntax not supported by the server",
}


def failure_reason(code: int | None) -> str:
    """A STOW-RS Failure Reason code as words, with its hexadecimal code."""
    if code is None:
        return "refused (the server gave no reason)"
    words = _FAILURE_REASONS.get(code, "refused")
    return f"{words} (failure reason 0x{code:04X})"


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

    def _timeout(self, remote: DicomWebRemote) -> float:
        return remote.timeout_s if remote.timeout_s is not None else self.timeout_s

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
        timeout = self._timeout(remote)
        client = DICOMwebClient(
            remote.url.rstrip("/"),
            session=session,
            headers=headers or None,
            timeout=(min(timeout, 10.0), timeout),
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
                f"{where} did not answer the {what} within {self._timeout(remote):g} s; check that "
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
        remote: DicomWebRemote | RemoteNode,
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
        remote = web_remote(remote)
        with self._errors(remote, "QIDO-RS study search"):
            client = self._client(remote)
            results = _all_pages(
                lambda offset: client.search_for_studies(
                    search_filters=filters, fields=list(_STUDY_FIELDS), offset=offset
                ),
                "0020000D",
            )
        matches = []
        for item in results:
            match = StudyMatch.from_identifier(Dataset.from_json(item))
            if match is None:
                log.warning("QIDO-RS match from %s without a valid Study UID", remote.name)
                continue
            matches.append(match)
        return matches

    def echo(self, remote: DicomWebRemote | RemoteNode) -> float:
        """``node echo`` of a DICOMweb remote: a QIDO-RS study search with limit 1.

        Returns
        -------
        float
            Milliseconds the answer took.

        Raises
        ------
        DicomWebError
            (or a subclass) when the server refuses, fails or does not answer.
        """
        remote = web_remote(remote)
        t0 = time.perf_counter()
        with self._errors(remote, "QIDO-RS study search (echo)"):
            self._client(remote).search_for_studies(limit=1, get_remaining=False)
        return (time.perf_counter() - t0) * 1000

    def move_study(
        self, remote: DicomWebRemote | RemoteNode, study_uid: str, destination_ae: str
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

    def iter_study(self, remote: DicomWebRemote | RemoteNode, study_uid: str) -> Iterator[bytes]:
        """WADO-RS every instance of a study, one at a time, as Part 10 bytes.

        Raises
        ------
        DicomWebError
            (or a subclass) when the server refuses (401/403), has no such study (404, or no
            instance), fails (5xx) or times out.
        """
        study_uid = validate_uid(study_uid, "study UID")
        remote = web_remote(remote)
        received = 0
        with self._errors(remote, f"WADO-RS retrieve of study {study_uid}"):
            for ds in self._client(remote).iter_study(study_uid):
                received += 1
                yield _part10(ds)
        if received == 0:
            raise DicomWebNotFoundError(
                f"DICOMweb server {remote.name} ({remote.url}) returned no instance of study "
                f"{study_uid}; check the UID with a QIDO-RS search"
            )

    def retrieve_study(
        self, remote: DicomWebRemote | RemoteNode, study_uid: str, store: DicomStore
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
        remote = web_remote(remote)
        t0 = time.perf_counter()
        received = stored = duplicates = failed = size = 0
        reasons: list[str] = []
        source = f"WADO-RS from {remote.name}"
        for data in self.iter_study(remote, study_uid):
            received += 1
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
        return RetrieveOutcome(
            study_uid, received, stored, duplicates, failed, size, seconds, tuple(reasons)
        )

    # -- STOW-RS -----------------------------------------------------------------------------

    def store_instances(
        self, remote: DicomWebRemote | RemoteNode, files: Sequence[Path | Dataset]
    ) -> StoreOutcome:
        """STOW-RS Part 10 files (or datasets) to the server, one request per study.

        Instances the server refuses are in :attr:`StoreOutcome.failed` with the reason: those
        of its FailedSOPSequence (a refused SOP class: "SOP class not supported..."), all of a
        request it answers with 409 Conflict or another 4xx (besides 401/403/404), and any it
        neither stored nor refused.

        Raises
        ------
        DicomWebError
            (or a subclass) when the request as a whole is refused (401/403: credentials; 404:
            not a DICOMweb root), fails (5xx), times out or cannot connect.
        """
        import requests

        remote = web_remote(remote)
        datasets = [f if isinstance(f, Dataset) else pydicom.dcmread(f) for f in files]
        by_study: dict[str, list[Dataset]] = {}
        for ds in datasets:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        t0 = time.perf_counter()
        stored: list[str] = []
        failed: list[tuple[str, str]] = []
        client = self._client(remote)
        for study_uid, members in by_study.items():
            what = f"STOW-RS of {len(members)} instance(s)"
            response: Dataset | None = None
            try:
                with self._errors(remote, what):
                    response = client.store_instances(members, study_instance_uid=study_uid)
            except DicomWebError as exc:
                http = exc.__cause__
                code = (
                    http.response.status_code
                    if isinstance(http, requests.exceptions.HTTPError) and http.response is not None
                    else None
                )
                if code is None or code in (401, 403, 404) or code >= 500:
                    raise
                response = _stow_body(http)
                if response is None or not response.get("FailedSOPSequence"):
                    why = (
                        f"{remote.name} refused the STOW-RS request: HTTP {code}"
                        f"{' (conflict)' if code == 409 else ''}; check the server's log"
                    )
                    failed += [(str(ds.SOPInstanceUID), why) for ds in members]
                    continue
            answered = set()
            for item in response.get("ReferencedSOPSequence", []) if response else []:
                stored.append(str(item.ReferencedSOPInstanceUID))
                answered.add(stored[-1])
            for item in response.get("FailedSOPSequence", []) if response else []:
                uid = str(item.get("ReferencedSOPInstanceUID", ""))
                why = failure_reason(int_or_none(item.get("FailureReason")))
                failed.append((uid, f"{remote.name} refused it: {why}"))
                answered.add(uid)
            for ds in members:
                if str(ds.SOPInstanceUID) not in answered:
                    failed.append(
                        (str(ds.SOPInstanceUID), f"{remote.name} did not confirm storing it")
                    )
        outcome = StoreOutcome(remote.name, stored, failed, time.perf_counter() - t0)
        log.info(
            "STOW-RS to %s: %d stored, %d refused in %.2f s",
            remote.name, len(stored), len(failed), outcome.seconds,
        )  # fmt: skip
        return outcome

    # -- remote slides -----------------------------------------------------------------------

    def open_slide(
        self, remote: DicomWebRemote | RemoteNode, study_uid: str, series_uid: str
    ) -> Any:
        """A :class:`wsidicom.WsiDicom` of one remote WSI series, read through WADO-RS frame
        by frame (wsidicom's DICOMweb source): only the metadata and the tiles read travel.

        Raises
        ------
        DicomWebError
            (or a subclass) when the server refuses, fails or does not answer, or the series
            holds no whole-slide image.
        """
        from wsidicom import WsiDicom

        study_uid = validate_uid(study_uid, "study UID")
        series_uid = validate_uid(series_uid, "series UID")
        remote = web_remote(remote)
        what = f"WADO-RS read of slide series {series_uid} (study {study_uid})"
        with self._errors(remote, what):
            client = self._client(remote)
            # wsidicom asks for JPEG first; a server holding the frames uncompressed (RGB)
            # would then transcode them, lossy, and Orthanc 1.10 labels the result wrongly
            # (YBR pixels read as RGB): ask an RGB series for its frames as they are.
            found = _all_pages(
                lambda offset: client.search_for_instances(
                    study_uid, series_uid, fields=["00280004"], offset=offset
                ),
                "00080018",
            )
            photometric = {
                str(Dataset.from_json(item).get("PhotometricInterpretation", "")) for item in found
            }
            syntaxes = None
            if photometric and photometric <= {"RGB", "MONOCHROME2", ""}:
                from pydicom.uid import ExplicitVRLittleEndian

                syntaxes = [ExplicitVRLittleEndian]
            try:
                with warnings.catch_warnings():  # metadata bulk data (pixels) is not wanted
                    warnings.filterwarnings("ignore", "No bulk data URI handler")
                    return WsiDicom.open_web(
                        _web_slide_client(client), study_uid, series_uid, syntaxes
                    )
            except Exception as exc:
                if not type(exc).__module__.startswith("wsidicom"):
                    raise
                raise DicomWebNotFoundError(
                    f"DICOMweb server {remote.name} ({remote.url}) has no whole-slide image in "
                    f"series {series_uid} of study {study_uid} ({type(exc).__name__}: {exc}); "
                    "check the UIDs with a QIDO-RS search"
                ) from exc


@dataclass(frozen=True)
class RemoteWsiSeries:
    """A DICOM WSI series on a DICOMweb server: the ``remote`` of a
    :class:`~osteomics.wsi.sources.SlideSource` that the ``wsidicom`` reader opens."""

    connector: DicomWebConnector
    remote: DicomWebRemote
    study_uid: str
    series_uid: str

    def open(self) -> Any:
        return self.connector.open_slide(self.remote, self.study_uid, self.series_uid)

    def describe(self) -> str:
        return f"{self.remote.url} study {self.study_uid} series {self.series_uid}"


def remote_slide_source(config: Any, locator: str, timeout_s: float = 60.0) -> SlideSource:
    """The :class:`~osteomics.wsi.sources.SlideSource` of
    ``dicomweb:REMOTE/<StudyUID>/<SeriesUID>``, REMOTE a DICOMweb remote of ``config``
    (node.toml). Opening it (``open_slide``) reads the series' metadata; tiles are read on
    demand, nothing else is downloaded.

    Raises
    ------
    NotASlideError
        Not a remote slide locator.
    UnknownRemoteError, NodeConfigError
        No such remote in node.toml, or its secret's environment variable is unset.
    DicomWebError
        REMOTE is a DIMSE remote.
    """
    from osteomics.wsi.errors import NotASlideError
    from osteomics.wsi.sources import parse_remote_slide, safe_name

    parsed = parse_remote_slide(locator)
    if parsed is None:
        raise NotASlideError(f"{locator}: not a dicomweb:REMOTE/<StudyUID>/<SeriesUID> locator")
    name, study_uid, series_uid = parsed
    remote = web_remote(config.remote(name))
    study_uid = validate_uid(study_uid, "study UID")
    series_uid = validate_uid(series_uid, "series UID")
    handle = RemoteWsiSeries(DicomWebConnector(config, timeout_s), remote, study_uid, series_uid)
    slide_name = safe_name(f"{name}-{series_uid}")
    return SlideSource(slide_name, Path(locator), (), remote=handle)


def _flat_frames_client() -> Any:
    from wsidicom import WsiDicomWebClient

    class FlatFramesClient(WsiDicomWebClient):
        """wsidicom's DICOMweb client, with frames as ``bytes``: dicomweb-client gives an
        ``application/octet-stream`` (uncompressed) frame as a ``bytearray``, which pydicom
        takes for a multi-valued element in wsidicom's decoder (wsidicom 0.36,
        dicomweb-client 0.61)."""

        def get_frames(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
            for frame in super().get_frames(*args, **kwargs):
                yield bytes(frame)

    return FlatFramesClient


def _web_slide_client(client: Any) -> Any:
    return _flat_frames_client()(client)


#: QIDO-RS pages read at most (a server may cap each page, e.g. at 100 matches).
_MAX_PAGES = 1000


def _all_pages(search: Any, uid_tag: str) -> list[dict[str, Any]]:
    """Every match of a QIDO-RS search, page by page (``search(offset)``), until a page brings
    nothing new: a server that ignores ``offset`` (and answers the first page again) ends the
    loop instead of repeating it forever, as dicomweb-client's ``get_remaining`` would."""
    seen: set[str] = set()
    results: list[dict[str, Any]] = []
    offset = 0
    for _ in range(_MAX_PAGES):
        page = search(offset) or []
        new = []
        for item in page:
            uid = str((item.get(uid_tag) or {}).get("Value", [""])[0])
            if uid not in seen:
                seen.add(uid)
                new.append(item)
        if not new:
            break
        results.extend(new)
        offset += len(page)
    return results


def web_remote(remote: DicomWebRemote | RemoteNode) -> DicomWebRemote:
    """The :class:`DicomWebRemote` of a node.toml remote (credentials read from the
    environment where it says ``password_env``/``token_env``), or ``remote`` itself.

    Raises
    ------
    DicomWebError
        A DIMSE remote.
    NodeConfigError
        An environment variable it names is not set.
    """
    if isinstance(remote, DicomWebRemote):
        return remote
    if remote.protocol != "dicomweb" or not remote.url:
        raise DicomWebError(
            f"remote {remote.name} is a DIMSE remote ({remote.address}), not a DICOMweb "
            'server; its [remotes] table needs protocol = "dicomweb" and url'
        )
    username, password, token = remote.credentials()
    return DicomWebRemote(
        remote.name, remote.url, token=token, username=username, password=password,
        timeout_s=remote.timeout_s,
    )  # fmt: skip


def _stow_body(http: Any) -> Dataset | None:
    """The DICOM JSON body of a refused STOW-RS response (its FailedSOPSequence), if any."""
    try:
        if "json" not in http.response.headers.get("Content-Type", ""):
            return None
        return Dataset.from_json(http.response.content)
    except Exception:
        return None


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
