"""Pathology room: open whole-slide images, find tissue, tile at a target µm/px.

Nouns: :class:`Slide`, :class:`SlideInfo`, :class:`TissueMask`, :class:`TileGrid`,
:class:`TilingParameters`, :class:`TilingRun`, :class:`MosaicComposition`.
Verbs: :func:`open_slide`, :func:`detect_tissue`, :func:`make_tile_grid`, :func:`tile_slides`,
:func:`build_mosaic_slide`.
"""

from __future__ import annotations

from osteomics.wsi.errors import (
    MissingMppError,
    NotASlideError,
    NoTissueError,
    OutputNotWritableError,
    SlideReadError,
    WsiError,
)
from osteomics.wsi.grid import TileGrid, make_tile_grid
from osteomics.wsi.labelled import LabelledTile, read_labelled_folder
from osteomics.wsi.mosaic import MosaicCell, MosaicComposition, build_mosaic_slide, random_layout
from osteomics.wsi.slide import Slide, SlideInfo, SlideLevel, open_slide
from osteomics.wsi.tiling import SlideTilingResult, TilingParameters, TilingRun, tile_slides
from osteomics.wsi.tissue import TissueMask, detect_tissue

__all__ = [
    "LabelledTile",
    "MissingMppError",
    "MosaicCell",
    "MosaicComposition",
    "NoTissueError",
    "NotASlideError",
    "OutputNotWritableError",
    "Slide",
    "SlideInfo",
    "SlideLevel",
    "SlideReadError",
    "SlideTilingResult",
    "TileGrid",
    "TilingParameters",
    "TilingRun",
    "TissueMask",
    "WsiError",
    "build_mosaic_slide",
    "detect_tissue",
    "make_tile_grid",
    "open_slide",
    "random_layout",
    "read_labelled_folder",
    "tile_slides",
]
