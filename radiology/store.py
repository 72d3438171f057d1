"""The study store: one durable file per SOP Instance plus an SQLite index.

Layout under the storage root (every path component is a validated UID)::

    root/index.sqlite                      the index (WAL mode): tables patients, studies,
                                           series, instances (this module), jobs
                                           (:mod:`osteomics.radiology.jobs` owns that one)
    root/store.lock                        the writers' lock: who holds the store (JSON)
    root/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm
    root/results/<kind>/<StudyUID>/        what jobs derived from a study (e.g. ``radiomics``)
    root/.quarantine/                      files recover() found but could not index

This class is the one door into that layout: :meth:`DicomStore.study_folder` and
:meth:`DicomStore.result_folder` give the paths, nothing else composes them. Results live
outside the DICOM tree, so :meth:`DicomStore.recover` never mistakes them for instances (a
``root/radiomics/`` folder of osteomics <= 0.2 is moved to ``root/results/radiomics/`` when a
writer opens the store).

One writer per store: a writer (``mode="write"``: the node, an import, :meth:`recover`) holds an
exclusive ``flock`` on ``root/store.lock`` for its lifetime and writes its pid, host and command
there, so a second writer is refused with :class:`StoreLockedError` naming the holder (two
writers would delete each other's files in :meth:`recover`). Readers (``mode="read"``: ``node
status``, ``node ls``, ``radiomics store:<UID>``) take no lock and work while a node serves (the
index is in WAL mode); they never create a store: a missing one raises
:class:`StoreNotFoundError`.

The rule the node relies on: :meth:`DicomStore.store` returns only after the file is on disk
(temporary file, rename into place, fsync of the file, fsync of the folder) *and* its index row
is committed, so a Success C-STORE response always means "durable and indexed". The index runs
with ``synchronous=NORMAL`` (WAL): a commit survives a crash of the process at once, and after a
power loss a lost row is rebuilt from its durable file. A crash at any point leaves at most a
temporary file or a file without a row (complete; after a power loss possibly incomplete);
:meth:`DicomStore.recover` (run at start-up) removes the former, indexes complete files without
rows and quarantines incomplete ones (and drops rows whose file was removed by hand). An
instance left in any of these states had not been answered Success, or is indexed again.

Thread safety: one :class:`DicomStore` is shared by every association thread. File content is
written and fsynced in parallel (outside the lock, the folder's fsync beside the file's, so the
file system can commit them, and several associations' files, in one journal commit); the
index check and the rename, and later the commit, of one instance are serialised by a lock,
and a second writer of the same SOP Instance UID waits for the first, which makes concurrent
duplicates idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import Tag

from osteomics.core.files import (
    NO_SPACE_ERRNOS,
    fsync_dir,
    fsync_file,
    is_temp_file,
    make_dirs_durable,
    write_temp,
)
from osteomics.radiology.errors import (
    InconsistentDatasetError,
    InvalidDatasetError,
    InvalidUIDError,
    StorageFullError,
    StoreError,
)
from osteomics.radiology.part10 import IncompleteDatasetError, RawValue, scan_dataset
from osteomics.radiology.uids import is_valid_uid, validate_uid

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
QUARANTINE_NAME = ".quarantine"
#: The writers' lock file in the storage root.
LOCK_NAME = "store.lock"
#: Folder under the storage root holding results derived from studies, one folder per kind.
RESULTS_NAME = "results"
#: Where osteomics <= 0.2 wrote radiomics tables (inside the DICOM tree); moved when opened.
_LEGACY_RADIOMICS_NAME = "radiomics"
#: Version of the index as a whole (``PRAGMA user_version``): 2 added the jobs lease columns
#: (migrated by :func:`osteomics.radiology.jobs.ensure_jobs_schema`).
SCHEMA_VERSION = 2

#: Folders of the root that are the store's own, not studies (recover() leaves them alone).
_OWN_FOLDERS = frozenset((QUARANTINE_NAME, RESULTS_NAME))

_RESULT_KIND = re.compile(r"[a-z][a-z0-9_-]{0,63}")

StoreMode = Literal["write", "read"]


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A store opened for reading that is not there (no index in the folder)."""


class StoreLockedError(StoreError):
    """A second writer (node, import, recovery) on a store another process writes to."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_id      TEXT PRIMARY KEY,           -- '' when the sender left it empty
    first_received  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid       TEXT PRIMARY KEY,
    patient_id      TEXT NOT NULL REFERENCES patients(patient_id),
    study_date      TEXT,                       -- DICOM DA, YYYYMMDD, as received
    first_received  REAL NOT NULL,              -- epoch seconds
    last_received   REAL NOT NULL               -- for the study-quiet rule
);
CREATE TABLE IF NOT EXISTS series (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL REFERENCES studies(study_uid),
    modality        TEXT,
    series_number   INTEGER
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid       TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid    TEXT NOT NULL,
    transfer_syntax  TEXT NOT NULL,
    path             TEXT NOT NULL UNIQUE,      -- relative to the storage root
    size             INTEGER NOT NULL,          -- bytes
    sha256           TEXT NOT NULL,
    received         REAL NOT NULL              -- epoch seconds
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
"""

#: The attributes the index needs; parsing stops after these (never the pixel data).
_INDEX_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "StudyDate",
    "Modality",
    "SeriesNumber",
]

_INDEX_KEYWORDS = {int(Tag(keyword)): keyword for keyword in _INDEX_TAGS}
_INDEX_VRS = {keyword: dictionary_VR(keyword) for keyword in _INDEX_TAGS}
_SPECIFIC_CHARACTER_SET = int(Tag("SpecificCharacterSet"))
#: Tags :func:`read_attributes` keeps while walking a dataset (plus the character set).
_SCAN_TAGS = frozenset((*_INDEX_KEYWORDS, _SPECIFIC_CHARACTER_SET))

Outcome = Literal["stored", "duplicate", "conflict"]


@dataclass(frozen=True)
class InstanceAttributes:
    """The key attributes of one instance, read from its dataset and validated.

    Attributes
    ----------
    sop_instance_uid, sop_class_uid, study_uid, series_uid, transfer_syntax:
        Validated UIDs (safe as path components).
    patient_id:
        Patient ID as received ('' when empty). Never logged.
    study_date:
        DICOM DA (``YYYYMMDD``) as received, or ``None``.
    modality:
        ``CT``, ``MR``, ``PT``, ``RTSTRUCT``, ... or ``None``.
    series_number:
        Series Number, or ``None``.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    patient_id: str
    study_date: str | None
    modality: str | None
    series_number: int | None


@dataclass(frozen=True)
class InstanceRecord:
    """One indexed instance: its attributes and where and what its file is."""

    attributes: InstanceAttributes
    path: Path
    size: int
    sha256: str
    received: float


@dataclass(frozen=True)
class StoreResult:
    """What :meth:`DicomStore.store` did.

    ``outcome`` is ``stored`` (new instance), ``duplicate`` (same UID, same bytes: nothing
    written) or ``conflict`` (same UID, different bytes: the first copy was kept). In every case
    the instance with this SOP Instance UID is durable and indexed when this is returned.
    """

    outcome: Outcome
    record: InstanceRecord


@dataclass(frozen=True)
class StoreStatus:
    """Counts of what the index holds; ``jobs`` counts jobs by state."""

    patients: int
    studies: int
    series: int
    instances: int
    jobs: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "studies": self.studies,
            "series": self.series,
            "instances": self.instances,
            "jobs": dict(self.jobs),
        }


@dataclass(frozen=True)
class StudySummary:
    """One study as ``osteomics node ls`` lists it."""

    study_uid: str
    patient_id: str
    study_date: str | None
    modalities: tuple[str, ...]
    series: int
    instances: int
    last_received: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "study_date": self.study_date,
            "modalities": list(self.modalities),
            "series": self.series,
            "instances": self.instances,
            "last_received": self.last_received,
        }


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`DicomStore.recover` repaired."""

    temp_files_removed: int = 0
    rows_without_file_removed: int = 0
    files_indexed: int = 0
    files_quarantined: int = 0

    @property
    def repaired(self) -> bool:
        return any(
            (
                self.temp_files_removed,
                self.rows_without_file_removed,
                self.files_indexed,
                self.files_quarantined,
            )
        )


def read_attributes(data: bytes, source: str = "dataset") -> InstanceAttributes:
    """Parse the key attributes of a DICOM Part 10 file given as bytes, and validate them.

    One pass over the dataset: the index attributes are taken on the way, values are not
    decoded, and the dataset must be complete (see :func:`read_dataset_attributes`).

    Parameters
    ----------
    data:
        Preamble, File Meta Information and dataset, as written to disk.
    source:
        Where the bytes came from (a file name or ``"C-STORE from AE X"``), for messages.

    Raises
    ------
    InvalidDatasetError
        Undecodable or truncated bytes, a missing File Meta Information, an index attribute
        with the wrong VR, or a missing or invalid UID
        (:class:`~osteomics.radiology.errors.InvalidUIDError` is wrapped, its message kept).
    InconsistentDatasetError
        The File Meta Information names another SOP Instance than the dataset.
    """
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidDatasetError(f"{source}: not a decodable DICOM file ({exc})") from exc
    attrs = read_dataset_attributes(data, fp.tell(), str(meta.get("TransferSyntaxUID", "")), source)
    media_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
    if media_uid and media_uid != attrs.sop_instance_uid:
        raise InconsistentDatasetError(
            f"{source}: the File Meta Information (or C-STORE command) names SOP Instance "
            f"{media_uid[:80]!a} but the dataset is {attrs.sop_instance_uid}; the sender must "
            "fix the object"
        )
    return attrs


def read_dataset_attributes(
    data: bytes, start: int, transfer_syntax: str, source: str = "dataset"
) -> InstanceAttributes:
    """The validated index attributes of the dataset in ``data[start:]``, encoded in
    ``transfer_syntax`` (the node's path: it knows the syntax from the presentation context).

    The dataset must be complete: pydicom reads a dataset cut inside an element value without
    complaint (the value is just shorter), so every element is walked (values are not
    decoded; sequences of undefined length must find their delimiters) and the last one must
    end exactly where the bytes end. Little-endian datasets are walked by
    :func:`osteomics.radiology.part10.scan_dataset`; deflated and big-endian ones are read by
    pydicom (deflated ones are not checked for truncation).

    Raises
    ------
    InvalidDatasetError
        As :func:`read_attributes`.
    """
    try:
        ts = pydicom.uid.UID(validate_uid(transfer_syntax, "Transfer Syntax UID"))
    except InvalidUIDError as exc:
        raise InvalidDatasetError(f"{source}: {exc}") from exc
    if not ts.is_transfer_syntax:
        raise InvalidDatasetError(f"{source}: {ts} is not a known transfer syntax")
    if ts.is_deflated or ts == pydicom.uid.ExplicitVRBigEndian:
        values = _values_by_pydicom(data, source)
    else:
        try:
            raw = scan_dataset(data, start, ts == pydicom.uid.ImplicitVRLittleEndian, _SCAN_TAGS)
        except IncompleteDatasetError as exc:
            raise InvalidDatasetError(
                f"{source}: truncated dataset: {exc}; the sender must resend it"
            ) from exc
        values = _values_from_raw(raw, source)
    try:
        return InstanceAttributes(
            sop_instance_uid=validate_uid(values.get("SOPInstanceUID", ""), "SOP Instance UID"),
            sop_class_uid=validate_uid(values.get("SOPClassUID", ""), "SOP Class UID"),
            study_uid=validate_uid(values.get("StudyInstanceUID", ""), "Study Instance UID"),
            series_uid=validate_uid(values.get("SeriesInstanceUID", ""), "Series Instance UID"),
            transfer_syntax=str(ts),
            patient_id=values.get("PatientID", ""),
            study_date=values.get("StudyDate") or None,
            modality=values.get("Modality") or None,
            series_number=_int_or_none(values.get("SeriesNumber", "")),
        )
    except InvalidUIDError as exc:
        raise InvalidDatasetError(f"{source}: {exc}") from exc


def _values_from_raw(raw: dict[int, RawValue], source: str) -> dict[str, str]:
    """Index attribute values (keyword -> text) from raw little-endian values; an explicit VR
    other than the dictionary's is refused."""
    charset = raw.get(_SPECIFIC_CHARACTER_SET)
    encodings: list[str] | None = None
    values: dict[str, str] = {}
    for tag, item in raw.items():
        keyword = _INDEX_KEYWORDS.get(tag)
        if keyword is None:
            continue
        expected = _INDEX_VRS[keyword]
        if item.vr is not None and item.vr != expected:
            raise InvalidDatasetError(
                f"{source}: {keyword} {Tag(tag)} is encoded with VR {item.vr}, not "
                f"{expected} as DICOM defines it; the sender must fix the object"
            )
        value = item.value.strip(b"\x00 ")
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            if encodings is None:
                terms = charset.value.decode("ascii", "replace").strip("\x00 ") if charset else ""
                encodings = convert_encodings([t.strip() for t in terms.split("\\")] or [""])
            text = decode_bytes(value, encodings, set())
        values[keyword] = text
    return values


def _values_by_pydicom(data: bytes, source: str) -> dict[str, str]:
    """Index attribute values of a deflated or big-endian dataset, read by pydicom."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=list(_INDEX_TAGS)
        )
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidDatasetError(f"{source}: not a decodable DICOM file ({exc})") from exc
    values: dict[str, str] = {}
    for keyword in _INDEX_TAGS:
        if keyword not in ds:
            continue
        try:
            element = ds[keyword]
            if str(element.VR) != _INDEX_VRS[keyword]:
                raise InvalidDatasetError(
                    f"{source}: {keyword} {element.tag} is encoded with VR {element.VR}, not "
                    f"{_INDEX_VRS[keyword]} as DICOM defines it; the sender must fix the object"
                )
            values[keyword] = "" if element.value is None else str(element.value).strip("\x00 ")
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidDatasetError(
                f"{source}: an index attribute cannot be read ({exc})"
            ) from exc
    return values


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def open_index(
    root: Path, synchronous: Literal["FULL", "NORMAL"] = "FULL", *, create: bool = True
) -> sqlite3.Connection:
    """Open (creating or upgrading) the SQLite index of the store at ``root``.

    WAL mode, foreign keys on, autocommit (callers use explicit ``BEGIN IMMEDIATE``
    transactions). Safe to call from several threads or processes on the same root: SQLite
    serialises the writers. This creates the tables of this module (patients, studies, series,
    instances); :mod:`osteomics.radiology.jobs` adds its own on the connection it opens.

    ``create=False`` opens an existing index only (no folder, file or table is created, no
    migration runs): for readers.

    ``synchronous``: ``FULL`` makes each commit durable before it returns (the job queue);
    ``NORMAL`` (in WAL mode) makes it atomic and durable against a crash of the process, but a
    power loss may lose the last commits: :class:`DicomStore` uses it because every instance
    row can be rebuilt from its durable file by :meth:`DicomStore.recover`.

    Raises
    ------
    OSError, sqlite3.Error
        The folder or the database cannot be opened; :class:`DicomStore` turns them into
        :class:`~osteomics.radiology.errors.StoreError`.
    """
    if create:
        root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            root / INDEX_NAME, check_same_thread=False, isolation_level=None, timeout=30
        )
    else:
        db = sqlite3.connect(
            f"{(root / INDEX_NAME).absolute().as_uri()}?mode=rw",
            uri=True,
            check_same_thread=False,
            isolation_level=None,
            timeout=30,
        )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'NORMAL' if synchronous == 'NORMAL' else 'FULL'}")
        db.execute("PRAGMA foreign_keys=ON")
        if create:
            db.executescript(_SCHEMA)
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


def _is_no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's writers' lock, as it wrote into ``store.lock``.

    Attributes
    ----------
    pid, host:
        Process id and host name of the holder.
    command:
        Its command line (paths and options; the store never logs patient identifiers).
    since:
        When it took the lock (ISO 8601, UTC).
    """

    pid: int | None
    host: str
    command: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.command!r}, since {self.since})"


def lock_holder(root: Path) -> LockHolder | None:
    """The holder recorded in ``root/store.lock`` (``None`` when nothing readable is there).

    The record is informative; the lock itself is the ``flock`` (a record left by a process
    that died holds nothing).
    """
    try:
        data = json.loads((Path(root) / LOCK_NAME).read_text(encoding="utf-8"))
        return LockHolder(
            pid=int(data["pid"]) if data.get("pid") is not None else None,
            host=str(data.get("host", "?")),
            command=str(data.get("command", "?")),
            since=str(data.get("since", "?")),
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _take_writer_lock(root: Path) -> int:
    """Take the exclusive ``flock`` on ``root/store.lock`` and record this process in it.

    Returns the open file descriptor (the lock lasts until it is closed, or the process ends).

    Raises
    ------
    StoreLockedError
        Another open writer (in this or another process) holds it.
    """
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = lock_holder(root)
        who = holder.describe() if holder else "another process (it left no record)"
        raise StoreLockedError(
            f"the study store at {root} is in use by {who}; only one writer (node serve, "
            "import, recovery) may open a store: stop that one first, or use `osteomics node "
            "status`/`node ls`, which read while it serves"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:500] or sys.executable,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError as exc:  # a full disk: the lock holds, only the record is missing
        log.warning("cannot record the lock holder in %s (%s)", root / LOCK_NAME, exc)
    return fd


class DicomStore:
    """The store under one storage root; see the module docstring for the layout and rules.

    Parameters
    ----------
    root:
        Storage folder.
    mode:
        ``"write"`` (default): create the store if missing and hold its writers' lock until
        :meth:`close`. ``"read"``: the store must exist; no lock, nothing is created, and
        :meth:`store`, :meth:`store_file` and :meth:`recover` are refused (for ``node
        status``/``ls`` and readers while a node serves).

    Raises
    ------
    StoreNotFoundError
        ``mode="read"`` and there is no store (no index) at ``root``.
    StoreLockedError
        ``mode="write"`` and another writer holds the store (the message names it).
    StoreError
        When the folder or its index cannot be created or opened.
    """

    def __init__(self, root: Path, *, mode: StoreMode = "write") -> None:
        if mode not in ("write", "read"):
            raise ValueError(f"mode must be 'write' or 'read', not {mode!r}")
        self.root = Path(root)
        self.mode: StoreMode = mode
        self._lock = threading.Lock()
        self._in_flight: dict[str, threading.Event] = {}
        #: Series UID -> study UID of indexed series (their patient and series rows exist);
        #: saves two queries and two inserts per instance. Cleared when rows are deleted.
        self._series_study: dict[str, str] = {}
        self._lock_fd: int | None = None
        if mode == "read" and not (self.root / INDEX_NAME).is_file():
            raise StoreNotFoundError(
                f"no study store at {self.root} (no {INDEX_NAME} there); check the path "
                "([node] storage in node.toml, relative to that file). `osteomics node serve` "
                "creates the store; reading never does"
            )
        try:
            if mode == "write":
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock_fd = _take_writer_lock(self.root)
            self._db = open_index(self.root, synchronous="NORMAL", create=mode == "write")
        except StoreError:
            self._release_lock()
            raise
        except (OSError, sqlite3.Error) as exc:
            self._release_lock()
            if _is_no_space(exc):
                raise StorageFullError(
                    f"storage root {self.root} is full; free space there and start again"
                ) from exc
            raise StoreError(
                f"cannot open the study store at {self.root} ({exc}); check the folder exists "
                "and is writable, or point [node] storage elsewhere"
            ) from exc
        self._syncer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-fsync")
        if mode == "write":
            self._move_legacy_results()

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the index (files are always durable already) and release the lock."""
        self._syncer.shutdown(wait=True)
        with self._lock:
            self._db.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _require_writer(self, what: str) -> None:
        if self.mode != "write":
            raise StoreError(
                f"{what}: the study store at {self.root} was opened for reading; open it with "
                "mode='write' (only one writer at a time)"
            )

    def __enter__(self) -> DicomStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths (the one door into the layout) ---------------------------------------------

    def relative_path(self, attrs: InstanceAttributes) -> Path:
        """``<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` (all three already validated)."""
        return (
            Path(validate_uid(attrs.study_uid))
            / validate_uid(attrs.series_uid)
            / f"{validate_uid(attrs.sop_instance_uid)}.dcm"
        )

    def study_folder(self, study_uid: str) -> Path:
        """The folder holding the files of study ``study_uid`` (one sub-folder per series).

        Only DICOM instances lie under it. It may not exist (no instance stored yet); check
        :meth:`study` for whether the store holds the study.

        Raises
        ------
        InvalidUIDError
            ``study_uid`` is not a valid UID.
        """
        return self.root / validate_uid(study_uid, "Study Instance UID")

    def result_folder(self, kind: str, study_uid: str) -> Path:
        """``<root>/results/<kind>/<StudyUID>/``: where results of ``kind`` (e.g.
        ``radiomics``) derived from a study are written; not created here.

        Raises
        ------
        InvalidUIDError
            ``study_uid`` is not a valid UID.
        ValueError
            ``kind`` is not a lower-case name (letters, digits, ``_``, ``-``).
        """
        if not _RESULT_KIND.fullmatch(kind):
            raise ValueError(f"result kind {kind!r}: use a lower-case name such as 'radiomics'")
        return self.root / RESULTS_NAME / kind / validate_uid(study_uid, "Study Instance UID")

    def _move_legacy_results(self) -> None:
        """Move ``root/radiomics/<UID>.parquet|.provenance.json`` (osteomics <= 0.2) to
        :meth:`result_folder`; the legacy folder is removed once empty."""
        legacy = self.root / _LEGACY_RADIOMICS_NAME
        if not legacy.is_dir():
            return
        suffixes = {".parquet": "features.parquet", ".provenance.json": "features.provenance.json"}
        for entry in sorted(legacy.iterdir()):
            for suffix, name in suffixes.items():
                uid = entry.name.removesuffix(suffix)
                if entry.name.endswith(suffix) and is_valid_uid(uid):
                    target = self.result_folder("radiomics", uid) / name
                    if not target.exists():
                        make_dirs_durable(target.parent, self.root)
                        os.replace(entry, target)
                        fsync_dir(target.parent)
                    break
        with contextlib.suppress(OSError):
            legacy.rmdir()  # only when every file was moved
            fsync_dir(self.root)
        if legacy.exists():
            log.warning(
                "%s holds files osteomics did not write there; radiomics results now live in "
                "%s; move or remove that folder",
                legacy,
                self.root / RESULTS_NAME / "radiomics",
            )
        else:
            log.info("moved radiomics results from %s to %s", legacy, self.root / RESULTS_NAME)

    # -- writing ---------------------------------------------------------------------------

    def store(
        self, data: bytes, source: str = "dataset", attributes: InstanceAttributes | None = None
    ) -> StoreResult:
        """Store one instance, durably, and index it; idempotent for duplicates.

        Parameters
        ----------
        data:
            The complete DICOM Part 10 file (preamble, File Meta Information, dataset).
        source:
            Where it came from, for messages (e.g. ``"C-STORE from AE ORTHANC"``).
        attributes:
            ``read_attributes(data)`` when the caller has it already (saves a parse).

        Returns
        -------
        StoreResult
            Returned only once the file is durable and its index row committed.

        Raises
        ------
        InvalidDatasetError
            The bytes are not a storable instance (nothing is written).
        InconsistentDatasetError
            Its series is already indexed under another study (nothing is written).
        StorageFullError
            The device is full; no temporary file, file or row of this instance is left.
        StoreError
            Any other I/O failure, with nothing half-written left behind.
        """
        self._require_writer("store")
        attrs = attributes if attributes is not None else read_attributes(data, source)
        rel = self.relative_path(attrs)
        path = self.root / rel
        sha256 = hashlib.sha256(data).hexdigest()

        existing = self._lookup(attrs.sop_instance_uid)
        if existing is not None:  # fast path for resends: no write at all
            return self._duplicate(existing, sha256, source)

        try:
            make_dirs_durable(path.parent, self.root)
            tmp = write_temp(path, data)
        except OSError as exc:
            raise self._write_error(exc, path) from exc

        # 1. Under the lock: no row and nobody else writing this UID -> rename into place.
        #    A concurrent writer of the same UID is waited for, then it is a duplicate.
        uid = attrs.sop_instance_uid
        while True:
            with self._lock:
                try:
                    existing = self._lookup_locked(uid)
                    if existing is not None:  # another association stored it meanwhile
                        tmp.unlink(missing_ok=True)
                        return self._duplicate(existing, sha256, source)
                    pending = self._in_flight.get(uid)
                    if pending is None:
                        self._check_consistency_locked(attrs)
                        os.replace(tmp, path)
                        done = self._in_flight[uid] = threading.Event()
                        break
                except (OSError, sqlite3.Error) as exc:
                    tmp.unlink(missing_ok=True)
                    raise self._write_error(exc, path) from exc
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            pending.wait(60)

        # 2. Outside the lock (associations fsync in parallel, and the file system commits
        #    their journal together): the file's data and its name are made durable, then
        #    3. the row is committed. Any failure takes the file away again, so that no file is
        #    left that the sender was not told about.
        try:
            try:
                # The folder's fsync runs beside the file's, so that both join one journal
                # commit; both must succeed before the row is committed.
                folder_synced = self._syncer.submit(fsync_dir, path.parent)
                fsync_file(path)
                folder_synced.result()
                received = time.time()
                with self._lock:
                    self._check_consistency_locked(attrs)
                    self._insert_locked(attrs, rel, len(data), sha256, received)
            except BaseException:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    fsync_dir(path.parent)
                raise
        except (OSError, sqlite3.Error) as exc:
            raise self._write_error(exc, path) from exc
        finally:
            with self._lock:
                del self._in_flight[uid]
            done.set()
        log.debug("stored %s (%d bytes)", uid, len(data))
        record = InstanceRecord(attrs, path, len(data), sha256, received)
        return StoreResult("stored", record)

    def store_file(self, path: Path) -> StoreResult:
        """Import a DICOM Part 10 file from disk (see :meth:`store`)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidDatasetError(f"cannot read {path} ({exc.strerror or exc})") from exc
        return self.store(data, source=str(path))

    def _duplicate(self, existing: InstanceRecord, sha256: str, source: str) -> StoreResult:
        uid = existing.attributes.sop_instance_uid
        if existing.sha256 == sha256:
            log.debug("duplicate %s: same bytes, nothing to do", uid)
            return StoreResult("duplicate", existing)
        log.warning(
            "conflict for SOP Instance %s from %s: different bytes (sha256 %s) than the copy "
            "kept (sha256 %s); the first copy is kept",
            uid,
            source,
            sha256[:16],
            existing.sha256[:16],
        )
        return StoreResult("conflict", existing)

    def _write_error(self, exc: BaseException, path: Path) -> StoreError:
        if _is_no_space(exc):
            return StorageFullError(
                f"storage {self.root} is full while writing {path.name}; nothing was kept of "
                "it. Free space on that device (or move [node] storage) and resend"
            )
        return StoreError(
            f"cannot write {path} ({exc}); check the storage folder {self.root} is writable"
        )

    def _check_consistency_locked(self, attrs: InstanceAttributes) -> None:
        study_uid = self._series_study.get(attrs.series_uid)
        if study_uid is None:
            row = self._db.execute(
                "SELECT study_uid FROM series WHERE series_uid = ?", (attrs.series_uid,)
            ).fetchone()
            if row is None:
                return
            study_uid = self._series_study[attrs.series_uid] = row[0]
        if study_uid != attrs.study_uid:
            raise InconsistentDatasetError(
                f"series {attrs.series_uid} is already stored under study {study_uid}, but "
                f"instance {attrs.sop_instance_uid} puts it under study {attrs.study_uid}; "
                "the sender must fix the object"
            )

    def _insert_locked(
        self, attrs: InstanceAttributes, rel: Path, size: int, sha256: str, received: float
    ) -> None:
        db = self._db
        new_series = attrs.series_uid not in self._series_study
        db.execute("BEGIN IMMEDIATE")
        try:
            if new_series:
                db.execute(
                    "INSERT OR IGNORE INTO patients(patient_id, first_received) VALUES (?, ?)",
                    (attrs.patient_id, received),
                )
            db.execute(
                "INSERT INTO studies(study_uid, patient_id, study_date, first_received,"
                " last_received) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received",
                (attrs.study_uid, attrs.patient_id, attrs.study_date, received, received),
            )
            if new_series:
                db.execute(
                    "INSERT OR IGNORE INTO series(series_uid, study_uid, modality, series_number)"
                    " VALUES (?, ?, ?, ?)",
                    (attrs.series_uid, attrs.study_uid, attrs.modality, attrs.series_number),
                )
            db.execute(
                "INSERT INTO instances(sop_instance_uid, series_uid, sop_class_uid,"
                " transfer_syntax, path, size, sha256, received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attrs.sop_instance_uid,
                    attrs.series_uid,
                    attrs.sop_class_uid,
                    attrs.transfer_syntax,
                    rel.as_posix(),
                    size,
                    sha256,
                    received,
                ),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._series_study[attrs.series_uid] = attrs.study_uid

    # -- reading ---------------------------------------------------------------------------

    def _lookup(self, sop_instance_uid: str) -> InstanceRecord | None:
        with self._lock:
            return self._lookup_locked(sop_instance_uid)

    def _lookup_locked(self, sop_instance_uid: str) -> InstanceRecord | None:
        row = self._db.execute(
            "SELECT i.sop_instance_uid, i.sop_class_uid, s.study_uid, i.series_uid,"
            " i.transfer_syntax, st.patient_id, st.study_date, s.modality, s.series_number,"
            " i.path, i.size, i.sha256, i.received"
            " FROM instances i JOIN series s USING (series_uid)"
            " JOIN studies st ON st.study_uid = s.study_uid"
            " WHERE i.sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()
        if row is None:
            return None
        attrs = InstanceAttributes(*row[:9])
        return InstanceRecord(attrs, self.root / row[9], row[10], row[11], row[12])

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The indexed instance with this SOP Instance UID, or ``None``."""
        return self._lookup(sop_instance_uid)

    def instances(self) -> Iterator[InstanceRecord]:
        """Every indexed instance (a snapshot taken when called)."""
        with self._lock:
            uids = [r[0] for r in self._db.execute("SELECT sop_instance_uid FROM instances")]
        for uid in uids:
            record = self._lookup(uid)
            if record is not None:
                yield record

    def status(self) -> StoreStatus:
        """Counts of patients, studies, series, instances, and jobs by state."""
        with self._lock:
            counts = [
                self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("patients", "studies", "series", "instances")
            ]
            # The jobs table is jobs.py's (absent until a queue was opened); only counted here.
            has_jobs = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
            ).fetchone()
            jobs = (
                dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
                if has_jobs
                else {}
            )
        patients, studies, series, instances = counts
        return StoreStatus(patients, studies, series, instances, jobs=jobs)

    def studies(self) -> list[StudySummary]:
        """Every study with its patient ID, date, modalities and counts, newest first."""
        return self._study_summaries("", ())

    def study(self, study_uid: str) -> StudySummary | None:
        """The study with this Study Instance UID, or ``None`` when none is stored."""
        found = self._study_summaries(" WHERE st.study_uid = ?", (study_uid,))
        return found[0] if found else None

    def _study_summaries(self, where: str, params: tuple[str, ...]) -> list[StudySummary]:
        with self._lock:
            rows = self._db.execute(
                "SELECT st.study_uid, st.patient_id, st.study_date,"
                " (SELECT GROUP_CONCAT(DISTINCT modality) FROM series"
                "   WHERE study_uid = st.study_uid),"
                " (SELECT COUNT(*) FROM series WHERE study_uid = st.study_uid),"
                " (SELECT COUNT(*) FROM instances i JOIN series s USING (series_uid)"
                "   WHERE s.study_uid = st.study_uid),"
                " st.last_received"
                f" FROM studies st{where} ORDER BY st.last_received DESC, st.study_uid",
                params,
            ).fetchall()
        return [
            StudySummary(
                study_uid=r[0],
                patient_id=r[1],
                study_date=r[2],
                modalities=tuple(sorted(m for m in (r[3] or "").split(",") if m)),
                series=r[4],
                instances=r[5],
                last_received=r[6],
            )
            for r in rows
        ]

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Bring files and index back into agreement after a crash; run before serving.

        - removes leftover temporary files;
        - removes index rows whose file is gone (and studies/series/patients left empty);
        - indexes ``.dcm`` files that have no row (a crash between rename and commit), after
          checking that their UIDs match where they lie; files that cannot be indexed are moved
          to ``root/.quarantine/`` and logged, never deleted.

        Needs the store opened for writing (the writers' lock keeps a serving node and a
        recovery apart).
        """
        self._require_writer("recover")
        temp_removed = 0
        candidates: list[Path] = []
        for study_dir in self._subdirs(self.root):
            for series_dir in self._subdirs(study_dir):
                for entry in series_dir.iterdir():
                    if is_temp_file(entry):
                        entry.unlink(missing_ok=True)
                        temp_removed += 1
                    elif entry.suffix == ".dcm" and entry.is_file():
                        candidates.append(entry)
                if temp_removed:
                    fsync_dir(series_dir)

        with self._lock:
            indexed = {
                row[0]: row[1]
                for row in self._db.execute("SELECT path, sop_instance_uid FROM instances")
            }
        missing = [uid for rel, uid in indexed.items() if not (self.root / rel).is_file()]
        if missing:
            self._delete_rows(missing)

        files_indexed = quarantined = 0
        for path in candidates:
            rel = path.relative_to(self.root).as_posix()
            if rel in indexed:
                continue
            try:
                attrs = read_attributes(path.read_bytes(), str(path))
                if self.relative_path(attrs).as_posix() != rel:
                    raise InvalidDatasetError(f"{path}: its UIDs do not match its location")
                self._index_existing(path, attrs)
                files_indexed += 1
            except (InvalidDatasetError, InconsistentDatasetError) as exc:
                self._quarantine(path, str(exc))
                quarantined += 1
        report = RecoveryReport(temp_removed, len(missing), files_indexed, quarantined)
        if report.repaired:
            log.warning("recovered the store at %s: %s", self.root, report)
        return report

    def _subdirs(self, folder: Path) -> list[Path]:
        out = []
        for entry in sorted(folder.iterdir()):
            if not entry.is_dir() or (folder == self.root and entry.name in _OWN_FOLDERS):
                continue
            if not is_valid_uid(entry.name):
                log.warning("ignoring %s: not a folder the store made", entry)
                continue
            out.append(entry)
        return out

    def _delete_rows(self, sop_instance_uids: list[str]) -> None:
        with self._lock:
            self._series_study.clear()  # series rows may go
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "DELETE FROM instances WHERE sop_instance_uid = ?",
                    [(u,) for u in sop_instance_uids],
                )
                db.execute(
                    "DELETE FROM series WHERE series_uid NOT IN"
                    " (SELECT DISTINCT series_uid FROM instances)"
                )
                db.execute(
                    "DELETE FROM studies WHERE study_uid NOT IN"
                    " (SELECT DISTINCT study_uid FROM series)"
                )
                db.execute(
                    "DELETE FROM patients WHERE patient_id NOT IN"
                    " (SELECT DISTINCT patient_id FROM studies)"
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        for uid in sop_instance_uids:
            log.warning("index row of %s removed: its file was missing", uid)

    def _index_existing(self, path: Path, attrs: InstanceAttributes) -> None:
        data = path.read_bytes()
        with self._lock:
            self._check_consistency_locked(attrs)
            self._insert_locked(
                attrs,
                path.relative_to(self.root),
                len(data),
                hashlib.sha256(data).hexdigest(),
                path.stat().st_mtime,
            )
        log.warning("indexed %s: its file had no index row", attrs.sop_instance_uid)

    def _quarantine(self, path: Path, reason: str) -> None:
        target_dir = self.root / QUARANTINE_NAME
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{int(time.time())}-{path.name}"
        shutil.move(path, target)
        fsync_dir(path.parent)
        fsync_dir(target_dir)
        log.error("moved %s to %s: %s", path.name, target_dir, reason)


@contextmanager
def open_store(
    root: Path, recover: bool | None = None, *, mode: StoreMode = "write"
) -> Iterator[DicomStore]:
    """Open the store at ``root`` and close it after.

    ``mode="write"`` creates a missing store, holds the writers' lock and recovers it first
    (unless ``recover=False``); ``mode="read"`` needs an existing store
    (:class:`StoreNotFoundError` otherwise) and never recovers. See :class:`DicomStore`.
    """
    store = DicomStore(root, mode=mode)
    try:
        if recover if recover is not None else mode == "write":
            store.recover()
        yield store
    finally:
        store.close()


__all__ = [
    "DicomStore",
    "InstanceAttributes",
    "InstanceRecord",
    "LockHolder",
    "RecoveryReport",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreResult",
    "StoreStatus",
    "StudySummary",
    "open_store",
    "read_attributes",
]
