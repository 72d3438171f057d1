"""``osteomics tile PATH... --out DIR``: tissue tiles at a target µm/px, in parallel."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from osteomics.wsi.tiling import SlideProgress, TilingParameters, TilingRun, tile_slides


def tile(
    paths: list[Path] = typer.Argument(
        ..., help="Slide files, DICOM WSI folders, or folders searched recursively."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (one sub-folder per slide)."),
    mpp: float = typer.Option(1.0, "--mpp", help="Target resolution, µm per pixel."),
    tile_px: int = typer.Option(256, "--tile-px", min=8, help="Tile side in pixels (8 or more)."),
    overlap: int = typer.Option(
        0, "--overlap", min=0, help="Overlap between tiles in pixels (less than the tile)."
    ),
    min_tissue: float = typer.Option(
        0.5,
        "--min-tissue",
        min=0.0,
        max=1.0,
        help="Keep tiles with at least this tissue fraction (0-1).",
    ),
    backend: str = typer.Option("auto", help="auto, openslide, tiffslide or wsidicom."),
    mpp_override: float | None = typer.Option(
        None, "--mpp-override", help="Level-0 µm/px for slides that lack it (or to correct it)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Local worker processes (default: one per core)."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Existing Dask scheduler, e.g. tcp://host:8786."
    ),
    compression: str = typer.Option(
        "none",
        "--compression",
        help="Tile chunks stored raw (none) or with zarr's standard Zstd codec (zstd): about "
        "a fifth smaller, a little slower to write.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Tile slides into DIR/<slide>/tiles.zarr + tiles.parquet; provenance in DIR/run.json.

    Re-running the same command skips slides already done with the same parameters.
    Exit code 1 when any slide failed (its row in run.json says why), 0 otherwise.
    """
    params = TilingParameters(
        target_mpp=mpp,
        tile_px=tile_px,
        overlap_px=overlap,
        min_tissue=min_tissue,
        backend=backend,
        mpp_override=mpp_override,
        compression=compression,
    )
    run = run_with_progress(paths, out, params, workers, scheduler)
    report(run, as_json)
    if not run.ok:
        raise typer.Exit(1)


def run_with_progress(
    paths: list[Path],
    out: Path,
    params: TilingParameters,
    workers: int | None,
    scheduler: str | None,
) -> TilingRun:
    """Run the tiling with a progress bar on stderr (stdout stays clean for --json)."""
    with progress_bar() as on_progress:
        return tile_slides(
            paths, out, params, workers=workers, scheduler=scheduler, progress=on_progress
        )


@contextmanager
def progress_bar() -> Iterator[Callable[[SlideProgress], None]]:
    """A rich progress bar on stderr, one row per slide; yields the progress callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles"),
        console=console,
    ) as bar:
        tasks: dict[str, TaskID] = {}
        # Until the first slide is planned, say what is happening (cluster start, tissue).
        starting: list[TaskID] = [bar.add_task("starting workers, finding tissue", total=None)]

        def on_progress(event: SlideProgress) -> None:
            if starting:
                bar.remove_task(starting.pop())
            if event.slide not in tasks:
                tasks[event.slide] = bar.add_task(event.slide, total=None)
            failed = event.status == "error"
            bar.update(
                tasks[event.slide],
                completed=event.tiles_done,
                total=event.tiles_total or None,
                description=f"{event.slide} (error)" if failed else event.slide,
            )

        try:
            yield on_progress
        except KeyboardInterrupt:
            console.print("interrupted before any slide started; nothing was written")
            raise typer.Exit(1) from None


def report(run: TilingRun, as_json: bool) -> None:
    """Summary on stdout (JSON with --json), one line per failed slide on stderr."""
    summary = run.to_dict()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    for r in run.results:
        if r.status == "error":
            typer.secho(f"{r.slide}: {r.reason}", fg=typer.colors.RED, err=True)
    s = summary["summary"]
    line = (
        f"{s['ok']} of {s['slides']} slides tiled ({s['resumed']} up to date), "
        f"{s['tiles']} tiles -> {run.out_dir}"
    )
    if run.interrupted:
        line += " (interrupted: run again to resume)"
    typer.echo(line, err=as_json)
