"""Necrosis of a stored DICOM study: the pathology room's scoring and the DICOM export, wired
to the node's store (``osteomics necrosis store:<StudyUID>``) and to its ``necrosis`` jobs
(:func:`necrosis_handler`, given to the node by ``osteomics node serve``).

The radiology room does not import the pathology room or the plugins, so this glue lives in
the command layer. The study is read from the store's index (UIDs validated, never taken from
paths in the data): its VL Whole Slide Microscopy series are the slides (one per series, as
:func:`osteomics.wsi.sources.find_slides` groups them) and the study is the case (named by its
Study Instance UID: no patient name or ID in file names or logs). Other series of the study
(CT, RTSTRUCT...) are left to the radiomics job, and the result says so.

Before any tile is read every slide is checked against the model: it must record its pixel
spacing (or be given an override) and have a pyramid level at least as fine as the model's
µm/px; otherwise the study is refused with the levels' µm/px and the model's.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from osteomics import OsteomicsError
from osteomics.core.errors import InvalidOptionError
from osteomics.radiology.config import NodeConfig
from osteomics.radiology.necrosis_job import (
    StudyHandler,
    StudyJobResult,
    StudyParts,
    StudyWork,
    study_parts,
)
from osteomics.radiology.store import DicomStore
from osteomics.radiology.uids import validate_uid
from osteomics.wsi.errors import MissingMppError, ResolutionError
from osteomics.wsi.results import NecrosisParameters, NecrosisRun

log = logging.getLogger(__name__)

#: The prefix of a study of the node's store on the ``necrosis`` command line.
STORE_PREFIX = "store:"
#: The cases file written into the run folder (each slide series -> the study).
CASES_NAME = "study-cases.csv"
#: The run folder's sub-folder of DICOM objects (SR, SEG).
DICOM_DIR = "dicom"
#: Relative tolerance on "a level at least as fine as the model's µm/px" (as the tiling uses).
_MPP_TOLERANCE = 0.05


class StudyScoringError(OsteomicsError, ValueError):
    """A study whose slides cannot be scored (each slide's reason in the message)."""


def is_store_path(path: Path | str) -> bool:
    """``store:<StudyUID>`` rather than a file or folder."""
    return str(path).startswith(STORE_PREFIX)


def store_study_uid(path: Path | str) -> str:
    """The validated Study Instance UID of a ``store:<StudyUID>`` argument.

    Raises
    ------
    InvalidUIDError
        What follows ``store:`` is not a valid UID.
    """
    return validate_uid(str(path)[len(STORE_PREFIX) :], f"{path}")


def stored_study(config: NodeConfig, study_uid: str) -> StudyParts:
    """The parts of a study of the node's store (opened read-only: a serving node may write).

    Raises
    ------
    StoreNotFoundError
        No store at ``[node] storage``.
    StudyScoringError
        The store does not hold the study, or it has no slide.
    """
    with DicomStore(config.storage, mode="read") as store:
        if store.study(study_uid) is None:
            raise StudyScoringError(
                f"the store at {config.storage} holds no study {study_uid}; list its studies "
                f"with `osteomics node ls --config {config.config_path or 'node.toml'}`"
            )
        parts = study_parts(store, study_uid)
    if not parts.wsi_series:
        raise StudyScoringError(
            f"study {study_uid} holds no VL Whole Slide Microscopy instance "
            f"({', '.join(sorted({s.modality or '?' for s in parts.series}))} only): "
            "nothing for necrosis to score"
        )
    return parts


def check_slides(
    folders: Sequence[Path], params: NecrosisParameters, model_mpp: float, model_name: str
) -> None:
    """Refuse slides the model cannot score, before any tile is read.

    Raises
    ------
    MissingMppError
        A slide records no pixel spacing and no override was given (names the file and
        ``--mpp-override``).
    ResolutionError
        A slide has no pyramid level at least as fine as the model's µm/px (names the levels'
        µm/px and the model's).
    """
    from osteomics.wsi.slide import open_slide

    for folder in folders:
        with open_slide(folder, params.backend, params.mpp_override) as slide:
            info = slide.info
        first = min(folder.glob("*.dcm"), default=folder)
        if info.mpp is None:
            raise MissingMppError(
                f"{first}: the DICOM WSI records no pixel spacing (Pixel Measures > Pixel "
                f"Spacing), so its µm/px is unknown; pass --mpp-override X (or [necrosis] "
                "mpp_override in node.toml) with the scanner's µm/px, e.g. 0.25 at 40x"
            )
        levels = [info.mpp * level.downsample for level in info.levels]
        if min(levels) > model_mpp * (1 + _MPP_TOLERANCE):
            shown = ", ".join(f"{m:.3g}" for m in sorted(levels))
            raise ResolutionError(
                f"{first}: no pyramid level near the model's {model_mpp:g} µm/px (model "
                f"{model_name}): the slide's levels are at {shown} µm/px, all coarser; the "
                "model cannot score it. Store the slide with its full-resolution level (at most "
                f"{model_mpp:g} µm/px)"
            )


def score_study(
    parts: StudyParts,
    out_dir: Path,
    params: NecrosisParameters,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[Any], None] | None = None,
) -> NecrosisRun:
    """Score the slide series of a stored study as one case (named by its Study UID).

    Writes the run's outputs into ``out_dir`` (as ``osteomics necrosis`` does) and
    ``study-cases.csv`` (each slide series -> the study).

    Raises
    ------
    MissingMppError, ResolutionError
        See :func:`check_slides` (nothing is written).
    """
    from osteomics.core.files import ensure_writable, write_atomic
    from osteomics.wsi.model import CARD_FILE, ModelCard, resolve_model
    from osteomics.wsi.scoring import score_slides

    folders = [s.folder for s in parts.wsi_series]
    card = ModelCard.load(resolve_model(params.model) / CARD_FILE)  # the card only: no torch yet
    check_slides(folders, params, float(card.input_mpp), card.name)
    ensure_writable(out_dir)
    cases = out_dir / CASES_NAME

    def write_cases(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["slide", "case"])
            writer.writerows((str(f), parts.study_uid) for f in folders)

    write_atomic(cases, write_cases)
    return score_slides(
        [Path(f) for f in folders],
        out_dir,
        params,
        cases_csv=cases,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )


def export_results(run_dir: Path) -> list[Path]:
    """The run's SR (per case) and SEG (per slide) written into ``run_dir/dicom/``.

    Raises
    ------
    DicomExportError
        The run cannot be exported (message names the file).
    """
    from osteomics.plugins.dicom_export import export_run

    report = export_run(run_dir, run_dir / DICOM_DIR, objects=("SR", "SEG"))
    for subject, reason in report.skipped:
        log.warning("export of %s skipped: %s", subject, reason)
    return [Path(o.path) for o in report.objects]


def send_and_report(node: NodeConfig, remote: str, files: Sequence[Path], kept_in: Path) -> bool:
    """Store ``files`` on ``remote`` (``--send``), print what happened on stderr; False when
    the remote did not take them all or cannot be reached (the files stay in ``kept_in``)."""
    import typer

    from osteomics.radiology.errors import AssociationFailedError
    from osteomics.radiology.pacs import send_files

    try:
        outcome = send_files(node, remote, files)
    except AssociationFailedError as exc:
        typer.secho(
            f"sending to {remote} failed: {exc}; files kept in {kept_in}",
            fg=typer.colors.RED,
            err=True,
        )
        return False
    for name, reason in outcome.failed:
        typer.secho(f"{name}: {reason}", fg=typer.colors.RED, err=True)
    typer.echo(
        f"sent to {remote}: {len(outcome.stored)} of {len(files)} object(s) stored in "
        f"{outcome.seconds:.1f} s; files in {kept_in}",
        err=True,
    )
    return outcome.ok


def failed_slides(run: NecrosisRun) -> str:
    """``slide: reason`` of each slide that failed, ``; ``-joined."""
    return "; ".join(f"{s.slide}: {s.reason}" for s in run.slides if s.status != "ok")


def necrosis_handler(config: NodeConfig) -> StudyHandler:
    """The node's ``necrosis`` job: score the study's slides into the job's result folder,
    export SR + SEG into its ``dicom/``; the node's worker sends them and records the job."""
    settings = config.necrosis
    params = NecrosisParameters(model=settings.model, mpp_override=settings.mpp_override)

    def handle(work: StudyWork) -> StudyJobResult:
        def beat(_progress: Any) -> None:
            work.heartbeat()

        run = score_study(work.parts, work.out_dir, params, workers=settings.workers, progress=beat)
        work.heartbeat()
        if not run.ok:
            raise StudyScoringError(
                f"necrosis of study {work.study_uid}: {failed_slides(run) or 'interrupted'}"
            )
        files = export_results(work.out_dir)
        case = next((c for c in run.cases if c.status == "ok"), None)
        summary = f"{len(run.slides)} slide(s) scored"
        if case is not None and case.necrosis_rate is not None:
            summary += (
                f", necrosis {case.necrosis_rate:.1f} % "
                f"({case.ci_low:.1f}-{case.ci_high:.1f}), Huvos {case.huvos_grade}"
            )
        summary += f"; {len(files)} DICOM object(s) in {work.out_dir / DICOM_DIR}"
        return StudyJobResult(work.study_uid, work.out_dir, tuple(files), summary)

    return handle


def check_store_paths(paths: Sequence[Path], config: Path | None, cases: Path | None) -> None:
    """``store:`` paths need ``--config``, take no ``--cases`` and are not mixed with files.

    Raises
    ------
    InvalidOptionError
    """
    stored = [p for p in paths if is_store_path(p)]
    if not stored:
        return
    if config is None:
        raise InvalidOptionError(
            f"{stored[0]}: a store: path needs --config node.toml (the node whose store holds "
            "the study)"
        )
    if cases is not None:
        raise InvalidOptionError(
            "--cases with store: paths: a stored study is one case (its slides), so give no "
            "cases file"
        )
    if len(stored) != len(paths) or len(stored) > 1:
        raise InvalidOptionError(
            "give one store:<StudyUID> per run, without slide files or folders beside it"
        )


__all__ = [
    "CASES_NAME",
    "DICOM_DIR",
    "STORE_PREFIX",
    "StudyScoringError",
    "check_slides",
    "check_store_paths",
    "export_results",
    "failed_slides",
    "is_store_path",
    "necrosis_handler",
    "score_study",
    "send_and_report",
    "store_study_uid",
    "stored_study",
]
