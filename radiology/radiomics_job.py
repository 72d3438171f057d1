"""The node's radiomics worker: IBSI features of every completed study.

The worker claims ``study_complete`` jobs from the store's :class:`~osteomics.radiology.jobs.
JobQueue`, reads the study from the store (``<storage>/<StudyInstanceUID>/``), and for every image
series of a configured modality and every RTSTRUCT ROI / SEG segment whose name matches
``[radiomics] roi_pattern`` computes the IBSI features with that modality's configuration. It
writes one long table per study, ``<storage>/radiomics/<StudyInstanceUID>.parquet`` (columns of
``osteomics radiomics``), and its provenance ``<StudyInstanceUID>.provenance.json`` next to it,
each atomically (temporary file, fsync, rename), then completes the job.

Idempotent, as the at-least-once queue requires: a job that runs again overwrites the same two
files with the results of the whole study. A study without a matching series and contour is
completed without output (logged). Errors in the data (:class:`RadiomicsError`: geometry, ROI
outside the image...) fail the job for good; other errors (I/O) are retried by the queue.

Logs name studies by their UID, never by patient.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osteomics.radiology.config import RadiomicsSettings
from osteomics.radiology.errors import JobLeaseLostError
from osteomics.radiology.jobs import STUDY_COMPLETE, Job, JobQueue
from osteomics.radiology.uids import validate_uid

log = logging.getLogger(__name__)

#: Columns of the feature table (as ``osteomics radiomics`` writes them).
COLUMNS = ("patient", "study", "series", "modality", "roi", "family", "feature", "ibsi_id", "value")
#: Folder under the storage root that holds the tables.
RADIOMICS_FOLDER = "radiomics"


@dataclass(frozen=True)
class StudyRadiomics:
    """What :func:`run_study` wrote.

    Attributes
    ----------
    study_uid:
        The study.
    table, provenance:
        The Parquet table and its provenance JSON; ``None`` when nothing matched.
    runs:
        ``(modality, roi, config name, number of features)`` per computed ROI.
    """

    study_uid: str
    table: Path | None
    provenance: Path | None
    runs: tuple[tuple[str, str, str, int], ...]


def output_paths(storage: Path, study_uid: str) -> tuple[Path, Path]:
    """``<storage>/radiomics/<StudyUID>.parquet`` and ``.provenance.json`` (UID validated)."""
    uid = validate_uid(study_uid)
    folder = Path(storage) / RADIOMICS_FOLDER
    return folder / f"{uid}.parquet", folder / f"{uid}.provenance.json"


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(tmp)`` to a temporary file next to ``path``, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def run_study(
    storage: Path,
    study_uid: str,
    settings: RadiomicsSettings,
    heartbeat: Callable[[], None] | None = None,
) -> StudyRadiomics:
    """Compute the configured radiomics of one stored study and write its table atomically.

    Parameters
    ----------
    storage
        The store's root (``[node] storage``).
    study_uid
        Study Instance UID.
    settings
        ``[radiomics]`` settings: modalities, ROI pattern, configuration per modality.
    heartbeat
        Called between ROIs (the worker extends its job lease there).

    Returns
    -------
    StudyRadiomics
        The files written (``None`` when no series and matching ROI were found).

    Raises
    ------
    RadiomicsError
        The study's data cannot be read or computed (geometry, contour outside the image...).
    InvalidUIDError
        ``study_uid`` is not a valid UID.
    """
    import pandas as pd

    from osteomics.radiology.radiomics import extract_features, load_config
    from osteomics.radiology.radiomics.dicom import (
        read_dicom_study,
        read_study_mask,
        rtstruct_roi_names,
        seg_segment_labels,
    )
    from osteomics.radiology.radiomics.errors import ImageReadError
    from osteomics.radiology.radiomics.provenance import run_provenance

    folder = Path(storage) / validate_uid(study_uid)
    table_path, prov_path = output_paths(storage, study_uid)
    pattern = re.compile(settings.roi_pattern)
    rows: list[tuple[Any, ...]] = []
    runs: list[tuple[str, str, str, int]] = []
    provenance: list[dict[str, Any]] = []
    for modality in settings.modalities:
        try:
            study = read_dicom_study(folder, modality=modality)
        except ImageReadError as exc:
            log.info("study %s: no %s series with a contour (%s)", study_uid, modality, exc)
            continue
        names = [n for p in study.rtstructs for n in rtstruct_roi_names(p)]
        names += [n for p in study.segs for n in seg_segment_labels(p)]
        rois = [n for n in dict.fromkeys(names) if pattern.fullmatch(n)]
        if not rois:
            log.info(
                "study %s: no %s ROI matches %r (%d ROIs)",
                study_uid, modality, settings.roi_pattern, len(names),
            )  # fmt: skip
            continue
        config = load_config(settings.configs[modality])
        info = study.image.info
        for roi in rois:
            t0 = time.perf_counter()
            mask = read_study_mask(study, roi)
            values = extract_features(study.image.volume, mask, config)
            seconds = time.perf_counter() - t0
            identity = (info.patient, info.study, info.series, info.modality, roi)
            rows.extend((*identity, v.family, v.feature, v.ibsi_id, v.value) for v in values)
            runs.append((modality, roi, config.name, len(values)))
            prov = run_provenance(
                config, {"study": folder}, n_features=len(values), seconds=seconds
            )
            prov.update({"series": info.series, "modality": info.modality, "roi": roi})
            provenance.append(prov)
            log.info(
                "study %s: %s ROI %r, %d features (%s) in %.1f s",
                study_uid, modality, roi, len(values), config.name, seconds,
            )  # fmt: skip
            if heartbeat is not None:
                heartbeat()
    if not rows:
        log.info("study %s: nothing to compute (no matching series and ROI)", study_uid)
        return StudyRadiomics(study_uid, None, None, ())
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    _atomic_write(table_path, lambda p: table.to_parquet(p, index=False))
    document = {"study": study_uid, "output": str(table_path), "runs": provenance}
    _atomic_write(prov_path, lambda p: p.write_text(json.dumps(document, indent=2) + "\n"))
    return StudyRadiomics(study_uid, table_path, prov_path, tuple(runs))


def process_next(
    queue: JobQueue, storage: Path, settings: RadiomicsSettings
) -> tuple[Job, StudyRadiomics | None] | None:
    """Claim one ``study_complete`` job, run it, and complete or fail it.

    Returns
    -------
    (Job, StudyRadiomics or None) or None
        The job as it ended (``done``, ``queued`` again or ``failed``) and the result (None on
        failure); None when no job was queued.
    """
    from osteomics.radiology.radiomics.errors import RadiomicsError

    job = queue.claim(STUDY_COMPLETE)
    if job is None:
        return None
    if job.study_uid is None:
        return queue.fail(job, "radiomics: the job names no study", retry=False), None
    study_uid = job.study_uid
    held = [job]

    def heartbeat() -> None:
        held[0] = queue.heartbeat(held[0])

    try:
        result = run_study(storage, study_uid, settings, heartbeat=heartbeat)
    except JobLeaseLostError:
        log.warning("job %d: lease lost; another worker will run it", job.id)
        return job, None
    except RadiomicsError as exc:  # the data will not change: do not retry
        return queue.fail(held[0], f"radiomics: {exc}", retry=False), None
    except Exception as exc:  # I/O and the unexpected: the queue retries up to max_attempts
        log.exception("job %d: radiomics failed", job.id)
        return queue.fail(held[0], f"radiomics: {type(exc).__name__}: {exc}"), None
    try:
        return queue.complete(held[0]), result
    except JobLeaseLostError:
        log.warning("job %d: lease lost before completion; it will run again", job.id)
        return job, result


class RadiomicsWorker:
    """A background thread that processes ``study_complete`` jobs with :func:`process_next`.

    Parameters
    ----------
    storage
        The store's root.
    settings
        ``[radiomics]`` settings.
    """

    def __init__(self, storage: Path, settings: RadiomicsSettings) -> None:
        self.storage = Path(storage)
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="radiomics-worker", daemon=True)

    def start(self) -> RadiomicsWorker:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop after its current study and wait at most ``timeout`` s."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        with JobQueue(self.storage) as queue:
            while not self._stop.is_set():
                try:
                    done = process_next(queue, self.storage, self.settings)
                except Exception:  # keep the worker alive (e.g. a locked or full index)
                    log.exception("radiomics worker: cannot process the queue")
                    done = None
                if done is None:
                    self._stop.wait(self.settings.poll_seconds)
