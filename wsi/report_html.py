"""The necrosis report (report.html) and the per-slide heatmaps it shows.

The report is one self-contained HTML file (styles inline, heatmaps embedded as PNG data),
readable offline: one section per case with its rate, interval, Huvos grade and responder
status, its slide table, and each slide's heatmap.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from osteomics.wsi.necrosis import CLASS_STYLE, TISSUE_CLASSES

if TYPE_CHECKING:
    from osteomics.wsi.results import CaseNecrosis, NecrosisRun, SlideNecrosis, SlideTiles


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
