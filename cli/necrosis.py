"""``osteomics necrosis PATH... --out DIR``: necrosis rate, Huvos grade and responder per case.

``PATH`` may also be ``store:<StudyUID>`` with ``--config node.toml``: the DICOM WSI of a study
of the node's store, one case (see :mod:`osteomics.cli.study_necrosis`). ``--send REMOTE``
exports the run's SR and SEG and stores them on a remote of node.toml.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from osteomics.cli.tile import progress_bar
from osteomics.core.errors import InvalidOptionError
from osteomics.radiology.config import NodeConfig, load_node_config
from osteomics.wsi.scoring import NecrosisParameters, NecrosisRun, score_slides


def necrosis(
    paths: list[Path] = typer.Argument(
        ...,
        help="Slide files, DICOM WSI folders, folders searched recursively, or "
        "store:<StudyUID> (a study of the node's store; needs --config).",
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
    config: Path | None = typer.Option(
        None, "--config", help="The node's node.toml (for store: paths and --send)."
    ),
    send: str | None = typer.Option(
        None, "--send", help="After the run: store its SR and SEG on this remote of node.toml."
    ),
) -> None:
    """Score viable / necrotic tumour / non-tumour on every tissue tile, per slide and per case.

    Writes necrosis_slides.csv, necrosis_cases.csv, run.json, report.html and, per slide, a
    heatmap PNG, a QuPath GeoJSON and a table of per-tile class probabilities
    (SLIDE.tiles.parquet) into OUT/slides/. Exit code 1 when any slide failed, or when --send
    could not store everything (the results on disk are kept).
    """
    from osteomics.cli.study_necrosis import check_store_paths, is_store_path

    check_store_paths(paths, config, cases)
    if send is not None and config is None:
        raise InvalidOptionError(f"--send {send}: give --config node.toml, which defines it")
    node = load_node_config(config) if config is not None else None
    if node is not None and send is not None:
        node.remote(send)  # an unknown remote fails before the run, not after
    params = NecrosisParameters(model=model, backend=backend, mpp_override=mpp_override)
    with progress_bar() as on_progress:
        if paths and is_store_path(paths[0]):
            from osteomics.cli.study_necrosis import score_study, store_study_uid, stored_study

            assert node is not None
            parts = stored_study(node, store_study_uid(paths[0]))
            note = parts.others_note()
            if note:
                typer.echo(f"study {parts.study_uid}: {note}", err=True)
            run = score_study(
                parts, out, params, workers=workers, scheduler=scheduler, progress=on_progress
            )
        else:
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
    if send is not None and node is not None:
        send_run(node, send, out)


def send_run(node: NodeConfig, remote: str, run_dir: Path) -> None:
    """Export the run's SR and SEG into RUN/dicom/ and store them on ``remote``; exit code 1
    with the reason when the remote did not take them all (the files stay on disk)."""
    from osteomics.cli.study_necrosis import export_results, send_and_report

    if not send_and_report(node, remote, export_results(run_dir), run_dir):
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
