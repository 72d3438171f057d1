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
from osteomics.wsi.results import CaseNecrosis
from osteomics.wsi.scoring import NecrosisParameters, NecrosisRun, score_slides


def necrosis(
    paths: list[Path] = typer.Argument(
        None,
        help="Slide files, DICOM WSI folders, folders searched recursively, or "
        "store:<StudyUID> (a study of the node's store; needs --config).",
        show_default=False,
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
    from_run: Path | None = typer.Option(
        None,
        "--from-run",
        help="Re-aggregate this run folder (its run.json and per-tile tables) with --cases, "
        "without the model or the slides; give no PATH.",
    ),
) -> None:
    """Score viable / necrotic tumour / non-tumour on every tissue tile, per slide and per case.

    Writes necrosis_slides.csv, necrosis_cases.csv, run.json, report.html and, per slide, a
    heatmap PNG, a QuPath GeoJSON and a table of per-tile class probabilities
    (SLIDE.tiles.parquet) and the thumbnail into OUT/slides/. A case whose interval crosses a
    Huvos or responder cut-off is reported "uncertain"; a slide or case the model was not made
    for (not H&E, too little tissue or tumour) is "not assessable" with the reason, without a
    rate. --from-run RUN_DIR re-aggregates a run with --cases, without the model or the
    slides. Exit code 1 when any slide failed, or when --send
    could not store everything (the results on disk are kept).
    """
    from osteomics.cli.study_necrosis import check_store_paths, is_store_path

    paths = list(paths or [])
    if from_run is not None:
        _from_run(from_run, paths, out, cases, as_json)
        return
    if not paths:
        raise InvalidOptionError(
            "give the slides to score (PATH...), or --from-run RUN_DIR to re-aggregate a run"
        )
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


def _from_run(
    run_dir: Path, paths: list[Path], out: Path, cases: Path | None, as_json: bool
) -> None:
    """``--from-run``: re-aggregate without the model; exit code 1 when a case has a failed
    or unlisted slide, as for a scoring run."""
    from osteomics.wsi.rerun import rerun_from

    if paths:
        raise InvalidOptionError(
            f"--from-run {run_dir}: re-aggregates the run's own slides; give no PATH "
            f"(got {', '.join(map(str, paths))})"
        )
    run = rerun_from(run_dir, out, cases)
    typer.echo(f"re-aggregated from {run_dir} (no model, no slides read)", err=True)
    report(run, as_json)
    if not run.ok:
        raise typer.Exit(1)


def case_line(c: CaseNecrosis) -> str:
    """One line per case: rate, interval, grade and responder (``uncertain`` with the grades
    the interval spans), or why there is none (error, not assessable)."""
    if c.status != "ok" or c.necrosis_rate is None:
        return f"case {c.case}: {c.reason}"
    interval = (
        f" (95 % interval {c.ci_low:.1f}-{c.ci_high:.1f})"
        if c.ci_low is not None and c.ci_high is not None
        else ""
    )
    grade = (
        f"Huvos uncertain ({c.huvos_range})"
        if c.huvos_grade == "uncertain"
        else f"Huvos {c.huvos_grade}"
    )
    responder = (
        "responder uncertain (the interval crosses 90 %)"
        if c.responder == "uncertain"
        else f"{c.responder} responder"
    )
    return (
        f"case {c.case}: necrosis {c.necrosis_rate:.1f} %{interval}, {grade}, {responder}, "
        f"{c.n_slides} slide(s)"
    )


def report(run: NecrosisRun, as_json: bool) -> None:
    """Case lines (or JSON) on stdout; failed slides on stderr."""
    if as_json:
        typer.echo(json.dumps(run.to_dict(), indent=2))
    for s in run.slides:
        if s.status == "error":
            typer.secho(f"{s.slide}: {s.reason}", fg=typer.colors.RED, err=True)
    for c in run.cases:
        typer.echo(case_line(c), err=as_json)
    report_html = Path(run.out_dir) / "report.html"
    if report_html.exists():
        typer.echo(f"report: {report_html}", err=as_json)
