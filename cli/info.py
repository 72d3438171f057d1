"""``osteomics info SLIDE``: what is in a slide file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from osteomics.wsi.slide import open_slide


def info(
    slide: Path = typer.Argument(..., help="Slide file, or folder of one DICOM WSI series."),
    backend: str = typer.Option("auto", help="auto, openslide, tiffslide or wsidicom."),
    mpp_override: float | None = typer.Option(
        None, "--mpp-override", help="Level-0 µm/px to use instead of the file's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Vendor, reader, levels, dimensions, downsamples, µm/px, objective, associated images."""
    with open_slide(slide, backend, mpp_override) as opened:
        description = opened.info.to_dict()
    if as_json:
        typer.echo(json.dumps(description, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    d = description
    mpp = (
        f"{d['mpp_x']:.4f} x {d['mpp_y']:.4f} µm/px ({d['mpp_source']})"
        if d["mpp_x"]
        else (f"unknown{' - ' + d['mpp_note'] if d['mpp_note'] else ''}")
    )
    console.print(f"[bold]{d['path']}[/bold]")
    console.print(f"  vendor: {d['vendor'] or 'unknown'}   reader: {d['backend']}")
    console.print(f"  size: {d['width_px']} x {d['height_px']} px   resolution: {mpp}")
    power = d["objective_power"]
    console.print(f"  objective: {f'{power:g}x' if power else 'unknown'}")
    console.print(f"  associated images: {', '.join(d['associated_images']) or 'none'}")
    table = Table("level", "width px", "height px", "downsample", "µm/px")
    for lv in d["levels"]:
        table.add_row(
            str(lv["index"]),
            str(lv["width_px"]),
            str(lv["height_px"]),
            f"{lv['downsample']:.3f}",
            f"{lv['mpp']:.4f}" if lv["mpp"] else "-",
        )
    console.print(table)
