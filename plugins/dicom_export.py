"""DICOM export of a finished run: necrosis SR + SEG, radiomics SR (``osteomics export-dicom``).

A *run* is one of:

- a necrosis output folder (``run.json`` with ``"command": "necrosis"``,
  ``necrosis_cases.csv``, ``slides/<slide>.tiles.parquet``): one TID 1500 SR per scored case
  (:func:`osteomics.plugins.dicom_sr.necrosis_report`) and one SEG per scored DICOM slide
  (:func:`osteomics.plugins.dicom_seg.necrosis_segmentation`);
- a radiomics table (``features.parquet`` / ``.csv``) with its ``.provenance.json`` beside it,
  as ``osteomics radiomics`` writes it or the node writes it into
  ``results/radiomics/<StudyUID>/`` (the folder may be given): one TID 1500 SR per (series,
  ROI) (:func:`osteomics.plugins.dicom_sr.radiomics_report`).

The source DICOM instances the objects reference are read again (headers only) from where the
run's provenance says they were; a file that is gone or whose size changed since the run is an
error naming it. Radiomics sources can be looked for in other folders too (``sources``).

Output files (atomic writes): ``<case>.necrosis.sr.dcm``, ``<slide>.necrosis.seg.dcm``,
``<series>-<roi>.radiomics.sr.dcm``, and ``export-dicom.json``: the house provenance record
with the objects written (SOP class, SOP Instance UID, study) and what was skipped, and why.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    RTStructureSetStorage,
    SegmentationStorage,
    VLWholeSlideMicroscopyImageStorage,
)

from osteomics.core.files import write_atomic, write_json_atomic
from osteomics.core.plugins import Plugin
from osteomics.core.provenance import input_record, provenance, utc_now
from osteomics.plugins.errors import DicomExportError

log = logging.getLogger(__name__)

PROVENANCE_NAME = "export-dicom.json"
VL_WSI = str(VLWholeSlideMicroscopyImageStorage)
SEG_SOP_CLASS = str(SegmentationStorage)
RTSTRUCT_SOP_CLASS = str(RTStructureSetStorage)


@dataclass(frozen=True)
class ExportedObject:
    """One DICOM object written: what (``SR``/``SEG``), of what (case, slide, ROI), where."""

    kind: str
    subject: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str


@dataclass
class ExportReport:
    """What an export wrote and what it skipped (``(subject, reason)``)."""

    run: str
    run_kind: str
    objects: list[ExportedObject] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "run_kind": self.run_kind,
            "objects": [asdict(o) for o in self.objects],
            "skipped": [{"subject": s, "reason": r} for s, r in self.skipped],
        }


def safe_name(text: str) -> str:
    """A file-name part from a case, slide or ROI name (other than ``[A-Za-z0-9._-]``: ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "unnamed"
    return cleaned[:80]


def _write(ds: Dataset, path: Path) -> None:
    write_atomic(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def _header(path: Path) -> Dataset | None:
    """The header of a DICOM file (no pixel data), or None when it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None


def _record(kind: str, subject: str, path: Path, ds: Dataset) -> ExportedObject:
    return ExportedObject(
        kind,
        subject,
        str(path),
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
    )


def detect_run(run_dir: Path) -> tuple[str, Path]:
    """``("necrosis", folder)`` or ``("radiomics", table)`` for what ``run_dir`` names.

    Raises
    ------
    DicomExportError
        Neither a finished necrosis run nor a radiomics table with its provenance.
    """
    run_dir = Path(run_dir)
    if run_dir.is_dir() and (run_dir / "run.json").is_file():
        try:
            record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DicomExportError(f"{run_dir / 'run.json'} cannot be read ({exc})") from exc
        if record.get("command") != "necrosis":
            raise DicomExportError(
                f"{run_dir} is a {record.get('command')!r} run; export-dicom exports necrosis "
                "runs and radiomics tables"
            )
        if not record.get("finished") or record.get("interrupted"):
            raise DicomExportError(
                f"{run_dir}: the necrosis run did not finish; run it again before exporting"
            )
        return "necrosis", run_dir
    candidates = (
        [run_dir]
        if run_dir.is_file()
        else [run_dir / "features.parquet", run_dir / "features.csv"]
        if run_dir.is_dir()
        else []
    )
    for table in candidates:
        prov = table.with_name(table.name.removesuffix(table.suffix) + ".provenance.json")
        if table.is_file() and table.suffix in (".parquet", ".csv") and prov.is_file():
            return "radiomics", table
    raise DicomExportError(
        f"{run_dir}: neither a finished necrosis run folder (run.json) nor a radiomics table "
        "(.parquet/.csv) with its .provenance.json beside it"
    )


# -- necrosis ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slide:
    name: str
    row: dict[str, Any]
    datasets: list[Dataset]  # DICOM headers of the slide's files (empty: not DICOM)
    hashes: list[str]


def _slide_sources(row: dict[str, Any]) -> _Slide:
    datasets, hashes = [], []
    for item in row.get("inputs", []):
        path = Path(str(item.get("file", "")))
        hashes.append(str(item.get("sha256", "")))
        if not path.is_file():
            raise DicomExportError(
                f"slide {row['slide']}: its file {path} is gone since the run; put it back or "
                "export on the machine that scored it"
            )
        if item.get("bytes") is not None and path.stat().st_size != int(item["bytes"]):
            raise DicomExportError(
                f"slide {row['slide']}: {path} changed since the run ({path.stat().st_size} "
                f"bytes, {item['bytes']} when scored); score it again"
            )
        header = _header(path)
        if header is not None and str(header.get("SOPClassUID", "")) == VL_WSI:
            datasets.append(header)
    return _Slide(str(row["slide"]), row, datasets, hashes)


def export_necrosis(
    run_dir: Path,
    out_dir: Path,
    *,
    objects: Sequence[str] = ("SR", "SEG"),
    seg_level: int | None = None,
) -> ExportReport:
    """Write the SR of every scored case and the SEG of every scored DICOM slide.

    Parameters
    ----------
    run_dir:
        A finished necrosis output folder.
    out_dir:
        Where the DICOM files go (created).
    objects:
        ``SR``, ``SEG`` or both.
    seg_level:
        Pyramid level of the SEG (default: see :mod:`osteomics.plugins.dicom_seg`).

    Raises
    ------
    DicomExportError
        A source slide is gone or changed; highdicom refuses an object.
    """
    import pandas as pd

    # highdicom is imported when an export runs, not when the plugin is discovered (the
    # necrosis job discovers every exporter; a [wsi]-only install has no highdicom)
    from osteomics.plugins.dicom_seg import (
        choose_level,
        class_map,
        necrosis_segmentation,
        pyramid_levels,
    )
    from osteomics.plugins.dicom_sr import (
        ModelIdentity,
        NecrosisCaseResult,
        case_study_stub,
        necrosis_report,
    )

    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    model_card = record.get("model", {})
    model = ModelIdentity(
        str(model_card.get("name", "")), str(model_card.get("weights_sha256", ""))
    )
    report = ExportReport(str(run_dir), "necrosis")
    slides = {
        str(row["slide"]): _slide_sources(row)
        for row in record.get("slides", [])
        if row.get("status") == "ok"
    }
    if "SR" in objects:
        for case in record.get("cases", []):
            name = str(case.get("case"))
            if case.get("status") != "ok" or case.get("necrosis_rate") is None:
                report.skipped.append((f"case {name}", case.get("reason") or "no necrosis rate"))
                continue
            result = NecrosisCaseResult.from_record(case)
            members = [slides[s] for s in case.get("slides", []) if s in slides]
            level0 = [pyramid_levels(s.datasets)[0].dataset for s in members if s.datasets]
            stub = None if level0 else case_study_stub(name, str(record.get("started", "")))
            hashes = [h for s in members for h in s.hashes]
            sr = necrosis_report(result, model, slides=level0, study_stub=stub, slide_hashes=hashes)
            path = out_dir / f"{safe_name(name)}.necrosis.sr.dcm"
            _write(sr, path)
            report.objects.append(_record("SR", f"case {name}", path, sr))
    if "SEG" in objects:
        for slide in slides.values():
            if not slide.datasets:
                report.skipped.append((f"slide {slide.name}", "not a DICOM WSI: no SEG"))
                continue
            table_path = run_dir / "slides" / f"{slide.name}.tiles.parquet"
            if not table_path.is_file():
                report.skipped.append(
                    (
                        f"slide {slide.name}",
                        f"no {table_path.name} (a run of an older osteomics): score it again "
                        "for a SEG",
                    )
                )
                continue
            tiles = pd.read_parquet(table_path)
            levels = pyramid_levels(slide.datasets)
            side = float(tiles["side_px"].iloc[0]) if len(tiles) else 1.0
            level = choose_level(levels, side, seg_level)
            labels = class_map(tiles, level.shape, level.downsample)
            seg = necrosis_segmentation(level.dataset, labels, model, slide=slide.name)
            path = out_dir / f"{safe_name(slide.name)}.necrosis.seg.dcm"
            _write(seg, path)
            report.objects.append(_record("SEG", f"slide {slide.name}", path, seg))
    return report


# -- radiomics -----------------------------------------------------------------------------


def _provenance_inputs(document: dict[str, Any]) -> tuple[list[Path], str]:
    """Input paths and configuration name of a radiomics provenance file (the CLI's single
    record, or the node's ``{"runs": [...]}``)."""
    records = document.get("runs") if isinstance(document.get("runs"), list) else [document]
    paths: list[Path] = []
    config = ""
    for rec in records or []:
        for item in rec.get("inputs", []):
            if item.get("file"):
                paths.append(Path(str(item["file"])))
        config = config or str(rec.get("parameters", {}).get("name", ""))
    return list(dict.fromkeys(paths)), config


def _dicom_headers(roots: Iterable[Path]) -> list[Dataset]:
    out: list[Dataset] = []
    seen: set[str] = set()
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            header = _header(path)
            uid = str(header.get("SOPInstanceUID", "")) if header is not None else ""
            if header is not None and uid and uid not in seen:
                seen.add(uid)
                out.append(header)
    return out


def _mask_for(headers: list[Dataset], series_uid: str, roi: str) -> Dataset | None:
    """The RTSTRUCT or SEG that holds ``roi`` and refers to ``series_uid``."""
    for ds in headers:
        sop = str(ds.get("SOPClassUID", ""))
        if sop == RTSTRUCT_SOP_CLASS:
            names = {str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])}
            refs = {
                str(s.get("SeriesInstanceUID", ""))
                for f in ds.get("ReferencedFrameOfReferenceSequence", [])
                for st in f.get("RTReferencedStudySequence", [])
                for s in st.get("RTReferencedSeriesSequence", [])
            }
        elif sop == SEG_SOP_CLASS:
            names = {str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}
            refs = {
                str(s.get("SeriesInstanceUID", "")) for s in ds.get("ReferencedSeriesSequence", [])
            }
        else:
            continue
        if roi in names and (series_uid in refs or not refs):
            return ds
    return None


def export_radiomics(
    table_path: Path, out_dir: Path, *, sources: Sequence[Path] = ()
) -> ExportReport:
    """Write one SR per (series, ROI) of a radiomics table.

    Parameters
    ----------
    table_path:
        ``features.parquet`` / ``.csv`` with its ``.provenance.json`` beside it.
    out_dir:
        Where the DICOM files go.
    sources:
        Further folders or files to look for the image and RTSTRUCT/SEG instances in (the
        provenance's input paths are always searched).

    Raises
    ------
    DicomExportError
        A table of NIfTI inputs (no DICOM to reference), missing source instances, or content
        highdicom refuses.
    """
    import pandas as pd

    from osteomics.plugins.dicom_sr import RadiomicsFeature, radiomics_report

    prov_path = table_path.with_name(
        table_path.name.removesuffix(table_path.suffix) + ".provenance.json"
    )
    document = json.loads(prov_path.read_text(encoding="utf-8"))
    inputs, config = _provenance_inputs(document)
    table = (
        pd.read_parquet(table_path) if table_path.suffix == ".parquet" else pd.read_csv(table_path)
    )
    report = ExportReport(str(table_path), "radiomics")
    roots = [p for p in [*inputs, *map(Path, sources)] if p.exists()]
    headers = _dicom_headers(roots)
    input_hashes = [
        str(item.get("sha256", ""))
        for rec in (document.get("runs") or [document])
        for item in rec.get("inputs", [])
    ]
    for (series_uid, roi), rows in table.groupby(["series", "roi"], sort=True):
        series_uid, roi = str(series_uid), str(roi)
        subject = f"series {series_uid} ROI {roi}"
        images = [h for h in headers if str(h.get("SeriesInstanceUID", "")) == series_uid]
        images = [
            h
            for h in images
            if str(h.get("SOPClassUID", "")) not in (RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS)
        ]
        if not images:
            raise DicomExportError(
                f"{table_path}: no DICOM instance of series {series_uid} in "
                f"{', '.join(map(str, roots)) or 'the recorded inputs (gone)'}; a table from "
                "NIfTI inputs has nothing to reference, otherwise pass --source FOLDER"
            )
        mask = _mask_for(headers, series_uid, roi)
        if mask is None:
            raise DicomExportError(
                f"{table_path}: no RTSTRUCT or SEG holding ROI {roi!r} for series {series_uid} "
                "among the inputs; pass --source FOLDER"
            )
        features = [
            RadiomicsFeature(str(family), str(feature), str(ibsi) if ibsi else None, float(value))
            for family, feature, ibsi, value in zip(
                rows["family"].tolist(),
                rows["feature"].tolist(),
                rows["ibsi_id"].where(rows["ibsi_id"].notna(), "").tolist(),
                rows["value"].tolist(),
                strict=True,
            )
        ]
        sr = radiomics_report(
            features,
            roi=roi,
            images=images,
            mask=mask,
            config=config or "unknown",
            input_hashes=input_hashes,
        )
        path = out_dir / f"{safe_name(series_uid[-12:])}-{safe_name(roi)}.radiomics.sr.dcm"
        _write(sr, path)
        report.objects.append(_record("SR", subject, path, sr))
    return report


# -- the whole export ----------------------------------------------------------------------


def export_run(
    run_dir: Path,
    out_dir: Path,
    *,
    objects: Sequence[str] = ("SR", "SEG"),
    seg_level: int | None = None,
    sources: Sequence[Path] = (),
) -> ExportReport:
    """Export a finished necrosis run or a radiomics table as DICOM (see the module
    docstring); writes ``export-dicom.json`` beside the objects.

    Raises
    ------
    DicomExportError
        What :func:`detect_run`, :func:`export_necrosis` and :func:`export_radiomics` raise.
    """
    started = utc_now()
    with _quiet_source_warnings():
        return _export_run(run_dir, out_dir, objects, seg_level, sources, started)


@contextmanager
def _quiet_source_warnings() -> Iterator[None]:
    """pydicom and highdicom warn about the *source's* values (a single-component patient
    name, an over-long Study ID) while copying them, quoting them: patient data must not reach
    the logs, and what we write is made conformant (``conform_copied_values``)."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_run(
    run_dir: Path,
    out_dir: Path,
    objects: Sequence[str],
    seg_level: int | None,
    sources: Sequence[Path],
    started: str,
) -> ExportReport:
    kind, path = detect_run(Path(run_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "necrosis":
        report = export_necrosis(path, out_dir, objects=objects, seg_level=seg_level)
        inputs = [input_record(path / "run.json", "run")]
    else:
        report = export_radiomics(path, out_dir, sources=sources)
        inputs = [input_record(path, "table")]
    record = provenance(
        "export-dicom",
        parameters={
            "run": str(path),
            "objects": list(objects),
            "seg_level": seg_level,
            "sources": [str(s) for s in sources],
        },
        started=started,
        finished=utc_now(),
        inputs=inputs,
    )
    record.update(report.to_dict())
    write_json_atomic(out_dir / PROVENANCE_NAME, record)
    for obj in report.objects:
        log.info("wrote %s of %s: %s", obj.kind, obj.subject, obj.path)
    return report


@dataclass(frozen=True)
class RunExporter:
    """The factory of a run-level exporter plugin: called as ``exporter(run_dir, out_dir)``
    on a finished run (``scope = "run"``: the necrosis job's per-slide exporter loop leaves it
    out; ``osteomics export-dicom`` runs it)."""

    objects: tuple[str, ...]
    scope: str = "run"

    def __call__(self, run_dir: Path, out_dir: Path, **options: Any) -> ExportReport:
        return export_run(run_dir, out_dir, objects=self.objects, **options)


sr_plugin = Plugin(
    name="dicom-sr",
    kind="exporter",
    description="DICOM SR (TID 1500): necrosis per case, IBSI radiomics per ROI (highdicom)",
    factory=RunExporter(("SR",)),
    priority=20,
    requires=("highdicom",),
)
seg_plugin = Plugin(
    name="dicom-seg",
    kind="exporter",
    description="DICOM SEG: tissue-class map of a scored DICOM WSI (highdicom)",
    factory=RunExporter(("SEG",)),
    priority=21,
    requires=("highdicom",),
)

__all__ = [
    "ExportReport",
    "ExportedObject",
    "RunExporter",
    "detect_run",
    "export_necrosis",
    "export_radiomics",
    "export_run",
]
