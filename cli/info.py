"""``osteomics info SLIDE``: what is in a slide file, and whether its pixels decode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from osteomics.wsi.errors import SlideReadError
from osteomics.wsi.slide import Slide, open_slide

CHECK_PX = 256
"""Side of the tile read from the centre of each level to check that its pixels decode."""


def check_levels(slide: Slide) -> list[str | None]:
    """Read one tile from the centre of every level; per level, ``None`` or why it failed.

    Parameters
    ----------
    slide:
        An open slide.

    Returns
    -------
    list of str or None
        One entry per level: ``None`` when the tile decoded, else the reader's message.
    """
    results: list[str | None] = []
    for level in slide.info.levels:
        w, h = min(CHECK_PX, level.width_px), min(CHECK_PX, level.height_px)
        x = round((level.width_px - w) / 2 * level.downsample)
        y = round((level.height_px - h) / 2 * level.downsample)
        try:
            slide.read_region((x, y), level.index, (w, h))
            results.append(None)
        except SlideReadError as exc:
            results.append(str(exc))
    return results


def info(
    slide: Path = typer.Argument(..., help="Slide file, or folder of one DICOM WSI series."),
    backend: str = typer.Option("auto", help="auto, openslide, tiffslide or wsidicom."),
    mpp_override: float | None = typer.Option(
        None, "--mpp-override", help="Level-0 µm/px to use instead of the file's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="node.toml, for a remote slide dicomweb:REMOTE/<StudyUID>/<SeriesUID> "
        "(REMOTE a DICOMweb remote of it; only the tiles read are downloaded).",
    ),
) -> None:
    """Vendor, reader, levels, dimensions, downsamples, µm/px, objective, associated images.

    One tile from the centre of every level is decoded, to check the pixel data: a slide whose
    tiles do not decode (a damaged or truncated file) is reported, with exit code 1.
    """
    source: Any = slide
    if str(slide).startswith("dicomweb:"):
        from osteomics.plugins.dicomweb_connector import remote_slide_source
        from osteomics.radiology.config import load_node_config
        from osteomics.radiology.errors import NodeConfigError

        if config is None:
            raise NodeConfigError(f"{slide} is a remote slide: give --config node.toml")
        source = remote_slide_source(load_node_config(config), str(slide))
    with open_slide(source, backend, mpp_override) as opened:
        description = opened.info.to_dict()
        errors = check_levels(opened)
    for level, error in zip(description["levels"], errors, strict=True):
        level["decodes"] = error is None
    description["decodes"] = all(error is None for error in errors)
    failed = [(i, e) for i, e in enumerate(errors) if e is not None]
    if as_json:
        typer.echo(json.dumps(description, indent=2))
    else:
        _print(description)
    if failed:
        more = f" (levels {', '.join(str(i) for i, _ in failed)} do not decode)"
        typer.secho(
            f"error: {failed[0][1]}{more if len(failed) > 1 else ''}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1)


def _print(description: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    d: Any = description
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
    table = Table("level", "width px", "height px", "downsample", "µm/px", "pixels")
    for lv in d["levels"]:
        table.add_row(
            str(lv["index"]),
            str(lv["width_px"]),
            str(lv["height_px"]),
            f"{lv['downsample']:.3f}",
            f"{lv['mpp']:.4f}" if lv["mpp"] else "-",
            "ok" if lv["decodes"] else "[red]damaged[/red]",
        )
    console.print(table)
