"""``osteomics demo``: build a demo case from shipped real tiles and run the necrosis job."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer

from osteomics.cli.necrosis import report
from osteomics.cli.tile import progress_bar
from osteomics.wsi.demo import (
    DemoSlide,
    build_demo_case,
    demo_tiles_in_training,
    tile_agreement,
)
from osteomics.wsi.report import write_necrosis_outputs
from osteomics.wsi.scoring import NecrosisParameters, NecrosisRun, score_slides


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
    necrotic = sum(s.composition.area_mm2_by_label().get("Non-Viable-Tumor", 0.0) for s in slides)
    viable = sum(s.composition.area_mm2_by_label().get("Viable", 0.0) for s in slides)
    true_rate = 100 * necrotic / (necrotic + viable)
    honesty = _training_note(model)
    cases_csv = out / "slides" / "cases.csv"
    with open(cases_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide", "case", "true necrosis (by cell area)", "note"])
        for s in slides:
            writer.writerow([s.path.name, "demo-case", f"{true_rate:.1f} %", honesty])
    typer.echo(f"demo case: {len(slides)} slides in {out / 'slides'} (truth in their .json)")
    typer.echo(f"note: {honesty}")
    with progress_bar() as on_progress:
        run = score_slides(
            [s.path for s in slides],
            out / "necrosis",
            NecrosisParameters(model=model),
            cases_csv=cases_csv,
            workers=workers,
            progress=on_progress,
        )
    agreement = _agreement_note(run, slides)
    if agreement:
        # Into run.json and the report too (outputs written again with the note).
        run.notes = [honesty, agreement]
        write_necrosis_outputs(run, Path(run.out_dir))
    report(run, as_json=False)
    typer.echo(f"truth by cell area (from the slides' composition): necrosis {true_rate:.1f} %")
    if agreement:
        typer.echo(agreement)
    if not run.ok:
        raise typer.Exit(1)


def _training_note(model: str) -> str:
    """Say that the demo's tiles are training tiles of the model (when its card says so)."""
    from osteomics.wsi.model import resolve_model

    card = json.loads((resolve_model(model) / "model_card.json").read_text())
    trained, total = demo_tiles_in_training(card)
    name = card.get("name", model)
    if trained == 0:
        return (
            f"none of the {total} demo tiles is among the training images listed by model "
            f"{name}'s card; the figures still come from only {total} tiles of 3 patients"
        )
    return (
        f"{trained} of the {total} demo tiles are training tiles of model {name} (its card "
        "lists them): these figures show that the pipeline works, not how accurate the model "
        "is on a new patient (see the card's leave-one-patient-out figures)"
    )


def _agreement_note(run: NecrosisRun, slides: list[DemoSlide]) -> str:
    """Per-tile agreement with the mosaics' known composition, with case and true rates."""
    by_name = {s.path.stem: s for s in slides}
    agreeing = scored = 0
    for name, tiles in run.tiles.items():
        if name in by_name:
            a = tile_agreement(tiles, by_name[name].composition)
            agreeing, scored = agreeing + a.agreeing, scored + a.scored
    if not scored:
        return ""
    return (
        f"per-tile agreement with the known composition: {100 * agreeing / scored:.1f} % of "
        f"{scored} scored tiles have the class of the mosaic cell under their centre"
    )


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
