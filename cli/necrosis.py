"""``osteomics necrosis PATH... --out DIR``: necrosis rate, Huvos grade and responder per case."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from osteomics.cli.tile import progress_bar
from osteomics.wsi.scoring import NecrosisParameters, NecrosisRun, score_slides


def necrosis(
    paths: list[Path] = typer.Argument(
        ..., help="Slide files, DICOM WSI folders, or folders searched recursively."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    model: str = typer.Option("default", "--model", help="Registry name or model folder."),
    cases: Path | None = typer.Option(
        None, "--cases", help="CSV with columns slide,case (slides of one resection)."
    ),
    mpp_override: float | None = typer.Option(
        None, "--mpp-override", help="Level-0 µm/px for slides that lack it."
    ),
    backend: str = typer.Option("auto", help="auto, openslide, tiffslide or wsidicom."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Local worker processes (default: one per core)."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Existing Dask scheduler, e.g. tcp://host:8786."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Score viable / necrotic tumour / non-tumour on every tissue tile, per slide and per case.

    Writes necrosis_slides.csv, necrosis_cases.csv, run.json, report.html and, per slide, a
    heatmap PNG, a QuPath GeoJSON and a table of per-tile class probabilities
    (SLIDE.tiles.parquet) into OUT/slides/. Exit code 1 when any slide failed.
    """
    params = NecrosisParameters(model=model, backend=backend, mpp_override=mpp_override)
    with progress_bar() as on_progress:
        run = score_slides(
            paths,
            out,
            params,
            cases_csv=cases,
            workers=workers,
            scheduler=scheduler,
            progress=on_progress,
        )
    report(run, as_json)
    if not run.ok:
        raise typer.Exit(1)


def report(run: NecrosisRun, as_json: bool) -> None:
    """Case lines (or JSON) on stdout; failed slides on stderr."""
    if as_json:
        typer.echo(json.dumps(run.to_dict(), indent=2))
    for s in run.slides:
        if s.status == "error":
            typer.secho(f"{s.slide}: {s.reason}", fg=typer.colors.RED, err=True)
    for c in run.cases:
        if c.status == "ok" and c.necrosis_rate is not None:
            line = (
                f"case {c.case}: necrosis {c.necrosis_rate:.1f} % "
                f"(95 % interval {c.ci_low:.1f}-{c.ci_high:.1f}), Huvos {c.huvos_grade}, "
                f"{c.responder} responder, {c.n_slides} slide(s)"
            )
        else:
            line = f"case {c.case}: {c.reason}"
        typer.echo(line, err=as_json)
    report_html = Path(run.out_dir) / "report.html"
    if report_html.exists():
        typer.echo(f"report: {report_html}", err=as_json)
