"""Outputs of the necrosis job: CSV tables, run.json, heatmaps, exporter files, report.html.

The report itself (HTML, heatmaps) is built in :mod:`osteomics.wsi.report_html`.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from osteomics.core.files import (
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from osteomics.wsi.report_html import heatmap_png, write_report

if TYPE_CHECKING:
    import pandas as pd

    from osteomics.wsi.results import NecrosisRun, SlideTiles

log = logging.getLogger(__name__)

SLIDE_COLUMNS = [
    "slide", "case", "path", "status", "reason", "n_tiles", "tile_um", "mpp", "backend",
    "viable_mm2", "necrotic_mm2", "non_tumour_mm2", "necrosis_rate", "viable_tiles", "stain",
    "detected_tissue_mm2", "scored_tissue_mm2", "recognised_tissue_mm2",
]  # fmt: skip
CASE_COLUMNS = [
    "case", "status", "reason", "n_slides", "necrosis_rate", "ci_low", "ci_high", "huvos_grade",
    "responder", "huvos_range", "viable_mm2", "necrotic_mm2", "non_tumour_mm2", "viable_tiles",
    "detected_tissue_mm2", "scored_tissue_mm2", "slides",
]  # fmt: skip


def _cell(value: Any) -> str:
    """CSV text: floats rounded to 4 decimals so outputs are stable across runs and workers."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def table_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def tiles_table(slide: str, tiles: SlideTiles) -> pd.DataFrame:
    """Per-tile data of a scored slide (``slides/<slide>.tiles.parquet``): level-0 pixel
    position and side of each tile, its tissue fraction and one ``p_<class>`` column per
    tissue class (the model's calibrated probabilities)."""
    import pandas as pd

    columns: dict[str, Any] = {
        "slide": [slide] * len(tiles.x_px),
        "x_px": np.asarray(tiles.x_px, dtype=np.int64),
        "y_px": np.asarray(tiles.y_px, dtype=np.int64),
        "side_px": np.full(len(tiles.x_px), float(tiles.side_px)),
        "tissue_fraction": np.asarray(tiles.tissue_fraction, dtype=np.float64),
    }
    for k, name in enumerate(tiles.classes):
        columns[f"p_{name}"] = np.asarray(tiles.probabilities[:, k], dtype=np.float64)
    return pd.DataFrame(columns)


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(image)).save(path, format="PNG")


def write_necrosis_outputs(run: NecrosisRun, out_dir: Path) -> None:
    """Write every output of a necrosis run into ``out_dir`` (atomically, file by file)."""
    from osteomics.core.plugins import discover_plugins

    slides_dir = out_dir / "slides"
    slides_dir.mkdir(exist_ok=True)
    heatmaps: dict[str, bytes] = {}
    exporters, _ = discover_plugins("exporter")
    for row in run.slides:
        tiles = run.tiles.get(row.slide)
        if tiles is not None and row.status in ("ok", "not_assessable"):
            write_atomic(
                slides_dir / f"{row.slide}.thumbnail.png",
                functools.partial(_save_png, tiles.thumbnail),
            )
        if row.status != "ok" or tiles is None:
            continue
        heatmaps[row.slide] = heatmap_png(tiles)
        write_bytes_atomic(slides_dir / f"{row.slide}.heatmap.png", heatmaps[row.slide])
        write_atomic(
            slides_dir / f"{row.slide}.tiles.parquet",
            functools.partial(tiles_table(row.slide, tiles).to_parquet, index=False),
        )
        for exporter in exporters:
            if getattr(exporter.factory, "scope", "slide") != "slide":
                continue  # a run-level exporter (DICOM SR/SEG): `osteomics export-dicom`
            try:
                exporter.factory(row, tiles, slides_dir)
            except Exception as exc:  # an exporter's failure must not lose the results
                log.warning("exporter %s failed for %s: %s", exporter.name, row.slide, exc)
    write_text_atomic(
        out_dir / "necrosis_slides.csv",
        table_csv([asdict(s) for s in run.slides], SLIDE_COLUMNS),
    )
    write_text_atomic(
        out_dir / "necrosis_cases.csv", table_csv([asdict(c) for c in run.cases], CASE_COLUMNS)
    )
    write_report(run, out_dir, heatmaps)
    write_json_atomic(out_dir / "run.json", run.to_dict())
