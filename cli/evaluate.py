"""``osteomics evaluate MODEL TILE_DIR``: accuracy, macro-F1, recall, confusion and ECE."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def evaluate(
    model: str = typer.Argument(..., help="Registry name (default) or a model folder."),
    tile_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class."),
    tile_mpp: float = typer.Option(1.0, "--tile-mpp", help="µm/px of the images."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Score every image (sub-tiled at the model's µm/px, probabilities averaged) and compare
    with its folder's label.

    A progress bar on stderr counts the images scored.
    """
    from osteomics.cli.progress import counting, stages
    from osteomics.wsi.evaluate import evaluate_folder
    from osteomics.wsi.model import load_model

    with stages(f"loading model {model}"):
        net, card = load_model(model)
    with counting("scoring images") as progress:
        metrics, _, _ = evaluate_folder(net, card, tile_dir, tile_mpp, progress=progress)
    if as_json:
        typer.echo(json.dumps({"model": card.name, **metrics.to_dict()}, indent=2))
        return
    typer.echo(f"model {card.name} ({card.arch}, {card.input_px} px at {card.input_mpp} µm/px)")
    typer.echo(f"images      {metrics.n}")
    typer.echo(f"accuracy    {metrics.accuracy:.3f}")
    typer.echo(f"macro-F1    {metrics.macro_f1:.3f}")
    typer.echo(f"ECE         {metrics.ece:.3f}")
    for name, value in metrics.recall.items():
        typer.echo(f"recall      {name}: {value:.3f}")
    width = max(len(c) for c in metrics.classes)
    typer.echo("confusion (rows: true, columns: predicted)")
    typer.echo(" " * (width + 2) + "  ".join(f"{c:>{width}}" for c in metrics.classes))
    for name, row in zip(metrics.classes, metrics.confusion, strict=True):
        typer.echo(f"{name:>{width}}  " + "  ".join(f"{v:>{width}}" for v in row))
