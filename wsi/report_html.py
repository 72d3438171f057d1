"""The necrosis report (``report.html``) a pathologist can check, and the per-slide heatmaps.

``report.html`` is one self-contained file (styles, scripts and images inline as data URIs), so
it can be mailed or archived alone and read offline. Per case: rate, interval (and how it was
made), Huvos grade (or "uncertain" with the grades the interval spans, or "not assessable"
with why), responder status, case details from the cases file, and a slide table with scored
vs detected tissue. Per slide: the plain H&E thumbnail beside the class map (opacity slider,
optional tile grid), both with a scale bar in mm, a legend (class, colour, area, share), and a
link to the slide's pan/zoom viewer (:mod:`osteomics.wsi.viewer`, files under ``viewer/``:
the only part of the report that is not inline). The model's validated figures and known limits
are stated at the top, from its model card.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image, ImageDraw

from osteomics import OsteomicsError
from osteomics.core.files import write_text_atomic
from osteomics.wsi.necrosis import CLASS_STYLE, TISSUE_CLASSES
from osteomics.wsi.viewer import ViewerPage, ViewerUnavailable, write_slide_viewer

if TYPE_CHECKING:
    from osteomics.wsi.results import CaseNecrosis, NecrosisRun, SlideNecrosis, SlideTiles

log = logging.getLogger(__name__)

ViewerResult: TypeAlias = ViewerPage | ViewerUnavailable


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


#: Lengths a scale bar may take, in mm (the longest that fits a quarter of the image is used).
SCALE_BAR_MM = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


@dataclass(frozen=True)
class ScaleBar:
    """A scale bar on an image of the slide."""

    length_mm: float
    length_px: float
    """Its length in pixels of the image."""
    image_width_px: int


def scale_bar(mpp: float | None, downsample: float, image_width_px: int) -> ScaleBar | None:
    """The scale bar of an image ``downsample`` level-0 pixels per pixel, of a slide of ``mpp``
    µm per level-0 pixel; None when the slide has no µm/px."""
    if not mpp or mpp <= 0 or downsample <= 0 or image_width_px <= 0:
        return None
    px_per_mm = 1000.0 / (mpp * downsample)
    fitting = [mm for mm in SCALE_BAR_MM if mm * px_per_mm <= image_width_px / 4]
    length_mm = fitting[-1] if fitting else SCALE_BAR_MM[0]
    return ScaleBar(length_mm, length_mm * px_per_mm, image_width_px)


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(out, format="JPEG", quality=85)
    else:
        image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _tile_boxes(tiles: SlideTiles, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Each tile's box on the thumbnail (x0, y0, x1, y1), at least one pixel wide."""
    scale = 1.0 / tiles.thumbnail_downsample
    boxes = []
    for x, y in zip(tiles.x_px.tolist(), tiles.y_px.tolist(), strict=True):
        x0, y0 = int(x * scale), int(y * scale)
        x1 = min(width, max(x0 + 1, int((x + tiles.side_px) * scale)))
        y1 = min(height, max(y0 + 1, int((y + tiles.side_px) * scale)))
        boxes.append((x0, y0, x1, y1))
    return boxes


def class_map_rgba(tiles: SlideTiles) -> np.ndarray:
    """The class map at thumbnail size: each scored tile opaque in the colour of its most
    probable class, transparent elsewhere (shown over the thumbnail at a chosen opacity)."""
    h, w = tiles.thumbnail.shape[:2]
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    winners = np.asarray(tiles.area_mm2).argmax(axis=1) if len(tiles.x_px) else []
    for (x0, y0, x1, y1), k in zip(_tile_boxes(tiles, w, h), winners, strict=True):
        rgba[y0:y1, x0:x1] = (*CLASS_STYLE[TISSUE_CLASSES[int(k)]][1], 255)
    return rgba


def grid_rgba(tiles: SlideTiles) -> np.ndarray:
    """The outlines of the scored tiles at thumbnail size (black, transparent elsewhere)."""
    h, w = tiles.thumbnail.shape[:2]
    image = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in _tile_boxes(tiles, w, h):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 0, 0, 200))
    return np.asarray(image)


def full_model_card(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The whole model card of the run's model (validation figures, confound), when the model
    can still be found by name and its weights are the run's (same SHA-256); else ``{}``."""
    from osteomics.wsi.model import CARD_FILE, resolve_model

    try:
        card = json.loads((resolve_model(str(summary.get("name", ""))) / CARD_FILE).read_text())
    except (OsteomicsError, OSError, ValueError):
        return {}
    if not isinstance(card, dict) or card.get("weights_sha256") != summary.get("weights_sha256"):
        return {}
    return card


def model_section(summary: Mapping[str, Any], tile_um: float | None) -> str:
    """What the model was validated on, how well, and what it cannot do (from its card)."""
    esc = html.escape
    card = full_model_card(summary)
    cv = card.get("cross_validation") or {}
    items = []
    accuracy = cv.get("accuracy", summary.get("cv_accuracy"))
    if accuracy is not None:
        macro = cv.get("macro_f1", summary.get("cv_macro_f1"))
        grouping = cv.get("grouping", summary.get("cv_grouping")) or "?"
        folds = f"{cv['n_folds']}-fold " if cv.get("n_folds") else ""
        n = f" on {cv['n']} tiles" if cv.get("n") else ""
        recall = cv.get("recall") or {}
        recall_text = (
            "; recall " + ", ".join(f"{esc(str(k))} {v:.2f}" for k, v in recall.items())
            if isinstance(recall, dict) and recall
            else ""
        )
        items.append(
            f"{folds}cross-validation grouped by {esc(str(grouping))}{n}: tile accuracy "
            f"<b>{accuracy:.2f}</b>, macro-F1 {_fmt(macro, digits=2)}{recall_text}. Tiles of "
            "one patient are in training and test folds alike, so this is an upper bound "
            "for a new patient."
        )
    lopo = cv.get("leave_one_patient_out") or {}
    if isinstance(lopo, dict) and lopo:
        parts = []
        for patient, fig in lopo.items():
            if not isinstance(fig, dict):
                continue
            text = f"{esc(str(patient))} ({fig.get('n', '?')} tiles): 3-class accuracy "
            text += _fmt(fig.get("accuracy"), digits=2)
            if fig.get("tumour_vs_non_tumour_accuracy") is not None:
                text += f", tumour vs non-tumour {fig['tumour_vs_non_tumour_accuracy']:.2f}"
            parts.append(text)
        items.append(
            "Leave one patient out (the patient's tiles never seen in training): "
            + "; ".join(parts)
            + ". Where the left-out patient carried nearly all of one tumour class, that class "
            "was barely in training: the weak point is tumour of an unseen patient."
        )
    confound = card.get("confound") or {}
    if isinstance(confound, dict) and confound.get("problem"):
        items.append(f"Confound: {esc(str(confound['problem']))}")
    flip = cv.get("restain_flip_rate")
    if flip is not None:
        items.append(
            f"Re-stained with the other patients' stains, {100 * flip:.1f} % of tiles change class."
        )
    if not card:
        items.append(
            "The full model card was not found next to this installation (or its weights "
            "differ from the run's): only the figures recorded in run.json are shown."
        )
    detection = f"{tile_um:.0f} µm" if tile_um else "one tile of the model's field of view"
    limits = [
        f"Detection limit: one tile ({detection} square). Grade IV means no tile classified "
        "viable; a viable focus smaller than a tile can be missed.",
        _training_limit(card),
        "Made for H&amp;E-stained osteosarcoma resections after chemotherapy only: slides that "
        "fail the stain check, or hold too little tumour to grade, are reported "
        '"not assessable" instead of graded.',
        "Areas are split by calibrated probabilities (as in the rate); the class map shows "
        "each tile's most probable class only.",
    ]
    card_limits = card.get("known_limits")  # a card may state its own (list of sentences)
    if isinstance(card_limits, list):
        limits.extend(esc(str(limit)) for limit in card_limits)
    return "\n".join(
        [
            "<section class='model'><h2>The model: validated figures and known limits</h2>",
            f"<p>Model <b>{esc(str(summary.get('name', '')))}</b> (weights sha256 "
            f"{esc(str(summary.get('weights_sha256', ''))[:16])}…).</p><ul>",
            *(f"<li>{item}</li>" for item in items),
            "</ul><p><b>Known limits</b></p><ul>",
            *(f"<li>{item}</li>" for item in limits),
            "</ul></section>",
        ]
    )


def _training_limit(card: Mapping[str, Any]) -> str:
    """Which data the figures come from (patients and folder of the card's training data)."""
    training = card.get("training") or {}
    by_case = training.get("counts_by_case") or {} if isinstance(training, dict) else {}
    patients = sorted(
        {str(p) for counts in by_case.values() if isinstance(counts, dict) for p in counts}
    )
    where = (
        f"{training.get('n_images', '?')} tiles of {len(patients)} patient(s) "
        f"({html.escape(', '.join(patients))}) from {html.escape(str(training.get('folder')))}"
        if patients
        else "the data its model card names"
    )
    return (
        f"Trained and validated on {where} only (one stain, one scanner): a new site's stain, "
        "scanner or tissue mix may lower accuracy; check a new cohort with "
        "<code>osteomics evaluate</code>."
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1150px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.rate{font-size:1.6em;font-weight:600}.error{color:#b00}.na{color:#8a4b00;font-weight:600}
.slide{margin:1em 0;padding-top:.5em;border-top:1px solid #ddd}
.pair{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start}
.pane{width:min(480px,45vw);margin:0}.stack{position:relative}
.stack img{display:block;width:100%;border:0}.stack img.layer{position:absolute;left:0;top:0}
.stack img.grid{display:none}
.sb{position:absolute;left:8px;bottom:8px;height:4px;background:#000;border:1px solid #fff}
.sb span{position:absolute;bottom:7px;left:0;font-size:12px;white-space:nowrap;
background:rgba(255,255,255,.85);padding:0 3px}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #555;vertical-align:middle}
.legend td{text-align:right}.legend td:nth-child(2){text-align:left}
figcaption{font-size:.9em;color:#444}.controls{font-size:.9em;margin:.3em 0}
"""

SCRIPT = """
document.querySelectorAll('input.opacity').forEach(function (i) {
  i.addEventListener('input', function () {
    document.getElementById(i.dataset.target).style.opacity = i.value / 100;
  });
});
document.querySelectorAll('input.gridtoggle').forEach(function (i) {
  i.addEventListener('change', function () {
    document.getElementById(i.dataset.target).style.display = i.checked ? 'block' : 'none';
  });
});
"""


def report_html(
    run: NecrosisRun,
    heatmaps: Mapping[str, bytes] | None = None,
    viewers: Mapping[str, ViewerResult] | None = None,
) -> str:
    """The report: one self-contained HTML page (images inline), one section per case.

    ``heatmaps`` are only used for a slide whose per-tile data is not in ``run.tiles``;
    ``viewers`` (slide name -> written page or why none) adds each slide's viewer link.
    """
    esc = html.escape
    confidence = getattr(run.parameters, "confidence", 0.95)
    tile_um = next((s.tile_um for s in run.slides if s.tile_um), None)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>osteomics necrosis report</title><style>{STYLE}</style></head><body>",
        "<h1>Histological response to chemotherapy</h1>",
        "<p><small>This page holds its images; click a class map to open the slide's "
        "zoomable viewer (the <code>viewer/</code> folder next to this file: keep them "
        "together when copying the report).</small></p>",
        f"<p>Run {esc(run.started)}. Necrosis rate = necrotic / (necrotic + viable tumour) "
        "area; non-tumour tissue is excluded. Huvos I &lt; 50 %, II 50-89 %, III 90-99 %, "
        "IV no viable tumour (here: no tile classified viable); good responder &ge; 90 %. "
        f"{_interval_text(run, confidence)} When the interval crosses a Huvos or responder "
        "cut-off the grade or the responder status is reported as uncertain.</p>",
    ]
    slides_by_case: dict[str, list[SlideNecrosis]] = {}
    for s in run.slides:
        slides_by_case.setdefault(s.case, []).append(s)
    counter = iter(range(10**9))
    for case in run.cases:
        parts.append(
            _case_section(
                case,
                slides_by_case.get(case.case, []),
                run.tiles,
                heatmaps or {},
                viewers or {},
                counter,
            )
        )
    if run.interrupted:
        parts.append("<p class='error'>The run was interrupted; results are incomplete.</p>")
    parts.append(model_section(run.model_card, tile_um))
    parts.append("<p><small>Research use. Check the maps before reporting.</small></p>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _interval_text(run: NecrosisRun, confidence: float) -> str:
    """What the run's interval covers: with the model's cross-validated confusion, the
    classifier's own error too; without, tile sampling only."""
    if getattr(run, "confusion", None) is not None:
        return (
            f"The interval is a {100 * confidence:.0f} % interval of the classifier's own "
            "error: each tile's true class is drawn from its calibrated class probabilities "
            "(neighbouring tiles, in blocks of 3 x 3, drawn together), shifted by the class-mix "
            "correction from the model's cross-validated misclassification rates (each case "
            "names its method). It assumes those error rates hold on this case; it cannot cover "
            "a model that fails on a new patient (see the limits below)."
        )
    return (
        f"The interval is a {100 * confidence:.0f} % interval of the tiles' calibrated class "
        "probabilities only: <b>not the classifier's class-mix bias</b> (the model card has no "
        "cross-validated confusion matrix; read the model's figures below)."
    )


def _case_result(case: CaseNecrosis) -> str:
    esc = html.escape
    if case.status == "not_assessable":
        return f"<p class='na'>Not assessable: {esc(case.reason)}</p>"
    if case.status != "ok":
        return f"<p class='error'>{esc(case.reason)}</p>"
    rate = _fmt(case.necrosis_rate, " %")
    interval = f"({_fmt(case.ci_low)}-{_fmt(case.ci_high)} %)" if case.ci_low is not None else ""
    grade = case.huvos_grade or "-"
    huvos_range = getattr(case, "huvos_range", None)
    if grade == "uncertain":
        spans = f" (the interval spans grades {esc(huvos_range)})" if huvos_range else ""
        grade_text = f"Huvos grade <b>uncertain</b>{spans}"
    else:
        grade_text = f"Huvos grade <b>{esc(grade)}</b>"
    if case.responder == "uncertain":
        responder_text = "responder status <b>uncertain</b> (the interval crosses 90 %)"
    else:
        responder_text = f"<b>{esc(case.responder or '-')}</b> responder"
    out = [
        f"<p><span class='rate'>Necrosis {rate}</span> {interval} &middot; {grade_text} "
        f"&middot; {responder_text} &middot; {case.n_slides} slide(s)</p>"
    ]
    method = getattr(case, "interval_method", None)
    if method:
        out.append(f"<p><small>Interval: {esc(method)}.</small></p>")
    if case.reason:
        out.append(f"<p>{esc(case.reason)}</p>")
    return "\n".join(out)


def _case_section(
    case: CaseNecrosis,
    slides: list[SlideNecrosis],
    tiles: Mapping[str, SlideTiles],
    heatmaps: Mapping[str, bytes],
    viewers: Mapping[str, ViewerResult],
    counter: Any,
) -> str:
    esc = html.escape
    out = [f"<section><h2>Case {esc(case.case)}</h2>", _case_result(case)]
    details = getattr(case, "details", None) or {}
    if details:
        out.append("<table class='details'><tr><th colspan='2'>from the cases file</th></tr>")
        out.extend(
            f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in details.items()
        )
        out.append("</table>")
    detected = getattr(case, "detected_tissue_mm2", None)
    scored = getattr(case, "scored_tissue_mm2", None)
    if detected is not None or scored is not None:
        out.append(
            f"<p>Tissue scored {_fmt(scored, ' mm²', 2)} of {_fmt(detected, ' mm²', 2)} "
            "detected (tiles with too little tissue are not scored).</p>"
        )
    out.append(
        "<table><tr><th>slide</th><th>status</th><th>tiles</th><th>detected tissue mm²</th>"
        "<th>scored tissue mm²</th><th>viable mm²</th><th>necrotic mm²</th>"
        "<th>non-tumour mm²</th><th>necrosis</th></tr>"
    )
    for s in slides:
        if s.status == "ok":
            status = "ok"
        elif s.status == "not_assessable":
            status = f"<span class='na'>not assessable: {esc(s.reason)}</span>"
        else:
            status = f"<span class='error'>{esc(s.reason)}</span>"
        out.append(
            f"<tr><td>{esc(s.slide)}</td><td>{status}</td><td>{s.n_tiles}</td>"
            f"<td>{_fmt(getattr(s, 'detected_tissue_mm2', None), digits=2)}</td>"
            f"<td>{_fmt(getattr(s, 'scored_tissue_mm2', None), digits=2)}</td>"
            f"<td>{_fmt(s.viable_mm2, digits=2)}</td><td>{_fmt(s.necrotic_mm2, digits=2)}</td>"
            f"<td>{_fmt(s.non_tumour_mm2, digits=2)}</td>"
            f"<td>{_fmt(s.necrosis_rate, ' %')}</td></tr>"
        )
    out.append("</table>")
    for s in slides:
        if s.slide in tiles:
            out.append(_slide_block(s, tiles[s.slide], viewers.get(s.slide), next(counter)))
        elif s.slide in heatmaps:
            out.append(
                f"<figure><img alt='heatmap of {esc(s.slide)}' "
                f"src='{_data_uri(heatmaps[s.slide], 'image/png')}' style='max-width:520px'>"
                f"<figcaption>{esc(s.slide)}</figcaption></figure>"
            )
    out.append("</section>")
    return "\n".join(out)


def _scale_bar_html(bar: ScaleBar | None) -> str:
    if bar is None:
        return ""
    width = 100.0 * bar.length_px / bar.image_width_px
    return (
        f"<div class='sb' data-mm='{bar.length_mm:g}' data-px='{bar.length_px:.2f}' "
        f"style='width:{width:.3f}%'><span>{bar.length_mm:g} mm</span></div>"
    )


def legend_html(s: SlideNecrosis) -> str:
    """Class, colour, area (mm², probability-weighted as in the rate) and share of the slide's
    classified area."""
    areas = {name: getattr(s, f"{name}_mm2", None) for name in TISSUE_CLASSES}
    total = sum(a for a in areas.values() if a is not None)
    rows = ["<table class='legend'><tr><th></th><th>class</th><th>area mm²</th><th>share</th></tr>"]
    for name in TISSUE_CLASSES:
        label, colour = CLASS_STYLE[name]
        area = areas[name]
        share = f"{100 * area / total:.1f} %" if area is not None and total > 0 else "-"
        rows.append(
            f"<tr data-class='{name}'><td><span class='sw' style='background:rgb{colour}'>"
            f"</span></td><td>{html.escape(label)}</td><td>{_fmt(area, digits=2)}</td>"
            f"<td>{share}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _slide_block(
    s: SlideNecrosis, tiles: SlideTiles, viewer: ViewerResult | None, index: int
) -> str:
    esc = html.escape
    thumb = Image.fromarray(tiles.thumbnail).convert("RGB")
    bar = _scale_bar_html(scale_bar(s.mpp, tiles.thumbnail_downsample, thumb.width))
    thumb_uri = _data_uri(_encode(thumb, "JPEG"), "image/jpeg")
    map_uri = _data_uri(_encode(Image.fromarray(class_map_rgba(tiles), "RGBA"), "PNG"), "image/png")
    grid_uri = _data_uri(_encode(Image.fromarray(grid_rgba(tiles), "RGBA"), "PNG"), "image/png")
    map_id, grid_id = f"map-{index}", f"grid-{index}"
    name = esc(s.slide)
    if isinstance(viewer, ViewerPage):
        href = esc(viewer.page)
        link_open, link_close = f"<a href='{href}' title='open the zoomable viewer'>", "</a>"
        viewer_text = (
            f"<a href='{href}'>Open the zoomable viewer</a> (click the class map; "
            f"{viewer.width_px} x {viewer.height_px} px"
            + (f" at {viewer.um_per_px:.2f} µm/px" if viewer.um_per_px else "")
            + ")"
        )
    else:
        link_open = link_close = ""
        why = viewer.reason if isinstance(viewer, ViewerUnavailable) else "not written"
        viewer_text = f"<span class='error'>viewer not available: {esc(why)}</span>"
    return "\n".join(
        [
            f"<div class='slide' data-slide='{name}'><h3>Slide {name}</h3><div class='pair'>",
            f"<figure class='pane plain'><div class='stack'><img alt='H&amp;E thumbnail of "
            f"{name}' src='{thumb_uri}'>{bar}</div><figcaption>H&amp;E</figcaption></figure>",
            f"<figure class='pane classmap'><div class='stack'>{link_open}"
            "<img alt='H&amp;E under the class map' "
            f"src='{thumb_uri}'><img class='layer' id='{map_id}' style='opacity:0.45' "
            f"alt='class map of {name}' src='{map_uri}'><img class='layer grid' id='{grid_id}' "
            f"alt='tile grid' src='{grid_uri}'>{link_close}{bar}</div>"
            "<figcaption>class map (most probable class per tile)</figcaption></figure>",
            f"<div>{legend_html(s)}<div class='controls'><label>class map opacity "
            f"<input type='range' class='opacity' data-target='{map_id}' min='0' max='100' "
            f"value='45'></label><br><label><input type='checkbox' class='gridtoggle' "
            f"data-target='{grid_id}'> tile grid</label></div><p>{viewer_text}</p></div>",
            "</div></div>",
        ]
    )


def write_report(
    run: NecrosisRun,
    out_dir: Path,
    heatmaps: Mapping[str, bytes] | None = None,
    write_viewer: bool = True,
) -> dict[str, ViewerResult]:
    """Write ``report.html`` into ``out_dir``, and (``write_viewer``) each scored slide's
    pan/zoom viewer under ``out_dir/viewer/``. Returns the viewer result of each slide.

    A slide that cannot be re-opened gets "viewer not available" in the report; the rest of the
    report does not depend on the slide file.
    """
    viewers: dict[str, ViewerResult] = {}
    mpp_override = getattr(run.parameters, "mpp_override", None)
    for s in run.slides:
        if s.slide not in run.tiles:
            continue
        if not write_viewer:
            viewers[s.slide] = ViewerUnavailable(s.slide, "not written (write_viewer off)")
            continue
        try:
            viewers[s.slide] = write_slide_viewer(s, run.tiles[s.slide], out_dir, mpp_override)
        except (OsteomicsError, OSError) as exc:  # the report must not be lost for a viewer
            log.warning("viewer of %s not written: %s", s.slide, exc)
            viewers[s.slide] = ViewerUnavailable(s.slide, f"could not be written ({exc})")
    write_text_atomic(out_dir / "report.html", report_html(run, heatmaps, viewers))
    return viewers
