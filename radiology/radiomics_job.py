"""The node's radiomics worker: IBSI features of every completed study.

The worker claims ``study_complete`` jobs from the store's :class:`~osteomics.radiology.jobs.
JobQueue` and reads the study from the store (:meth:`DicomStore.study_folder`). For every
configured modality it reads each image series that an RTSTRUCT or SEG was drawn on (a study may
hold several series of one modality, e.g. MR T1 and STIR: each contoured one is computed; the
series are picked by the structure files' references, see
:func:`~osteomics.radiology.radiomics.dicom.read_dicom_studies`), and for every ROI / segment
whose name matches ``[radiomics] roi_pattern`` computes the IBSI features with that modality's
configuration. It writes one long table per study (columns of ``osteomics radiomics``; the
``series`` column tells the series apart) and its provenance, in the store's result folder
``<storage>/results/radiomics/<StudyInstanceUID>/`` (:meth:`DicomStore.result_folder`, outside
the DICOM tree): ``features.parquet`` and ``features.provenance.json``, each atomically
(:func:`osteomics.core.files.write_atomic`), then completes the job.

Idempotent, as the at-least-once queue requires: a job that runs again overwrites the same two
files with the results of the whole study.

A study with no RTSTRUCT or SEG at all asks for nothing: its job ends ``skipped`` with that
reason. Otherwise a job never ends ``done`` without output: a study whose contours reference
no series of a configured modality, or have no ROI matching the pattern, fails the job (for
good: the data will not change) with the reason per modality in the job's ``error``
(``osteomics node status`` counts it as failed). Errors in the data (:class:`RadiomicsError`:
geometry, ROI outside the image...) fail the job for good too; other errors (I/O) are retried
by the queue.

Logs name studies by their UID, never by patient.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osteomics.core.files import write_atomic, write_json_atomic
from osteomics.radiology.config import RadiomicsSettings
from osteomics.radiology.errors import JobLeaseLostError
from osteomics.radiology.jobs import STUDY_COMPLETE, Job, JobQueue
from osteomics.radiology.store import DicomStore

log = logging.getLogger(__name__)

#: Columns of the feature table (as ``osteomics radiomics`` writes them).
COLUMNS = ("patient", "study", "series", "modality", "roi", "family", "feature", "ibsi_id", "value")
#: The result kind under the store's ``results/`` folder.
RESULT_KIND = "radiomics"
TABLE_NAME = "features.parquet"
PROVENANCE_NAME = "features.provenance.json"


@dataclass(frozen=True)
class StudyRadiomics:
    """What :func:`run_study` wrote.

    Attributes
    ----------
    study_uid:
        The study.
    table, provenance:
        The Parquet table and its provenance JSON.
    runs:
        ``(modality, series UID, roi, config name, number of features)`` per computed ROI.
    """

    study_uid: str
    table: Path
    provenance: Path
    runs: tuple[tuple[str, str, str, str, int], ...]


def output_paths(store: DicomStore, study_uid: str) -> tuple[Path, Path]:
    """The table and provenance files of a study in the store's result folder."""
    folder = store.result_folder(RESULT_KIND, study_uid)
    return folder / TABLE_NAME, folder / PROVENANCE_NAME


def run_study(
    store: DicomStore,
    study_uid: str,
    settings: RadiomicsSettings,
    heartbeat: Callable[[], None] | None = None,
) -> StudyRadiomics:
    """Compute the configured radiomics of one stored study and write its table atomically.

    Parameters
    ----------
    store
        The study store (only its paths are used: the study folder and the result folder).
    study_uid
        Study Instance UID.
    settings
        ``[radiomics]`` settings: modalities, ROI pattern, configuration per modality.
    heartbeat
        Called between ROIs (the worker extends its job lease there).

    Returns
    -------
    StudyRadiomics
        The files written.

    Raises
    ------
    NothingToExtractError
        No contoured series of a configured modality with an ROI matching the pattern (the
        message gives the reason per modality); nothing is written.
    RadiomicsError
        The study's data cannot be read or computed (geometry, contour outside the image...).
    InvalidUIDError
        ``study_uid`` is not a valid UID.
    """
    import pandas as pd

    from osteomics.radiology.radiomics import extract_features, load_config
    from osteomics.radiology.radiomics.dicom import (
        read_dicom_studies,
        read_study_mask,
        rtstruct_roi_names,
        seg_segment_labels,
    )
    from osteomics.radiology.radiomics.errors import ImageReadError, NothingToExtractError
    from osteomics.radiology.radiomics.provenance import run_provenance

    folder = store.study_folder(study_uid)
    table_path, prov_path = output_paths(store, study_uid)
    pattern = re.compile(settings.roi_pattern)
    rows: list[tuple[Any, ...]] = []
    runs: list[tuple[str, str, str, str, int]] = []
    provenance: list[dict[str, Any]] = []
    reasons: list[str] = []
    for modality in settings.modalities:
        try:
            studies = read_dicom_studies(folder, modality=modality)
        except ImageReadError as exc:
            reasons.append(f"{modality}: {str(exc).removeprefix(f'{folder}: ')}")
            log.info("study %s: no contoured %s series (%s)", study_uid, modality, exc)
            continue
        config = load_config(settings.configs[modality])
        for study in studies:
            info = study.image.info
            names = [n for p in study.rtstructs for n in rtstruct_roi_names(p)]
            names += [n for p in study.segs for n in seg_segment_labels(p)]
            rois = [n for n in dict.fromkeys(names) if pattern.fullmatch(n)]
            if not rois:
                reasons.append(
                    f"{modality} series …{info.series[-12:]}: no ROI matches "
                    f"{settings.roi_pattern!r} ({len(names)} ROIs)"
                )
                log.info(
                    "study %s: %s series %s: no ROI matches %r (%d ROIs)",
                    study_uid, modality, info.series, settings.roi_pattern, len(names),
                )  # fmt: skip
                continue
            for roi in rois:
                t0 = time.perf_counter()
                mask = read_study_mask(study, roi)
                values = extract_features(study.image.volume, mask, config)
                seconds = time.perf_counter() - t0
                identity = (info.patient, info.study, info.series, info.modality, roi)
                rows.extend((*identity, v.family, v.feature, v.ibsi_id, v.value) for v in values)
                runs.append((modality, info.series, roi, config.name, len(values)))
                prov = run_provenance(
                    config, {"study": folder}, n_features=len(values), seconds=seconds
                )
                prov.update({"series": info.series, "modality": info.modality, "roi": roi})
                provenance.append(prov)
                log.info(
                    "study %s: %s series %s ROI %r, %d features (%s) in %.1f s",
                    study_uid, modality, info.series, roi, len(values), config.name, seconds,
                )  # fmt: skip
                if heartbeat is not None:
                    heartbeat()
    if not rows:
        raise NothingToExtractError(
            f"study {study_uid}: nothing to extract for modalities "
            f"{', '.join(settings.modalities)}: {'; '.join(reasons) or 'no series'}"
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_atomic(table_path, lambda p: table.to_parquet(p, index=False))
    document = {"study": study_uid, "output": str(table_path), "runs": provenance}
    write_json_atomic(prov_path, document)
    return StudyRadiomics(study_uid, table_path, prov_path, tuple(runs))


def process_next(
    queue: JobQueue, store: DicomStore, settings: RadiomicsSettings
) -> tuple[Job, StudyRadiomics | None] | None:
    """Claim one ``study_complete`` job, run it, and complete or fail it.

    Returns
    -------
    (Job, StudyRadiomics or None) or None
        The job as it ended (``done``, ``skipped``, ``queued`` again or ``failed``) and the
        result (None unless done); None when no job was queued.
    """
    from osteomics.radiology.radiomics.errors import RadiomicsError

    job = queue.claim(STUDY_COMPLETE)
    if job is None:
        return None
    if job.study_uid is None:
        return queue.fail(job, "radiomics: the job names no study", retry=False), None
    study_uid = job.study_uid
    held = [job]
    summary = store.study(study_uid)
    contours = {"RTSTRUCT", "SEG"} & set(summary.modalities if summary else ())
    if not contours:  # nothing was asked of this study: not a result, not a failure
        return queue.skip(job, "radiomics: no RTSTRUCT or SEG in the study"), None

    def heartbeat() -> None:
        held[0] = queue.heartbeat(held[0])

    try:
        result = run_study(store, study_uid, settings, heartbeat=heartbeat)
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
    store
        The node's store (its paths; the job queue is opened in its root).
    settings
        ``[radiomics]`` settings.
    on_result
        Called with each study's result after its job is done (the node's ``[fusion]``
        scoring); an error there is logged and leaves the job done.
    """

    def __init__(
        self,
        store: DicomStore,
        settings: RadiomicsSettings,
        on_result: Callable[[StudyRadiomics], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_result = on_result
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
        with JobQueue(self.store.root) as queue:
            while not self._stop.is_set():
                try:
                    done = process_next(queue, self.store, self.settings)
                except Exception:  # keep the worker alive (e.g. a locked or full index)
                    log.exception("radiomics worker: cannot process the queue")
                    done = None
                if done is None:
                    self._stop.wait(self.settings.poll_seconds)
                    continue
                job, result = done
                if result is not None and job.state == "done" and self.on_result is not None:
                    try:
                        self.on_result(result)
                    except Exception:  # the radiomics are stored; scoring is a follow-up
                        log.exception("job %d: scoring study %s failed", job.id, job.study_uid)
