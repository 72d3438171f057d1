"""Slide.read_tiles (regions covering many tiles, aligned to the stored tiles) gives exactly
the pixels of one read_region per tile, with every reader and on every path: dense blocks,
sparse blocks read tile by tile, tiles straddling stored tiles and block edges."""

from __future__ import annotations

import numpy as np
import pytest

from osteomics.wsi.mosaic import MosaicComposition
from osteomics.wsi.slide import BLOCK_READ_PX, open_slide
from osteomics.wsi.sources import find_slides


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("level", [0, 1])
def test_block_reads_equal_one_read_per_tile(
    mosaic_1um: MosaicComposition, backend: str, level: int
) -> None:
    [source], _ = find_slides([mosaic_1um.path])
    with open_slide(source, backend) as slide:
        lv = slide.info.levels[level]
        size = 200  # not a divisor of the stored 256 px tiles: tiles straddle stored tiles
        step = 150  # overlapping tiles
        xs = np.arange(0, lv.width_px - size, step)
        ys = np.arange(0, lv.height_px - size, step)
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        x_level, y_level = gx.ravel(), gy.ravel()
        # Keep a dense patch and a sparse scatter, so both block paths run.
        rng = np.random.default_rng(level)
        dense = (x_level < BLOCK_READ_PX) & (y_level < BLOCK_READ_PX)
        keep = dense | (rng.random(len(x_level)) < 0.2)
        x_px = np.round(x_level[keep] * lv.downsample).astype(np.int64)
        y_px = np.round(y_level[keep] * lv.downsample).astype(np.int64)
        assert dense.sum() > 100 and (keep & ~dense).sum() > 5
        got = slide.read_tiles(x_px, y_px, level, size)
        one_by_one = np.stack(
            [
                slide.read_region((int(x), int(y)), level, (size, size))
                for x, y in zip(x_px, y_px, strict=True)
            ]
        )
    assert got.shape == (len(x_px), size, size, 3)
    np.testing.assert_array_equal(got, one_by_one)
