"""Offline pan/zoom viewer of a scored slide with its class overlay (``RUN_DIR/viewer/``).

Per slide the run folder gets, under ``viewer/``:

- ``<stem>_files/<level>/<col>_<row>.jpeg``: a DeepZoom-style JPEG tile pyramid (256 px tiles, no
  overlap; level ``L`` is the image halved ``max_level - L`` times) of the slide read at a bounded
  resolution: at most :data:`MAX_SIDE_PX` on the long side, and otherwise a whole number of
  level-0 pixels per pixel, the one nearest :data:`TARGET_MPP` µm/px without exceeding it;
- ``<stem>_overlay_<class>.png``: one RGBA image per tissue class, one block of
  ``overlay_block_px`` pixels per grid tile, opaque in the class colour where the tile's most
  probable class is that class, transparent elsewhere;
- ``<stem>.html``: the viewer page (OpenSeadragon, vendored under ``viewer/osd/``), with an
  opacity slider, one toggle per class, a legend and a scale bar.

Everything is referenced by relative paths and defined inline (no ``.dzi``/``.json`` fetch), so the
page works from ``file://`` without a network or a server.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from osteomics import OsteomicsError
from osteomics.core.files import write_bytes_atomic, write_text_atomic
from osteomics.wsi.necrosis import CLASS_STYLE, TISSUE_CLASSES

if TYPE_CHECKING:
    from osteomics.wsi.results import SlideNecrosis, SlideTiles

log = logging.getLogger(__name__)

VIEWER_DIR = "viewer"
"""Folder of the viewer pages inside a run folder."""
ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "openseadragon"
"""The vendored OpenSeadragon (copied into ``viewer/osd/`` of each run)."""
TILE_PX = 256
MAX_SIDE_PX = 8192
TARGET_MPP = 2.0
JPEG_QUALITY = 80
OVERLAY_MAX_SIDE_PX = 2048
"""Upper bound of the class overlay's long side (blocks shrink to fit, at least 1 px a tile)."""


@dataclass(frozen=True)
class GridShape:
    """Tile grid of a scored slide: column and row of each tile, and the grid's extent."""

    cols: np.ndarray
    rows: np.ndarray
    n_cols: int
    n_rows: int
    side_px: float
    """Level-0 pixels per tile."""


@dataclass(frozen=True)
class ViewerPage:
    """A written viewer page of one slide."""

    slide: str
    page: str
    """Path of the page relative to the run folder (``viewer/<stem>.html``)."""
    width_px: int
    height_px: int
    """Size of the pyramid's finest level."""
    downsample: float
    """Level-0 pixels per pixel of the pyramid's finest level."""
    um_per_px: float | None
    """µm per pixel of the pyramid's finest level (None when the slide has no µm/px)."""
    max_level: int
    n_tiles: int
    overlay_block_px: int
    grid_cols: int
    grid_rows: int
    seconds: float


@dataclass(frozen=True)
class ViewerUnavailable:
    """Why a slide has no viewer page (the rest of the report does not depend on it)."""

    slide: str
    reason: str


def page_stem(slide: str) -> str:
    """A file-name-safe stem for a slide name (user text): letters, digits, ``._-`` kept; a short
    hash of the name appended when anything was replaced, so two names never collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", slide).strip("._") or "slide"
    if safe != slide:
        safe = f"{safe[:80]}-{hashlib.sha1(slide.encode('utf-8')).hexdigest()[:8]}"
    return safe


def grid_shape(tiles: SlideTiles) -> GridShape:
    """Column and row of each scored tile on its grid (the grid starts at level-0 pixel 0)."""
    side = float(tiles.side_px)
    cols = np.rint(np.asarray(tiles.x_px, dtype=np.float64) / side).astype(np.int64)
    rows = np.rint(np.asarray(tiles.y_px, dtype=np.float64) / side).astype(np.int64)
    n_cols = int(cols.max()) + 1 if cols.size else 1
    n_rows = int(rows.max()) + 1 if rows.size else 1
    return GridShape(cols, rows, n_cols, n_rows, side)


def overlay_block_px(grid: GridShape) -> int:
    """Pixels per tile in the overlay PNGs: as many as fit :data:`OVERLAY_MAX_SIDE_PX`, up to 16."""
    return max(1, min(16, OVERLAY_MAX_SIDE_PX // max(grid.n_cols, grid.n_rows)))


def class_overlays(tiles: SlideTiles, grid: GridShape, block_px: int) -> dict[str, Image.Image]:
    """One RGBA image per tissue class: the class colour on the tiles whose most probable class
    it is, transparent elsewhere; ``(n_cols * block_px, n_rows * block_px)`` pixels."""
    winners = np.asarray(tiles.area_mm2).argmax(axis=1) if len(tiles.x_px) else np.zeros(0, int)
    out: dict[str, Image.Image] = {}
    for k, name in enumerate(TISSUE_CLASSES):
        grid_rgba = np.zeros((grid.n_rows, grid.n_cols, 4), dtype=np.uint8)
        mine = winners == k
        grid_rgba[grid.rows[mine], grid.cols[mine]] = (*CLASS_STYLE[name][1], 255)
        image = Image.fromarray(grid_rgba, mode="RGBA")
        if block_px > 1:
            image = image.resize(
                (grid.n_cols * block_px, grid.n_rows * block_px), Image.Resampling.NEAREST
            )
        out[name] = image
    return out


def viewer_max_side_px(width0: int, height0: int, mpp: float | None) -> int:
    """Long side of the pyramid's finest level: at most :data:`MAX_SIDE_PX`, and the whole
    level-0 pixels per pixel nearest :data:`TARGET_MPP` µm/px (not coarser) when the slide's
    µm/px is known and that is smaller."""
    long0 = max(width0, height0)
    side = min(MAX_SIDE_PX, long0)
    if mpp:
        factor = max(1, math.floor(TARGET_MPP / mpp + 1e-9))
        side = min(side, math.ceil(long0 / factor))
    return max(1, side)


def write_pyramid(image: Image.Image, folder: Path) -> tuple[int, int]:
    """Write ``image`` as DeepZoom JPEG tiles under ``folder`` (``<level>/<col>_<row>.jpeg``).

    Returns the maximum level and the number of tiles written. The folder is built beside its
    final place and renamed into it, so a reader never sees half a pyramid.
    """
    width, height = image.size
    max_level = max(0, math.ceil(math.log2(max(width, height))))
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    n_tiles = 0
    level_image = image
    for level in range(max_level, -1, -1):
        level_dir = staging / str(level)
        level_dir.mkdir(parents=True)
        w, h = level_image.size
        for col in range(math.ceil(w / TILE_PX)):
            for row in range(math.ceil(h / TILE_PX)):
                box = (col * TILE_PX, row * TILE_PX, min(w, (col + 1) * TILE_PX),
                       min(h, (row + 1) * TILE_PX))  # fmt: skip
                level_image.crop(box).save(
                    level_dir / f"{col}_{row}.jpeg", format="JPEG", quality=JPEG_QUALITY
                )
                n_tiles += 1
        if level:
            level_image = level_image.resize(
                (max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))), Image.Resampling.BOX
            )
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return max_level, n_tiles


def copy_assets(viewer_dir: Path) -> None:
    """Copy the vendored OpenSeadragon into ``viewer_dir/osd`` (once per run folder)."""
    target = viewer_dir / "osd"
    if (target / "openseadragon.js").exists():
        return
    shutil.copytree(ASSETS_DIR, target, dirs_exist_ok=True)


def write_slide_viewer(
    row: SlideNecrosis,
    tiles: SlideTiles,
    run_dir: Path,
    mpp_override: float | None = None,
) -> ViewerPage | ViewerUnavailable:
    """Write the viewer page, pyramid and overlays of one scored slide into ``run_dir/viewer``.

    The slide is re-opened from ``row.path``; when it cannot be (moved since the run, e.g. for
    ``--from-run``), nothing is written and the reason is returned instead.
    """
    from osteomics.wsi.slide import open_slide

    started = time.perf_counter()
    path = Path(row.path)
    if not path.exists():
        return ViewerUnavailable(row.slide, f"slide not found at {path}")
    try:
        with open_slide(path, row.backend or "auto", mpp_override) as slide:
            info = slide.info
            mpp = row.mpp or info.mpp
            max_side = viewer_max_side_px(info.width_px, info.height_px, mpp)
            pixels, downsample = slide.read_thumbnail(max_side)
    except (OsteomicsError, OSError) as exc:
        return ViewerUnavailable(row.slide, f"cannot read the slide at {path}: {exc}")
    viewer_dir = run_dir / VIEWER_DIR
    viewer_dir.mkdir(parents=True, exist_ok=True)
    copy_assets(viewer_dir)
    stem = page_stem(row.slide)
    image = Image.fromarray(pixels)
    max_level, n_tiles = write_pyramid(image, viewer_dir / f"{stem}_files")
    grid = grid_shape(tiles)
    block = overlay_block_px(grid)
    overlays = {}
    for name, overlay in class_overlays(tiles, grid, block).items():
        file = f"{stem}_overlay_{name}.png"
        write_bytes_atomic(viewer_dir / file, _png(overlay))
        overlays[name] = file
    um_per_px = mpp * downsample if mpp else None
    page = ViewerPage(
        slide=row.slide,
        page=f"{VIEWER_DIR}/{stem}.html",
        width_px=image.width,
        height_px=image.height,
        downsample=float(downsample),
        um_per_px=um_per_px,
        max_level=max_level,
        n_tiles=n_tiles,
        overlay_block_px=block,
        grid_cols=grid.n_cols,
        grid_rows=grid.n_rows,
        seconds=0.0,
    )
    areas = {
        name: getattr(row, f"{name}_mm2", None) for name in TISSUE_CLASSES
    }  # the run's figures, shown in the legend
    write_text_atomic(
        viewer_dir / f"{stem}.html",
        viewer_html(page, stem, overlays, areas, grid),
    )
    seconds = time.perf_counter() - started
    log.info("viewer of %s: %d tiles in %.1f s", row.slide, n_tiles, seconds)
    return ViewerPage(**{**page.__dict__, "seconds": seconds})


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def js_literal(value: Any) -> str:
    """JSON for a ``<script>`` block: ``<``, ``>``, ``&`` escaped so user text cannot close it."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def viewer_html(
    page: ViewerPage,
    stem: str,
    overlays: dict[str, str],
    areas_mm2: dict[str, float | None],
    grid: GridShape,
) -> str:
    """The viewer page: tile source and overlays defined inline, every file relative."""
    esc = html.escape
    total = sum(a for a in areas_mm2.values() if a is not None)
    config = {
        "width": page.width_px,
        "height": page.height_px,
        "tileSize": TILE_PX,
        "maxLevel": page.max_level,
        "tiles": f"{stem}_files/",
        # Overlay extent in viewport units (the slide image is 1 wide): the grid's columns
        # times the tile side, over the level-0 width the pyramid covers.
        "overlayWidth": grid.n_cols * grid.side_px / (page.width_px * page.downsample),
        "overlays": [{"name": name, "url": url} for name, url in overlays.items()],
        "pixelsPerMeter": (1e6 / page.um_per_px) if page.um_per_px else None,
    }
    legend = []
    for k, name in enumerate(TISSUE_CLASSES):
        label, colour = CLASS_STYLE[name]
        area = areas_mm2.get(name)
        share = f"{100 * area / total:.1f} %" if area is not None and total > 0 else "-"
        area_text = f"{area:.2f} mm²" if area is not None else "-"
        legend.append(
            f"<label><input type='checkbox' class='cls' data-k='{k}' checked>"
            f"<span class='sw' style='background:rgb{colour}'></span>{esc(label)} "
            f"<small>{area_text}, {share}</small></label>"
        )
    scale = (
        f"{page.um_per_px:.2f} µm/px at full zoom" if page.um_per_px else "no µm/px: no scale bar"
    )
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{esc(page.slide)}: osteomics slide viewer</title><style>",
            "html,body{margin:0;height:100%;font-family:system-ui,sans-serif}",
            "body{display:flex;flex-direction:column}",
            "#bar{padding:6px 10px;background:#f3f3f3;border-bottom:1px solid #ccc;",
            "display:flex;flex-wrap:wrap;gap:14px;align-items:center;font-size:14px}",
            # the viewer fills what the bar leaves, however many lines the bar wraps to
            "#osd{flex:1;min-height:0;position:relative;background:#fff}",
            ".sw{display:inline-block;width:12px;height:12px;margin:0 4px;",
            "border:1px solid #555;vertical-align:middle}.error{color:#b00}",
            "</style></head><body>",
            f"<div id='bar'><b>{esc(page.slide)}</b>",
            "<label>class overlay opacity <input type='range' id='opacity' min='0' "
            "max='100' value='45'></label>",
            *legend,
            f"<small>{esc(scale)}; one tile = one block of the overlay</small>",
            "<a href='../report.html'>report</a><span id='status' class='error'></span></div>",
            "<div id='osd'></div>",
            "<script src='osd/openseadragon.js'></script>",
            "<script src='osd/openseadragon-scalebar.js'></script>",
            f"<script>const CONF = {js_literal(config)};",
            VIEWER_JS,
            "</script></body></html>",
        ]
    )


VIEWER_JS = """
(function () {
const say = (text) => { document.getElementById('status').textContent = text; };
if (typeof OpenSeadragon === 'undefined') {
  say('osd/openseadragon.js is missing next to this page: copy the whole viewer folder.');
  return;
}
const opacity = () => document.getElementById('opacity').value / 100;
const viewer = OpenSeadragon({
  id: 'osd', prefixUrl: 'osd/images/', drawer: 'canvas', showNavigator: true,
  maxZoomPixelRatio: 4, crossOriginPolicy: false, loadTilesWithAjax: false,
  tileSources: {
    width: CONF.width, height: CONF.height, tileSize: CONF.tileSize, tileOverlap: 0,
    minLevel: 0, maxLevel: CONF.maxLevel,
    getTileUrl: (level, x, y) => CONF.tiles + level + '/' + x + '_' + y + '.jpeg'
  }
});
const items = [];
function refresh() {
  document.querySelectorAll('input.cls').forEach((box) => {
    const item = items[Number(box.dataset.k)];
    if (item) item.setOpacity(box.checked ? opacity() : 0);
  });
}
viewer.addHandler('open-failed', (e) => say('cannot open the slide tiles: ' + e.message));
viewer.addHandler('add-item-failed', (e) => say('cannot load an overlay: ' + e.message));
viewer.addOnceHandler('open', () => {
  CONF.overlays.forEach((o, k) => {
    viewer.addTiledImage({
      tileSource: {type: 'image', url: o.url, buildPyramid: false},
      x: 0, y: 0, width: CONF.overlayWidth, opacity: opacity(),
      success: (e) => { items[k] = e.item; refresh(); }
    });
  });
});
document.getElementById('opacity').addEventListener('input', refresh);
document.querySelectorAll('input.cls').forEach((b) => b.addEventListener('change', refresh));
if (CONF.pixelsPerMeter && viewer.scalebar) {
  viewer.scalebar({
    type: OpenSeadragon.ScalebarType.MICROSCOPY, pixelsPerMeter: CONF.pixelsPerMeter,
    location: OpenSeadragon.ScalebarLocation.BOTTOM_LEFT, minWidth: '120px',
    color: '#000', fontColor: '#000', backgroundColor: 'rgba(255,255,255,0.8)',
    stayInsideImage: false, barThickness: 3
  });
}
})();
"""
