"""Outputs of the necrosis job: CSV tables, run.json, heatmaps, exporter files, report.html.

The report is one self-contained HTML file (styles inline, heatmaps embedded as PNG data),
readable offline: one section per case with its rate, interval, Huvos grade and responder
status, its slide table, and each slide's heatmap.
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from osteomics.core.files import (
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from osteomics.wsi.necrosis import CLASS_STYLE, TISSUE_CLASSES

if TYPE_CHECKING:
    import pandas as pd

    from osteomics.wsi.results import CaseNecrosis, NecrosisRun, SlideNecrosis, SlideTiles

log = logging.getLogger(__name__)

SLIDE_COLUMNS = [
    "slide", "case", "path", "status", "reason", "n_tiles", "tile_um", "mpp", "backend",
    "viable_mm2", "necrotic_mm2", "non_tumour_mm2", "necrosis_rate", "viable_tiles",
]  # fmt: skip
CASE_COLUMNS = [
    "case", "status", "reason", "n_slides", "necrosis_rate", "ci_low", "ci_high", "huvos_grade",
    "responder", "viable_mm2", "necrotic_mm2", "non_tumour_mm2", "viable_tiles", "slides",
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


def heatmap_png(tiles: SlideTiles, alpha: float = 0.45) -> bytes:
    """The thumbnail with each scored tile tinted by its most probable class, and a legend."""
    base = Image.fromarray(tiles.thumbnail).convert("RGB")
    overlay = np.asarray(base).astype(np.float32).copy()
    scale = 1.0 / tiles.thumbnail_downsample
    colours = np.array([CLASS_STYLE[c][1] for c in TISSUE_CLASSES], dtype=np.float32)
    winners = tiles.area_mm2.argmax(axis=1)
    h, w = overlay.shape[:2]
    for x, y, k in zip(tiles.x_px.tolist(), tiles.y_px.tolist(), winners.tolist(), strict=True):
        x0, y0 = int(x * scale), int(y * scale)
        x1 = min(w, max(x0 + 1, int((x + tiles.side_px) * scale)))
        y1 = min(h, max(y0 + 1, int((y + tiles.side_px) * scale)))
        overlay[y0:y1, x0:x1] = (1 - alpha) * overlay[y0:y1, x0:x1] + alpha * colours[k]
    image = Image.fromarray(overlay.round().astype(np.uint8))
    legend_h = 22
    canvas = Image.new("RGB", (max(image.width, 420), image.height + legend_h), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 6
    for name in TISSUE_CLASSES:
        label, colour = CLASS_STYLE[name]
        draw.rectangle([x, image.height + 5, x + 12, image.height + 17], fill=colour)
        draw.text((x + 16, image.height + 5), label, fill="black")
        x += 20 + int(draw.textlength(label)) + 12
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


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


def write_necrosis_outputs(run: NecrosisRun, out_dir: Path) -> None:
    """Write every output of a necrosis run into ``out_dir`` (atomically, file by file)."""
    from osteomics.core.plugins import discover_plugins

    slides_dir = out_dir / "slides"
    slides_dir.mkdir(exist_ok=True)
    heatmaps: dict[str, bytes] = {}
    exporters, _ = discover_plugins("exporter")
    for row in run.slides:
        tiles = run.tiles.get(row.slide)
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
    write_text_atomic(out_dir / "report.html", report_html(run, heatmaps))
    write_json_atomic(out_dir / "run.json", run.to_dict())


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def report_html(run: NecrosisRun, heatmaps: dict[str, bytes]) -> str:
    """Self-contained HTML: one section per case, heatmaps inline."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>osteomics necrosis report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}",
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;",
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}",
        ".rate{font-size:1.6em;font-weight:600}.error{color:#b00}",
        "figure{display:inline-block;margin:.5em}img{max-width:520px;border:1px solid #ddd}",
        "</style></head><body>",
        "<h1>Histological response to chemotherapy</h1>",
        f"<p>Model <b>{html.escape(str(run.model_card.get('name', '')))}</b> "
        f"(weights sha256 {html.escape(str(run.model_card.get('weights_sha256', ''))[:16])}…), "
        f"run {html.escape(run.started)}. Necrosis rate = necrotic / (necrotic + viable tumour) "
        "area; non-tumour tissue is excluded. Huvos I &lt; 50 %, II 50-89 %, III 90-99 %, "
        "IV no viable tumour: here, no tile classified viable (detection limit: one tile of "
        "the model's field of view, so a smaller viable focus can be missed); good responder "
        "&ge; 90 %. The interval is a 95 % bootstrap over tiles: it "
        "covers which tiles were sampled, not the classifier's own error (see the model card "
        "for its cross-validated accuracy).</p>",
    ]
    slides_by_case: dict[str, list[SlideNecrosis]] = {}
    for s in run.slides:
        slides_by_case.setdefault(s.case, []).append(s)
    for case in run.cases:
        parts.append(_case_section(case, slides_by_case.get(case.case, []), heatmaps))
    if run.interrupted:
        parts.append("<p class='error'>The run was interrupted; results are incomplete.</p>")
    parts.append("<p><small>Research use. Check the maps before reporting.</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _case_section(
    case: CaseNecrosis, slides: list[SlideNecrosis], heatmaps: dict[str, bytes]
) -> str:
    esc = html.escape
    out = [f"<section><h2>Case {esc(case.case)}</h2>"]
    if case.status != "ok":
        out.append(f"<p class='error'>{esc(case.reason)}</p>")
    else:
        rate = _fmt(case.necrosis_rate, " %")
        interval = (
            f"({_fmt(case.ci_low)}-{_fmt(case.ci_high)} %)" if case.ci_low is not None else ""
        )
        out.append(
            f"<p><span class='rate'>Necrosis {rate}</span> {interval} &middot; "
            f"Huvos grade <b>{esc(case.huvos_grade or '-')}</b> &middot; "
            f"<b>{esc(case.responder or '-')}</b> responder &middot; {case.n_slides} slide(s)</p>"
        )
        if case.reason:
            out.append(f"<p>{esc(case.reason)}</p>")
    out.append(
        "<table><tr><th>slide</th><th>status</th><th>tiles</th><th>viable mm²</th>"
        "<th>necrotic mm²</th><th>non-tumour mm²</th><th>necrosis</th></tr>"
    )
    for s in slides:
        status = "ok" if s.status == "ok" else f"<span class='error'>{esc(s.reason)}</span>"
        out.append(
            f"<tr><td>{esc(s.slide)}</td><td>{status}</td><td>{s.n_tiles}</td>"
            f"<td>{_fmt(s.viable_mm2, digits=2)}</td><td>{_fmt(s.necrotic_mm2, digits=2)}</td>"
            f"<td>{_fmt(s.non_tumour_mm2, digits=2)}</td>"
            f"<td>{_fmt(s.necrosis_rate, ' %')}</td></tr>"
        )
    out.append("</table>")
    for s in slides:
        if s.slide in heatmaps:
            data = base64.b64encode(heatmaps[s.slide]).decode("ascii")
            out.append(
                f"<figure><img alt='heatmap of {esc(s.slide)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{esc(s.slide)}</figcaption></figure>"
            )
    out.append("</section>")
    return "\n".join(out)
