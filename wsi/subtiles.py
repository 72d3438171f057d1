"""Cut labelled images of any size into model inputs at the model's µm/px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from osteomics.wsi.tissue import saturation

#: A pixel is tissue when its HSV saturation exceeds this (see wsi/tissue.py: pale necrosis
#: sits at 0.07-0.2, glass below 0.04).
TISSUE_SATURATION = 0.05


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (height, width, 3)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def resample_to_mpp(rgb: np.ndarray, source_mpp: float, target_mpp: float) -> np.ndarray:
    """Resize an RGB uint8 image from ``source_mpp`` to ``target_mpp`` µm/px (Lanczos).

    A 1024 px image at 1 µm/px becomes 512 px at 2 µm/px. Sizes round to the nearest pixel.
    """
    if source_mpp <= 0 or target_mpp <= 0:
        raise ValueError("µm/px must be positive")
    factor = source_mpp / target_mpp
    if abs(factor - 1.0) < 1e-9:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    image = Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image)


def tissue_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels whose saturation exceeds :data:`TISSUE_SATURATION`."""
    return float((saturation(rgb) > TISSUE_SATURATION).mean())


def grid_subtiles(rgb: np.ndarray, px: int, stride: int | None = None) -> np.ndarray:
    """Square sub-tiles of side ``px`` on a regular grid, row-major.

    An image smaller than ``px`` on a side is padded with white (glass) up to ``px``. The grid
    is centred so that the margin left over is split between both sides.

    Returns
    -------
    numpy.ndarray
        (n, px, px, 3) uint8.
    """
    stride = stride or px
    h, w = rgb.shape[:2]
    if h < px or w < px:
        padded = np.full((max(h, px), max(w, px), 3), 255, dtype=np.uint8)
        padded[:h, :w] = rgb
        rgb, h, w = padded, padded.shape[0], padded.shape[1]
    ys = _starts(h, px, stride)
    xs = _starts(w, px, stride)
    return np.stack([rgb[y : y + px, x : x + px] for y in ys for x in xs])


def _starts(length: int, px: int, stride: int) -> list[int]:
    n = (length - px) // stride + 1
    offset = (length - px - (n - 1) * stride) // 2
    return [offset + i * stride for i in range(n)]


def tissue_subtiles(
    rgb: np.ndarray,
    source_mpp: float,
    target_mpp: float,
    px: int,
    min_tissue: float = 0.0,
    stride: int | None = None,
) -> np.ndarray:
    """Sub-tiles of one RGB image at ``target_mpp``, keeping those with enough tissue.

    When no sub-tile reaches ``min_tissue``, the one with the most tissue is kept, so that
    every image gives at least one input.

    Returns
    -------
    numpy.ndarray
        (n, px, px, 3) uint8, n >= 1.
    """
    tiles = grid_subtiles(resample_to_mpp(rgb, source_mpp, target_mpp), px, stride)
    if min_tissue <= 0:
        return tiles
    fractions = np.array([tissue_fraction(t) for t in tiles])
    keep = fractions >= min_tissue
    if not keep.any():
        keep = fractions == fractions.max()
    return tiles[keep]


def image_subtiles(
    path: Path,
    source_mpp: float,
    target_mpp: float,
    px: int,
    min_tissue: float = 0.0,
    stride: int | None = None,
) -> np.ndarray:
    """:func:`tissue_subtiles` of an image file."""
    return tissue_subtiles(read_rgb(path), source_mpp, target_mpp, px, min_tissue, stride)
