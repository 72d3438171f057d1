"""Exporter: scored tiles as QuPath-compatible GeoJSON detections.

One Feature per tile: a square Polygon in level-0 pixel coordinates (what QuPath expects for
the full-resolution image), ``objectType`` ``detection``, a ``classification`` with the most
probable tissue class and its colour, and ``measurements`` holding the class probabilities
and the tissue fraction. File: ``<slide>.geojson`` (drag it onto the slide in QuPath).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from osteomics.core.files import write_text_atomic
from osteomics.core.plugins import Plugin
from osteomics.wsi.necrosis import CLASS_STYLE, TISSUE_CLASSES

if TYPE_CHECKING:
    from osteomics.wsi.results import SlideNecrosis, SlideTiles


def tiles_feature_collection(tiles: SlideTiles) -> dict[str, object]:
    """GeoJSON FeatureCollection of the scored tiles."""
    features = []
    side = float(tiles.side_px)
    winners = tiles.area_mm2.argmax(axis=1)
    for i, (x, y) in enumerate(zip(tiles.x_px.tolist(), tiles.y_px.tolist(), strict=True)):
        name, colour = CLASS_STYLE[TISSUE_CLASSES[int(winners[i])]]
        measurements = {
            f"p_{cls}": round(float(p), 6)
            for cls, p in zip(tiles.classes, tiles.probabilities[i], strict=True)
        }
        measurements["tissue_fraction"] = round(float(tiles.tissue_fraction[i]), 4)
        x0, y0 = float(x), float(y)
        ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": list(colour)},
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def export_qupath_geojson(row: SlideNecrosis, tiles: SlideTiles, out_dir: Path) -> Path:
    path = Path(out_dir) / f"{row.slide}.geojson"
    write_text_atomic(path, json.dumps(tiles_feature_collection(tiles)))
    return path


plugin = Plugin(
    name="qupath-geojson",
    kind="exporter",
    description="QuPath GeoJSON: scored tiles as detections with class and probabilities",
    factory=export_qupath_geojson,
    priority=10,
)
