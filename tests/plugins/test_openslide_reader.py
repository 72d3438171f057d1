"""The OpenSlide reader plugin: its direct-JPEG shortcut never stops a slide from reading."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openslide

from osteomics.wsi.slide import open_slide


def test_ndpi_regions_read_with_direct_decoding_on(ndpi: Path) -> None:
    """NDPI levels look tiled to tifffile, but the direct JPEG decoder cannot decode them: a
    region at levels 0-3 raised 'Not a JPEG file' (and `osteomics info` called the slide
    damaged) instead of falling back to OpenSlide."""
    assert os.environ.get("OSTEOMICS_DIRECT_TILE_DECODE", "1") != "0"
    reference = openslide.OpenSlide(str(ndpi))
    with open_slide(ndpi, "openslide") as slide:
        for level in slide.info.levels[:4]:
            x = (level.width_px // 2 - 128) * round(level.downsample)
            y = (level.height_px // 2 - 128) * round(level.downsample)
            pixels = slide.read_region((x, y), level.index, (256, 256))
            expected = np.asarray(reference.read_region((x, y), level.index, (256, 256)))
            assert np.array_equal(pixels, expected[..., :3]), level.index
