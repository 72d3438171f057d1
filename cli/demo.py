"""``osteomics demo``: build a demo case from shipped real tiles and run the necrosis job."""

from __future__ import annotations

import csv
from pathlib import Path

import typer

from osteomics.cli.necrosis import report
from osteomics.cli.tile import progress_bar
from osteomics.wsi.demo import DemoSlide, build_demo_case
from osteomics.wsi.scoring import NecrosisParameters, score_slides


def demo(
    out: Path = typer.Option(Path("osteomics-demo"), "--out", help="Where to write the demo."),
    workers: int | None = typer.Option(2, "--workers", help="Local worker processes."),
    model: str = typer.Option("default", "--model", help="Registry name or model folder."),
) -> None:
    """Build a demo resection (three mosaic slides of real osteosarcoma tiles shipped with
    osteomics) and score its necrosis rate, Huvos grade and responder status.

    The slides are tiled TIFFs at 2 µm/px with their true composition next to them
    (``OUT/slides/*.json``); the report is ``OUT/necrosis/report.html``.
    """
    slides = _build_with_progress(out / "slides", n_slides=3)
    cases_csv = out / "slides" / "cases.csv"
    with open(cases_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "case"])
        for s in slides:
            writer.writerow([s.path.name, "demo-case"])
    typer.echo(f"demo case: {len(slides)} slides in {out / 'slides'} (truth in their .json)")
    with progress_bar() as on_progress:
        run = score_slides(
            [s.path for s in slides],
            out / "necrosis",
            NecrosisParameters(model=model),
            cases_csv=cases_csv,
            workers=workers,
            progress=on_progress,
        )
    report(run, as_json=False)
    necrotic = sum(s.composition.area_mm2_by_label().get("Non-Viable-Tumor", 0.0) for s in slides)
    viable = sum(s.composition.area_mm2_by_label().get("Viable", 0.0) for s in slides)
    typer.echo(
        f"truth by cell area (from the slides' composition): necrosis "
        f"{100 * necrotic / (necrotic + viable):.1f} %"
    )
    if not run.ok:
        raise typer.Exit(1)


def _build_with_progress(folder: Path, n_slides: int) -> list[DemoSlide]:
    """Build the demo slides with a progress bar on stderr (a few seconds each)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("building demo slides"), BarColumn(), MofNCompleteColumn(),
        console=Console(stderr=True),
    ) as bar:  # fmt: skip
        task = bar.add_task("build", total=n_slides)
        return build_demo_case(
            folder, n_slides=n_slides, progress=lambda done, _: bar.update(task, completed=done)
        )
