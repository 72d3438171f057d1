"""The node's study-job workers beyond radiomics: ``necrosis`` (DICOM whole-slide images of a
completed study scored by the pathology room) and ``radiomics_send`` (a finished radiomics
result sent as DICOM SR), each run by a :class:`StudyJobWorker`.

The radiology room never imports the pathology room (nor the plugins): what a job *does* is a
handler supplied by the command layer (``osteomics node serve`` builds it, as it wires the
``[fusion]`` scoring). This module claims the job, works out which part of the study is the
job's (:func:`study_parts`: the series of VL Whole Slide Microscopy instances for
``necrosis``), calls the handler with a lease heartbeat, sends the DICOM objects it wrote to
``[results] send_to`` (:func:`osteomics.radiology.pacs.send_files`), records what it did in
``node-job.json`` next to the results, and completes, skips or fails the job.

Outcomes:

- a study without VL Whole Slide Microscopy instances: the ``necrosis`` job is ``skipped``
  (the scheduler queues none for such a study, so this only happens when a study changed);
- a handler error that is the data's (an :class:`~osteomics.OsteomicsError` such as a slide
  with no pyramid level near the model's µm/px, or without pixel spacing): ``failed`` for good
  with the message (the data will not change);
- a send that fails (a remote that refuses the SEG SOP class, or cannot be reached): the
  results on disk are kept and the job is failed with the reason, retried by the queue's
  rules (``max_attempts``) since a remote's configuration may be fixed meanwhile;
- anything else (I/O): retried by the queue.

A study that mixes slides and radiology: the ``necrosis`` job takes the slide series only and
says which other series it left (to the radiomics job) in ``node-job.json`` and its log line.
Logs name studies by UID, never patients.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osteomics import OsteomicsError
from osteomics.core.files import write_json_atomic
from osteomics.radiology.errors import JobLeaseLostError, RadiologyError
from osteomics.radiology.jobs import NECROSIS, VL_WHOLE_SLIDE_MICROSCOPY, Job, JobQueue
from osteomics.radiology.pacs_types import SendFailedError, StoreOutcome
from osteomics.radiology.store import DicomStore, open_index
from osteomics.radiology.uids import validate_uid

log = logging.getLogger(__name__)

#: The result kind (``<storage>/results/necrosis/<StudyUID>/``) of a necrosis job.
NECROSIS_RESULT_KIND = "necrosis"
#: The job kind that sends a finished radiomics result as DICOM SR to ``[results] send_to``.
RADIOMICS_SEND = "radiomics_send"
#: What a job records next to its results.
JOB_RECORD_NAME = "node-job.json"


class NothingForJobError(RadiologyError, ValueError):
    """A study holds nothing a job of this kind works on (its job ends ``skipped``)."""


@dataclass(frozen=True)
class SeriesPart:
    """One stored series of a study: its modality, SOP classes and instance count."""

    series_uid: str
    modality: str | None
    sop_classes: tuple[str, ...]
    instances: int
    folder: Path

    @property
    def is_wsi(self) -> bool:
        """Holds VL Whole Slide Microscopy instances."""
        return VL_WHOLE_SLIDE_MICROSCOPY in self.sop_classes


@dataclass(frozen=True)
class StudyParts:
    """The series of one stored study, split into slides and the rest."""

    study_uid: str
    series: tuple[SeriesPart, ...]

    @property
    def wsi_series(self) -> tuple[SeriesPart, ...]:
        return tuple(s for s in self.series if s.is_wsi)

    @property
    def other_series(self) -> tuple[SeriesPart, ...]:
        return tuple(s for s in self.series if not s.is_wsi)

    def others_note(self) -> str:
        """``""``, or one line saying which non-slide series the necrosis job left alone."""
        others = self.other_series
        if not others:
            return ""
        by_modality: dict[str, list[int]] = {}
        for s in others:
            by_modality.setdefault(s.modality or "?", []).append(s.instances)
        parts = ", ".join(
            f"{m} ({len(counts)} series, {sum(counts)} instances)"
            for m, counts in sorted(by_modality.items())
        )
        return (
            f"the study also holds {parts}: not slides, left to the radiomics job "
            "(study_complete); this job scored the slide series only"
        )


def study_parts(store: DicomStore, study_uid: str) -> StudyParts:
    """The series of a stored study from the store's index (never from paths in the data).

    Raises
    ------
    InvalidUIDError
        ``study_uid`` is not a valid UID.
    """
    study_uid = validate_uid(study_uid, "Study Instance UID")
    db = open_index(store.root, create=False)
    try:
        rows = db.execute(
            "SELECT s.series_uid, s.modality, GROUP_CONCAT(DISTINCT i.sop_class_uid),"
            " COUNT(i.sop_instance_uid) FROM series s JOIN instances i USING (series_uid)"
            " WHERE s.study_uid = ? GROUP BY s.series_uid ORDER BY s.series_number, s.series_uid",
            (study_uid,),
        ).fetchall()
    finally:
        db.close()
    folder = store.study_folder(study_uid)
    series = tuple(
        SeriesPart(
            series_uid=uid,
            modality=modality,
            sop_classes=tuple(sorted((classes or "").split(","))),
            instances=int(count),
            folder=folder / validate_uid(uid, "Series Instance UID"),
        )
        for uid, modality, classes, count in rows
    )
    return StudyParts(study_uid, series)


@dataclass(frozen=True)
class StudyWork:
    """What a handler is given: the study, its parts, where to write, and a heartbeat to call
    now and then (it extends the job's lease)."""

    study_uid: str
    parts: StudyParts
    out_dir: Path
    heartbeat: Callable[[], None]


@dataclass(frozen=True)
class StudyJobResult:
    """What a handler did.

    Attributes
    ----------
    study_uid:
        The study.
    out_dir:
        The folder of its results.
    dicom_files:
        The DICOM objects it wrote (SR, SEG) to send to ``[results] send_to``.
    summary:
        One line for the log and ``node-job.json`` (no patient data).
    """

    study_uid: str
    out_dir: Path
    dicom_files: tuple[Path, ...] = ()
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)


#: A job's work, supplied by the command layer.
StudyHandler = Callable[[StudyWork], StudyJobResult]
#: Sends files to ``[results] send_to`` (``send_files`` bound to the node's config and remote).
Sender = Callable[[Sequence[Path]], StoreOutcome]


def _parts_for(kind: str, store: DicomStore, study_uid: str) -> StudyParts:
    parts = study_parts(store, study_uid)
    if kind == NECROSIS and not parts.wsi_series:
        raise NothingForJobError(
            "necrosis: no VL Whole Slide Microscopy instance in the study"
            + (f" ({parts.others_note()})" if parts.other_series else "")
        )
    return parts


def process_next(
    queue: JobQueue,
    store: DicomStore,
    kind: str,
    handler: StudyHandler,
    send: Sender | None = None,
    send_to: str | None = None,
) -> tuple[Job, StudyJobResult | None] | None:
    """Claim one job of ``kind``, run ``handler`` on its study, send its DICOM objects, and
    complete, skip or fail the job (see the module docstring).

    Parameters
    ----------
    queue, store:
        The node's job queue and store.
    kind:
        ``necrosis`` or ``radiomics_send``.
    handler:
        The job's work (from the command layer).
    send, send_to:
        Sends the handler's DICOM objects, and the remote's name (for messages); ``None``:
        nothing is sent.

    Returns
    -------
    (Job, StudyJobResult or None) or None
        The job as it ended and the handler's result (None when it did not finish); None when
        no job of ``kind`` was queued.
    """
    job = queue.claim(kind)
    if job is None:
        return None
    if job.study_uid is None:
        return queue.fail(job, f"{kind}: the job names no study", retry=False), None
    study_uid = job.study_uid
    held = [job]

    def heartbeat() -> None:
        held[0] = queue.heartbeat(held[0])

    started = time.perf_counter()
    try:
        parts = _parts_for(kind, store, study_uid)
    except NothingForJobError as exc:
        return queue.skip(job, str(exc)), None
    out_dir = store.result_folder(
        NECROSIS_RESULT_KIND if kind == NECROSIS else "radiomics", study_uid
    )
    record: dict[str, Any] = {
        "job": job.id,
        "kind": kind,
        "attempt": job.attempts,
        "study": study_uid,
        "slide_series": [s.series_uid for s in parts.wsi_series],
        "other_series": [
            {"series": s.series_uid, "modality": s.modality, "instances": s.instances}
            for s in parts.other_series
        ],
        "note": parts.others_note() if kind == NECROSIS else "",
    }
    try:
        result = handler(StudyWork(study_uid, parts, out_dir, heartbeat))
    except JobLeaseLostError:
        log.warning("job %d: lease lost; another worker will run it", job.id)
        return job, None
    except (ConnectionError, OSError) as exc:  # I/O, a busy cluster: the queue retries
        log.exception("job %d: %s of study %s failed", job.id, kind, study_uid)
        return queue.fail(held[0], f"{kind}: {type(exc).__name__}: {exc}"), None
    except OsteomicsError as exc:  # the data's: it will not change, do not retry
        log.error("job %d: %s of study %s: %s", job.id, kind, study_uid, exc)
        return queue.fail(held[0], f"{kind}: {exc}", retry=False), None
    except Exception as exc:  # the unexpected: the queue retries up to max_attempts
        log.exception("job %d: %s of study %s failed", job.id, kind, study_uid)
        return queue.fail(held[0], f"{kind}: {type(exc).__name__}: {exc}"), None
    record.update(result.details)
    record["summary"] = result.summary
    record["dicom"] = [str(p) for p in result.dicom_files]
    record["seconds"] = round(time.perf_counter() - started, 3)
    log.info(
        "job %d: %s of study %s: %s%s",
        job.id, kind, study_uid, result.summary,
        f"; {record['note']}" if record["note"] else "",
    )  # fmt: skip
    error: str | None = None
    if send is not None and result.dicom_files:
        try:
            heartbeat()
            outcome = send(result.dicom_files)
            record["sent"] = outcome.to_dict()
            if not outcome.ok:
                error = (
                    f"{kind}: results kept in {result.out_dir}; sending to {send_to} failed: "
                    f"{outcome.reason()}"
                )
        except (OsteomicsError, ConnectionError, OSError) as exc:
            record["sent"] = {"remote": send_to, "error": str(exc)}
            error = f"{kind}: results kept in {result.out_dir}; sending to {send_to} failed: {exc}"
        except JobLeaseLostError:
            log.warning("job %d: lease lost while sending; it will run again", job.id)
            return job, result
    record["error"] = error
    try:
        write_json_atomic(result.out_dir / JOB_RECORD_NAME, record)
    except OSError as exc:
        log.error("job %d: cannot write %s: %s", job.id, JOB_RECORD_NAME, exc)
    try:
        if error is not None:
            return queue.fail(held[0], error), result
        return queue.complete(held[0]), result
    except JobLeaseLostError:
        log.warning("job %d: lease lost before completion; it will run again", job.id)
        return job, result


class StudyJobWorker:
    """A background thread that processes jobs of one kind with :func:`process_next`.

    Parameters
    ----------
    store:
        The node's store (its paths; the job queue is opened in its root).
    kind:
        ``necrosis`` or ``radiomics_send``.
    handler:
        The job's work.
    poll_seconds:
        How often to look when the queue is empty.
    send, send_to:
        Where the handler's DICOM objects go (``[results] send_to``), or None.
    """

    def __init__(
        self,
        store: DicomStore,
        kind: str,
        handler: StudyHandler,
        poll_seconds: float = 5.0,
        send: Sender | None = None,
        send_to: str | None = None,
    ) -> None:
        self.store = store
        self.kind = kind
        self.handler = handler
        self.poll_seconds = poll_seconds
        self.send = send
        self.send_to = send_to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{kind}-worker", daemon=True)

    def start(self) -> StudyJobWorker:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the thread to stop after its current study and wait at most ``timeout`` s."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        with JobQueue(self.store.root) as queue:
            while not self._stop.is_set():
                try:
                    done = process_next(
                        queue, self.store, self.kind, self.handler, self.send, self.send_to
                    )
                except Exception:  # keep the worker alive (e.g. a locked or full index)
                    log.exception("%s worker: cannot process the queue", self.kind)
                    done = None
                if done is None:
                    self._stop.wait(self.poll_seconds)


def record_of(out_dir: Path) -> dict[str, Any] | None:
    """The ``node-job.json`` of a result folder, or None."""
    import json

    path = out_dir / JOB_RECORD_NAME
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


__all__ = [
    "JOB_RECORD_NAME",
    "NECROSIS_RESULT_KIND",
    "RADIOMICS_SEND",
    "NothingForJobError",
    "SendFailedError",
    "SeriesPart",
    "StudyHandler",
    "StudyJobResult",
    "StudyJobWorker",
    "StudyParts",
    "StudyWork",
    "process_next",
    "record_of",
    "study_parts",
]
