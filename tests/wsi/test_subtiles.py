"""Sub-tiling labelled images at a model's µm/px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteomics.wsi.subtiles import (
    grid_subtiles,
    image_subtiles,
    read_rgb,
    resample_to_mpp,
    tissue_fraction,
)

VIABLE = "osteosarcoma-tiles/Viable/Case-48-P5-C14-54171-23668.jpg"
GLASS_HEAVY = "osteosarcoma-tiles/Non-Tumor/Case-3-A15-2939-11262.jpg"


def test_resample_halves_size_from_1_to_2_um(data_dir: Path) -> None:
    rgb = read_rgb(data_dir / VIABLE)
    assert rgb.shape == (1024, 1024, 3)
    half = resample_to_mpp(rgb, 1.0, 2.0)
    assert half.shape == (512, 512, 3) and half.dtype == np.uint8
    # same tissue, so the same mean colour within a grey level
    assert np.abs(half.mean(axis=(0, 1)) - rgb.mean(axis=(0, 1))).max() < 1.0
    assert resample_to_mpp(rgb, 0.5, 2.0).shape == (256, 256, 3)


def test_subtiles_cover_the_field_at_the_model_mpp(data_dir: Path) -> None:
    # 1024 px at 1 µm/px = 1024 µm; at 2 µm/px with 128 px inputs (256 µm): a 4 x 4 grid.
    tiles = image_subtiles(data_dir / VIABLE, 1.0, 2.0, 128)
    assert tiles.shape == (16, 128, 128, 3)
    full = resample_to_mpp(read_rgb(data_dir / VIABLE), 1.0, 2.0)
    assert np.array_equal(tiles[5], full[128:256, 128:256])


def test_grid_is_centred_and_small_images_are_padded_with_glass() -> None:
    rgb = np.zeros((300, 200, 3), np.uint8)
    tiles = grid_subtiles(rgb, 128)
    assert tiles.shape == (2, 128, 128, 3)  # 2 rows x 1 column
    small = grid_subtiles(np.zeros((50, 60, 3), np.uint8), 128)
    assert small.shape == (1, 128, 128, 3)
    assert small[0, 60:, 60:].min() == 255 and small[0, :50, :60].max() == 0


def test_min_tissue_drops_glass_subtiles(data_dir: Path) -> None:
    every = image_subtiles(data_dir / GLASS_HEAVY, 1.0, 2.0, 128)
    tissue = image_subtiles(data_dir / GLASS_HEAVY, 1.0, 2.0, 128, min_tissue=0.25)
    assert 0 < len(tissue) < len(every)
    assert min(tissue_fraction(t) for t in tissue) >= 0.25


def test_bad_mpp_is_refused() -> None:
    with pytest.raises(ValueError):
        resample_to_mpp(np.zeros((4, 4, 3), np.uint8), 0.0, 1.0)
