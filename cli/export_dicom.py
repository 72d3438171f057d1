"""``osteomics export-dicom``: a finished necrosis run or a radiomics table as DICOM objects."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from osteomics.core.errors import InvalidOptionError
from osteomics.core.files import ensure_writable


def export_dicom(
    run_dir: Path = typer.Argument(
        ..., help="A necrosis output folder, or a radiomics table (or its folder)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the DICOM files."),
    objects: str = typer.Option(
        "SR,SEG", "--objects", help="What to write for a necrosis run: SR, SEG or SR,SEG."
    ),
    seg_level: int | None = typer.Option(
        None, "--seg-level", help="Pyramid level of the SEG (default: coarsest fine enough)."
    ),
    source: list[Path] = typer.Option(
        [], "--source", help="Radiomics: more folders to find the image and mask files in."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Export results as DICOM: a TID 1500 SR per necrosis case and a SEG per scored DICOM
    slide, or a TID 1500 SR per radiomics ROI.

    Writes the objects and export-dicom.json (provenance, objects, what was skipped and why)
    into OUT, and prints one line per object.
    """
    from osteomics.plugins.dicom_export import PROVENANCE_NAME, export_run

    wanted = tuple(o.strip().upper() for o in objects.split(",") if o.strip())
    if not wanted or not set(wanted) <= {"SR", "SEG"}:
        raise InvalidOptionError(f"--objects {objects!r}: give SR, SEG or SR,SEG")
    ensure_writable(out)
    report = export_run(run_dir, out, objects=wanted, seg_level=seg_level, sources=source)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    for obj in report.objects:
        typer.echo(f"{obj.kind:4} {obj.subject}: {obj.path}")
    for subject, reason in report.skipped:
        typer.echo(f"skipped {subject}: {reason}")
    typer.echo(f"{len(report.objects)} object(s); provenance: {out / PROVENANCE_NAME}")
