"""``osteomics demo``: build a small demo case from shipped real tiles and run the main job."""

from __future__ import annotations

from pathlib import Path

import typer

from osteomics.cli.tile import report, run_with_progress
from osteomics.wsi.demo import build_demo_case
from osteomics.wsi.tiling import TilingParameters


def demo(
    out: Path = typer.Option(Path("osteomics-demo"), "--out", help="Where to write the demo."),
    workers: int | None = typer.Option(2, "--workers", help="Local worker processes."),
) -> None:
    """Build two mosaic slides from real osteosarcoma tiles shipped with osteomics, then tile them.

    The slides are generic tiled TIFFs at 2 µm/px with their composition next to them
    (``slides/*.json``); the tiles, tissue masks and thumbnails go to ``OUT/tiles/``.
    """
    slides = build_demo_case(out / "slides")
    typer.echo(f"demo slides: {', '.join(str(s.path) for s in slides)}")
    params = TilingParameters(target_mpp=2.0, tile_px=256, min_tissue=0.5)
    run = run_with_progress([s.path for s in slides], out / "tiles", params, workers, None)
    report(run, as_json=False)
    typer.echo(
        f"open {out / 'tiles'} to see thumbnails, tissue masks and tiles; run.json has "
        "the provenance"
    )
    if not run.ok:
        raise typer.Exit(1)
