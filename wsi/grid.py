"""Tile grids at a target resolution in µm/px, never "a level".

A :class:`TileGrid` lays square tiles of ``tile_px`` pixels at ``target_mpp`` µm/px over the
slide. Pixels are read from the pyramid level just finer than the target (the coarsest level
whose µm/px is at most the target) and resampled to ``tile_px``. Within
``SAME_RESOLUTION_TOLERANCE`` a level counts as the target itself and is read without
resampling (a 0.499 µm/px scan serves a 0.5 µm/px request as is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from osteomics.core.errors import InvalidOptionError
from osteomics.wsi.errors import NoTissueError, ResolutionError
from osteomics.wsi.slide import BLOCK_READ_PX, Slide, SlideInfo
from osteomics.wsi.tissue import TissueMask, detect_tissue

#: Relative µm/px difference under which a level is read as if it were the target.
SAME_RESOLUTION_TOLERANCE = 0.02


@dataclass(frozen=True)
class TileGrid:
    """Tiles of one slide at one resolution, with their tissue fraction.

    Attributes
    ----------
    target_mpp:
        Requested µm/px of the output tiles.
    tile_px, overlap_px:
        Output tile side and overlap between neighbours, in output pixels.
    read_level:
        Pyramid level the pixels are read from.
    read_px:
        Tile side in pixels of ``read_level`` (resampled to ``tile_px`` when different).
    tile_um:
        Tile side in µm (``read_px`` x the read level's µm/px).
    x_px, y_px:
        Level-0 top-left corners of the kept tiles, int64 arrays of equal length, block by
        block (blocks of :data:`~osteomics.wsi.slide.BLOCK_READ_PX` read-level pixels, in
        rows), row-major within a block.
    tissue_fraction:
        Fraction of each kept tile covered by tissue, float32.
    """

    slide_mpp: float
    target_mpp: float
    tile_px: int
    overlap_px: int
    read_level: int
    read_downsample: float
    read_px: int
    tile_um: float
    x_px: np.ndarray
    y_px: np.ndarray
    tissue_fraction: np.ndarray

    def __len__(self) -> int:
        return len(self.x_px)

    @property
    def needs_resampling(self) -> bool:
        return self.read_px != self.tile_px

    @property
    def read_mpp(self) -> float:
        return self.slide_mpp * self.read_downsample


def choose_read_level(info: SlideInfo, target_mpp: float) -> int:
    """Index of the coarsest level whose µm/px is at most ``target_mpp`` (within tolerance).

    Raises
    ------
    ResolutionError
        The target is finer than the slide's finest level.
    """
    mpp0 = info.require_mpp()
    best = None
    for level in info.levels:
        level_mpp = mpp0 * level.downsample
        if level_mpp <= target_mpp * (1 + SAME_RESOLUTION_TOLERANCE):
            best = level.index
    if best is None:
        raise ResolutionError(
            f"{info.path}: target {target_mpp} µm/px is finer than the slide's finest level "
            f"({mpp0:.4g} µm/px); osteomics does not invent detail by upsampling. "
            f"Choose --mpp {mpp0:.4g} or coarser."
        )
    return best


#: Smallest tile side, pixels.
MIN_TILE_PX = 8


def check_grid_options(target_mpp: float, tile_px: int, overlap_px: int, min_tissue: float) -> None:
    """Refuse grid settings no slide can serve, naming the option and its allowed range.

    Raises
    ------
    InvalidOptionError
    """
    if not target_mpp > 0:
        raise InvalidOptionError(f"--mpp {target_mpp}: the resolution must be above 0 µm/px")
    if tile_px < MIN_TILE_PX:
        raise InvalidOptionError(
            f"--tile-px {tile_px}: tiles must be at least {MIN_TILE_PX} px on a side"
        )
    if not 0 <= overlap_px < tile_px:
        raise InvalidOptionError(
            f"--overlap {overlap_px}: the overlap must be at least 0 and smaller than the "
            f"tile ({tile_px} px)"
        )
    if not 0.0 <= min_tissue <= 1.0:
        raise InvalidOptionError(
            f"--min-tissue {min_tissue}: the tissue fraction must be between 0 and 1"
        )


def check_slide_job_options(batch_tiles: int, mpp_override: float | None) -> None:
    """Refuse a batch size under one tile or an mpp override that is not above 0.

    Raises
    ------
    InvalidOptionError
    """
    if batch_tiles < 1:
        raise InvalidOptionError(f"batch_tiles {batch_tiles}: at least 1 tile a batch")
    if mpp_override is not None and not mpp_override > 0:
        raise InvalidOptionError(
            f"--mpp-override {mpp_override}: the resolution must be above 0 µm/px"
        )


def make_tile_grid(
    info: SlideInfo,
    tissue: TissueMask,
    target_mpp: float = 1.0,
    tile_px: int = 256,
    overlap_px: int = 0,
    min_tissue: float = 0.5,
) -> TileGrid:
    """Lay a grid of tiles over the slide and keep those with enough tissue.

    Parameters
    ----------
    info:
        The slide (its level-0 µm/px must be known).
    tissue:
        Tissue mask of the slide (from :func:`osteomics.wsi.tissue.detect_tissue`).
    target_mpp:
        Output resolution in µm/px.
    tile_px, overlap_px:
        Output tile side and overlap in output pixels; ``0 <= overlap_px < tile_px``.
    min_tissue:
        Keep tiles whose tissue fraction is at least this (0..1).

    Raises
    ------
    ResolutionError, NoTissueError, InvalidOptionError
    """
    check_grid_options(target_mpp, tile_px, overlap_px, min_tissue)
    mpp0 = info.require_mpp()
    level_index = choose_read_level(info, target_mpp)
    level = info.levels[level_index]
    scale = target_mpp / (mpp0 * level.downsample)  # read-level px per output px
    if abs(scale - 1.0) <= SAME_RESOLUTION_TOLERANCE:
        scale = 1.0
    read_px = round(tile_px * scale)
    stride_read = (tile_px - overlap_px) * scale
    n_x = int((level.width_px - read_px) // stride_read) + 1 if level.width_px >= read_px else 0
    n_y = int((level.height_px - read_px) // stride_read) + 1 if level.height_px >= read_px else 0
    if n_x == 0 or n_y == 0:
        raise NoTissueError(
            f"{info.path}: the slide ({level.width_px} x {level.height_px} px at level "
            f"{level_index}) is smaller than one tile ({read_px} px); use a smaller --tile-px "
            "or a finer --mpp"
        )
    # Positions in read-level pixels, then level-0; rounding once keeps both readers aligned.
    xs_level = np.round(np.arange(n_x) * stride_read).astype(np.int64)
    ys_level = np.round(np.arange(n_y) * stride_read).astype(np.int64)
    grid_y, grid_x = np.meshgrid(ys_level, xs_level, indexing="ij")
    x_level, y_level = grid_x.ravel(), grid_y.ravel()
    x_px = np.round(x_level * level.downsample).astype(np.int64)
    y_px = np.round(y_level * level.downsample).astype(np.int64)
    # Block by block (row-major within a block), so that a batch of consecutive tiles lies
    # in one region that Slide.read_tiles reads at once.
    order = np.lexsort((x_level, y_level, x_level // BLOCK_READ_PX, y_level // BLOCK_READ_PX))
    x_px, y_px = x_px[order], y_px[order]
    side_px = read_px * level.downsample
    fraction = tissue.fraction_in_boxes(x_px, y_px, side_px)
    keep = fraction >= min_tissue if min_tissue > 0 else np.ones_like(fraction, dtype=bool)
    if not keep.any():
        raise NoTissueError(
            f"{info.path}: no tile of {read_px * mpp0 * level.downsample:.0f} µm has at least "
            f"{min_tissue:.0%} tissue (tissue covers {tissue.tissue_fraction:.1%} of the slide). "
            "Check the tissue mask (tissue.png) or lower --min-tissue."
        )
    return TileGrid(
        slide_mpp=mpp0,
        target_mpp=target_mpp,
        tile_px=tile_px,
        overlap_px=overlap_px,
        read_level=level_index,
        read_downsample=level.downsample,
        read_px=read_px,
        tile_um=read_px * mpp0 * level.downsample,
        x_px=x_px[keep],
        y_px=y_px[keep],
        tissue_fraction=fraction[keep].astype(np.float32),
    )


@dataclass(frozen=True)
class SlidePlan:
    """What a slide job needs before reading tiles: thumbnail, tissue and the grid."""

    backend: str
    mpp: float
    thumbnail: np.ndarray
    """RGB uint8; level-0 pixels per thumbnail pixel is ``tissue.downsample``."""
    tissue: TissueMask
    grid: TileGrid


def plan_slide(
    slide: Slide,
    target_mpp: float,
    tile_px: int,
    overlap_px: int = 0,
    min_tissue: float = 0.5,
    thumbnail_px: int = 1024,
) -> SlidePlan:
    """Read the thumbnail, find tissue and lay the tile grid of one slide.

    Raises
    ------
    MissingMppError, ResolutionError, NoTissueError, SlideReadError
    """
    mpp = slide.info.require_mpp()
    thumbnail, downsample = slide.read_thumbnail(thumbnail_px)
    tissue = detect_tissue(thumbnail, downsample, mpp)
    grid = make_tile_grid(slide.info, tissue, target_mpp, tile_px, overlap_px, min_tissue)
    return SlidePlan(slide.info.backend, mpp, thumbnail, tissue, grid)


def read_tiles(
    slide: Slide,
    x_px: np.ndarray,
    y_px: np.ndarray,
    read_level: int,
    read_px: int,
    tile_px: int,
) -> np.ndarray:
    """Read tiles at their level-0 corners and resample them to ``tile_px`` (Lanczos).

    Regions covering several tiles are read at once (:meth:`Slide.read_tiles`).

    Returns
    -------
    numpy.ndarray
        uint8, shape (n, tile_px, tile_px, 3).
    """
    regions = slide.read_tiles(x_px, y_px, read_level, read_px)
    if read_px == tile_px:
        return regions
    out = np.empty((len(regions), tile_px, tile_px, 3), dtype=np.uint8)
    for i, region in enumerate(regions):
        out[i] = np.asarray(
            Image.fromarray(region).resize((tile_px, tile_px), Image.Resampling.LANCZOS)
        )
    return out
