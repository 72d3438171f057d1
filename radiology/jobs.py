"""The durable job queue: ``study_complete`` and ``necrosis`` jobs in the store's SQLite index.

When a study has received no new instance for ``study_quiet_seconds``, one ``study_complete``
job is queued for it (and, when the node runs the necrosis worker, one ``necrosis`` job if the
study holds VL Whole Slide Microscopy instances); downstream workers (radiomics, necrosis)
:meth:`~JobQueue.claim` jobs of their kind, and :meth:`~JobQueue.complete` or
:meth:`~JobQueue.fail` them. Each kind is queued, claimed and retried on its own: a study that
mixes slides and CT gets both jobs, and one failing leaves the other alone.

Delivery is **at least once**:

- A job is queued in the same SQLite database as the instances (WAL, ``synchronous=FULL``), so
  it survives a crash or restart of the node once queued; the node also checks at start-up, so
  studies that went quiet while it was down are queued then.
- A claim gives the worker a lease (``lease_seconds``). A worker that dies (or stalls past its
  lease without :meth:`~JobQueue.heartbeat`) loses the job: the next claim re-queues it and
  another worker gets it, with ``attempts`` counting every claim. A job may therefore run more
  than once, and a handler must be idempotent (write its results keyed by study UID,
  atomically). After ``max_attempts`` claims a job whose lease expires is ``failed``.
- A late :meth:`~JobQueue.complete` or :meth:`~JobQueue.fail` from a worker that lost its lease
  raises :class:`~osteomics.radiology.errors.JobLeaseLostError` and changes nothing.

One job per quiet period of a study: while a study's job is still ``queued``, more instances
only move that job's mark forward (no second job). An instance that arrives after the job was
claimed (``running``, ``done`` or ``failed``) starts a new quiet period, and a new job is queued
once the study is quiet again: downstream work always sees the whole study at least once.
Duplicates of instances already stored do not count as new.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` (or back to ``queued`` on a retried
failure or an expired lease). Timestamps are epoch seconds.

This module owns the ``jobs`` table: its schema and its migrations (:func:`ensure_jobs_schema`,
run whenever a queue is opened); :mod:`osteomics.radiology.store` owns the tables of instances.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from osteomics.radiology.errors import JobLeaseLostError, StoreError
from osteomics.radiology.store import open_index

log = logging.getLogger(__name__)

#: The job kind queued when a study has been quiet for ``study_quiet_seconds``.
STUDY_COMPLETE = "study_complete"
#: The job kind queued for a quiet study that holds VL Whole Slide Microscopy instances.
NECROSIS = "necrosis"
#: VL Whole Slide Microscopy Image Storage.
VL_WHOLE_SLIDE_MICROSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: Per job kind: the condition (SQL on the study row ``st``) a quiet study must meet to get
#: a job of that kind (every quiet study gets a ``study_complete`` job).
_KIND_CONDITIONS = {
    STUDY_COMPLETE: "",
    NECROSIS: (
        " AND EXISTS (SELECT 1 FROM instances i JOIN series s USING (series_uid)"
        f"   WHERE s.study_uid = st.study_uid AND i.sop_class_uid = '{VL_WHOLE_SLIDE_MICROSCOPY}')"
    ),
}

JobState = Literal["queued", "running", "done", "skipped", "failed"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "done", "skipped", "failed")

#: Seconds a claim lasts unless extended by :meth:`JobQueue.heartbeat`.
DEFAULT_LEASE_SECONDS = 600.0
#: Claims after which a job whose lease expires (or that failed) is given up as ``failed``.
DEFAULT_MAX_ATTEMPTS = 5

_JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,              -- e.g. 'study_complete'
    study_uid       TEXT,
    state           TEXT NOT NULL,              -- 'queued', 'running', 'done', 'skipped', 'failed'
    attempts        INTEGER NOT NULL DEFAULT 0,
    created         REAL NOT NULL,
    updated         REAL NOT NULL,
    error           TEXT,
    study_received  REAL,                       -- the study's last_received the job covers
    lease_until     REAL,                       -- a running job is re-queued after this
    claim_token     TEXT                        -- who holds a running job
);
"""

#: Columns added to ``jobs`` in index version 2 (added to a version-1 index when opened).
_JOBS_V2_COLUMNS = {"study_received": "REAL", "lease_until": "REAL", "claim_token": "TEXT"}

_JOBS_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, kind);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
"""


def ensure_jobs_schema(db: sqlite3.Connection) -> None:
    """Create the ``jobs`` table in an open index, or bring an older one up to date.

    Version 1 indexes (osteomics 0.1) lack the lease columns; they are added (``ALTER TABLE``,
    existing rows keep ``NULL``). Idempotent.
    """
    db.executescript(_JOBS_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for column, kind in _JOBS_V2_COLUMNS.items():
        if column not in have:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
    db.executescript(_JOBS_INDEXES)


_COLUMNS = (
    "id, kind, study_uid, state, attempts, created, updated, error, study_received,"
    " lease_until, claim_token"
)


@dataclass(frozen=True)
class Job:
    """One job as stored.

    Attributes
    ----------
    id:
        Row id (stable, increasing).
    kind:
        ``study_complete``, ``necrosis`` or ``radiomics_send`` (queued by
        :meth:`JobQueue.enqueue` after a done radiomics job when results are sent).
    study_uid:
        The study it is about.
    state:
        ``queued``, ``running``, ``done`` or ``failed``.
    attempts:
        How many times it was claimed.
    created, updated:
        Epoch seconds.
    error:
        The last failure or lease expiry, or ``None``.
    study_received:
        The study's ``last_received`` (epoch seconds) this job covers.
    lease_until:
        For a running job: when its lease expires (epoch seconds).
    claim_token:
        For a running job: the token of the claim that holds it.
    """

    id: int
    kind: str
    study_uid: str | None
    state: JobState
    attempts: int
    created: float
    updated: float
    error: str | None
    study_received: float | None
    lease_until: float | None
    claim_token: str | None


class JobQueue:
    """The job queue in the index of the store at ``root`` (its own SQLite connection).

    Several processes may use queues on the same root at once: every change is one
    ``BEGIN IMMEDIATE`` transaction, so two workers never claim the same job.

    Parameters
    ----------
    root:
        The storage root (``[node] storage``).
    lease_seconds:
        Default lease of a claim.
    max_attempts:
        Claims after which an expired or failed job becomes ``failed`` for good.

    Raises
    ------
    StoreError
        The index cannot be opened.
    """

    def __init__(
        self,
        root: Path,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.root = Path(root)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        try:
            self._db = open_index(self.root)
            try:
                ensure_jobs_schema(self._db)
            except BaseException:
                self._db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the job queue in {self.root} ({exc}); check the folder exists "
                "and is writable"
            ) from exc

    def close(self) -> None:
        """Close the connection (every change is committed already)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- producer side (the node) ----------------------------------------------------------

    def queue_quiet_studies(
        self,
        quiet_seconds: float,
        now: float | None = None,
        kinds: tuple[str, ...] = (STUDY_COMPLETE,),
    ) -> list[Job]:
        """Queue a job of each of ``kinds`` for every study quiet for ``quiet_seconds``.

        A study gets a job of a kind when its last new instance arrived at least
        ``quiet_seconds`` ago, it meets the kind's condition (``necrosis``: it holds a VL Whole
        Slide Microscopy instance) and no job of that kind covers that instance yet. A study
        whose job of a kind is still ``queued`` gets no second one (the queued one is moved
        forward). Idempotent: calling it again queues nothing new.

        Returns
        -------
        list of Job
            The jobs queued by this call.
        """
        now = time.time() if now is None else now
        unknown = [k for k in kinds if k not in _KIND_CONDITIONS]
        if unknown:
            raise ValueError(f"unknown job kind(s) {unknown}; known: {sorted(_KIND_CONDITIONS)}")
        queued: list[int] = []
        with self._transaction() as db:
            for kind in kinds:
                rows = db.execute(
                    "SELECT st.study_uid, st.last_received FROM studies st"
                    " WHERE st.last_received <= ? AND NOT EXISTS ("
                    "   SELECT 1 FROM jobs j WHERE j.kind = ? AND j.study_uid = st.study_uid"
                    f"   AND j.study_received >= st.last_received){_KIND_CONDITIONS[kind]}"
                    " ORDER BY st.last_received",
                    (now - quiet_seconds, kind),
                ).fetchall()
                for study_uid, last_received in rows:
                    moved = db.execute(
                        "UPDATE jobs SET study_received = ?, updated = ?"
                        " WHERE kind = ? AND study_uid = ? AND state = 'queued'",
                        (last_received, now, kind, study_uid),
                    ).rowcount
                    if moved:
                        continue
                    queued.append(self._insert_locked(db, kind, study_uid, now, last_received))
        jobs = [self._get(job_id) for job_id in queued]
        for job in jobs:
            log.info(
                "queued job %d: %s of study %s (quiet for %g s)",
                job.id, job.kind, job.study_uid, quiet_seconds,
            )  # fmt: skip
        return jobs

    def enqueue(self, kind: str, study_uid: str, now: float | None = None) -> Job:
        """Queue one job of ``kind`` for a study now (a follow-up of another job, e.g. sending
        a finished radiomics result), unless one of that kind is already ``queued`` for it.

        Returns
        -------
        Job
            The new job, or the one already queued.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE kind = ? AND study_uid = ? AND state = 'queued'",
                (kind, study_uid),
            ).fetchone()
            job_id = row[0] if row else self._insert_locked(db, kind, study_uid, now, None)
        job = self._get(job_id)
        log.info("queued job %d: %s of study %s", job.id, kind, study_uid)
        return job

    @staticmethod
    def _insert_locked(
        db: sqlite3.Connection, kind: str, study_uid: str, now: float, received: float | None
    ) -> int:
        cursor = db.execute(
            "INSERT INTO jobs(kind, study_uid, state, attempts, created, updated,"
            " study_received) VALUES (?, ?, 'queued', 0, ?, ?, ?)",
            (kind, study_uid, now, now, received),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    # -- worker side -----------------------------------------------------------------------

    def claim(
        self,
        kind: str = STUDY_COMPLETE,
        lease_seconds: float | None = None,
        now: float | None = None,
    ) -> Job | None:
        """Take the oldest queued job of ``kind`` (first re-queueing expired leases).

        Returns
        -------
        Job or None
            The job, now ``running`` with a fresh ``claim_token`` and ``lease_until``;
            ``None`` when nothing is queued.
        """
        now = time.time() if now is None else now
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        token = secrets.token_hex(16)
        with self._transaction() as db:
            self._expire_locked(db, now)
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' AND kind = ? ORDER BY id LIMIT 1",
                (kind,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated = ?,"
                " lease_until = ?, claim_token = ? WHERE id = ?",
                (now, now + lease, token, row[0]),
            )
        job = self._get(row[0])
        log.info("claimed job %d (%s, attempt %d)", job.id, job.kind, job.attempts)
        return job

    def heartbeat(
        self, job: Job, lease_seconds: float | None = None, now: float | None = None
    ) -> Job:
        """Extend the lease of a job this worker holds.

        Raises
        ------
        JobLeaseLostError
            The lease expired and the job was re-queued or claimed by someone else.
        """
        now = time.time() if now is None else now
        lease = self.lease_seconds if lease_seconds is None else lease_seconds
        with self._transaction() as db:
            self._update_held_locked(
                db, job, now, "lease_until = ?, updated = ?", (now + lease, now)
            )
        return self._get(job.id)

    def complete(self, job: Job, now: float | None = None) -> Job:
        """Mark a job this worker holds ``done``.

        Raises
        ------
        JobLeaseLostError
            The lease expired meanwhile; the job will run (or ran) again elsewhere.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            self._update_held_locked(
                db,
                job,
                now,
                "state = 'done', updated = ?, lease_until = NULL, claim_token = NULL, error = NULL",
                (now,),
            )
        log.info("job %d done", job.id)
        return self._get(job.id)

    def skip(self, job: Job, reason: str, now: float | None = None) -> Job:
        """End a job this worker holds as ``skipped``: nothing was asked of it (a study without
        contours for the radiomics job), which is neither a result nor a failure.

        Raises
        ------
        JobLeaseLostError
            The lease expired meanwhile.
        """
        now = time.time() if now is None else now
        with self._transaction() as db:
            self._update_held_locked(
                db,
                job,
                now,
                "state = 'skipped', updated = ?, lease_until = NULL, claim_token = NULL, error = ?",
                (now, reason),
            )
        log.info("job %d skipped", job.id)
        return self._get(job.id)

    def fail(self, job: Job, error: str, retry: bool = True, now: float | None = None) -> Job:
        """Record a failure of a job this worker holds.

        With ``retry`` and fewer than ``max_attempts`` claims so far the job goes back to
        ``queued``; otherwise it is ``failed`` for good. ``error`` is stored (keep patient
        identifiers out of it).

        Raises
        ------
        JobLeaseLostError
            The lease expired meanwhile.
        """
        now = time.time() if now is None else now
        state = "queued" if retry and job.attempts < self.max_attempts else "failed"
        with self._transaction() as db:
            self._update_held_locked(
                db,
                job,
                now,
                "state = ?, updated = ?, error = ?, lease_until = NULL, claim_token = NULL",
                (state, now, error),
            )
        log.warning("job %d failed (attempt %d), now %s: %s", job.id, job.attempts, state, error)
        return self._get(job.id)

    # -- reading ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The job with this id, or ``None``."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return _job(row) if row is not None else None

    def jobs(
        self,
        study_uid: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
    ) -> list[Job]:
        """Jobs in id order, optionally only those of one study, one state and/or one kind."""
        query = f"SELECT {_COLUMNS} FROM jobs WHERE 1 = 1"
        params: list[object] = []
        if kind is not None:
            query += " AND kind = ?"
            params.append(kind)
        if study_uid is not None:
            query += " AND study_uid = ?"
            params.append(study_uid)
        if state is not None:
            query += " AND state = ?"
            params.append(state)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Jobs by state (states without jobs are left out)."""
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    # -- internals -------------------------------------------------------------------------

    def _get(self, job_id: int) -> Job:
        job = self.get(job_id)
        assert job is not None, job_id
        return job

    def _expire_locked(self, db: sqlite3.Connection, now: float) -> None:
        expired = db.execute(
            "SELECT id, attempts FROM jobs WHERE state = 'running' AND lease_until < ?", (now,)
        ).fetchall()
        for job_id, attempts in expired:
            state = "queued" if attempts < self.max_attempts else "failed"
            db.execute(
                "UPDATE jobs SET state = ?, updated = ?, lease_until = NULL, claim_token = NULL,"
                " error = ? WHERE id = ?",
                (state, now, f"lease expired after attempt {attempts} (worker died?)", job_id),
            )
            log.warning("job %d: lease expired after attempt %d, now %s", job_id, attempts, state)

    def _update_held_locked(
        self,
        db: sqlite3.Connection,
        job: Job,
        now: float,
        assignments: str,
        params: tuple[object, ...],
    ) -> None:
        changed = db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND state = 'running'"
            " AND claim_token = ? AND lease_until >= ?",
            (*params, job.id, job.claim_token, now),
        ).rowcount
        if changed != 1:
            raise JobLeaseLostError(
                f"job {job.id} in {self.root} is no longer held by this worker (its lease "
                "expired and it was re-queued); its result may be written again by the next "
                "worker, so keep handlers idempotent, or claim with a longer lease"
            )


class QuietStudyScheduler:
    """A background thread that queues ``study_complete`` (and other ``kinds`` of) jobs for
    quiet studies.

    Parameters
    ----------
    queue:
        The queue to add to (used from this thread only while it runs).
    quiet_seconds:
        ``study_quiet_seconds``.
    interval_seconds:
        How often to look; by default a quarter of the quiet time, between 0.05 and 5 s.
    kinds:
        The job kinds to queue (see :meth:`JobQueue.queue_quiet_studies`).
    """

    def __init__(
        self,
        queue: JobQueue,
        quiet_seconds: float,
        interval_seconds: float | None = None,
        kinds: tuple[str, ...] = (STUDY_COMPLETE,),
    ) -> None:
        self.queue = queue
        self.quiet_seconds = quiet_seconds
        self.kinds = kinds
        self.interval_seconds = (
            interval_seconds
            if interval_seconds is not None
            else min(max(quiet_seconds / 4, 0.05), 5.0)
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quiet-study-scheduler", daemon=True)
        self._passed = threading.Condition()
        #: When the last finished look started (epoch seconds; 0 before the first).
        self._last_pass_started = 0.0

    def start(self) -> QuietStudyScheduler:
        self._thread.start()
        return self

    def wait_for_pass(self, since: float, timeout: float) -> bool:
        """Wait until a look that started at or after ``since`` (epoch seconds) has finished.

        What that look saw is then in the queue: a study quiet by ``since`` has its job. For
        tests and tools that must know the scheduler had its chance, without sleeping.

        Returns
        -------
        bool
            ``False`` when ``timeout`` seconds passed first.
        """
        with self._passed:
            return self._passed.wait_for(lambda: self._last_pass_started >= since, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            started = time.time()
            try:
                self.queue.queue_quiet_studies(self.quiet_seconds, now=started, kinds=self.kinds)
            except (sqlite3.Error, OSError) as exc:  # e.g. a busy or full disk: try again
                log.error("cannot queue jobs in %s: %s", self.queue.root, exc)
                continue
            with self._passed:
                self._last_pass_started = started
                self._passed.notify_all()


def _job(row: tuple[object, ...]) -> Job:
    return Job(*row)  # type: ignore[arg-type]


__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "JOB_STATES",
    "NECROSIS",
    "STUDY_COMPLETE",
    "VL_WHOLE_SLIDE_MICROSCOPY",
    "Job",
    "JobQueue",
    "JobState",
    "QuietStudyScheduler",
    "ensure_jobs_schema",
]
