"""H&E augmentation keeps shape and dtype, and is reproducible with a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteomics.wsi.augment import AugmentParameters, augment_tile
from osteomics.wsi.subtiles import image_subtiles


@pytest.fixture(scope="module")
def tile(data_dir: Path) -> np.ndarray:
    path = data_dir / "osteosarcoma-tiles/Viable/Case-48-P5-C20-8674-13881.jpg"
    return image_subtiles(path, 1.0, 2.0, 128)[5]


def test_shape_and_dtype_are_kept(tile: np.ndarray) -> None:
    out = augment_tile(tile, np.random.default_rng(0))
    assert out.shape == tile.shape and out.dtype == np.uint8


def test_same_seed_same_copy_other_seed_other_copy(tile: np.ndarray) -> None:
    a = augment_tile(tile, np.random.default_rng(42))
    b = augment_tile(tile, np.random.default_rng(42))
    c = augment_tile(tile, np.random.default_rng(43))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_geometry_only_is_a_symmetry_of_the_square(tile: np.ndarray) -> None:
    params = AugmentParameters(hed_scale=0, hed_shift=0, brightness=0, contrast=0, saturation=0)
    symmetries = [np.rot90(tile, k) for k in range(4)] + [
        np.rot90(tile, k)[:, ::-1] for k in range(4)
    ]
    for seed in range(8):
        out = augment_tile(tile, np.random.default_rng(seed), params)
        assert any(np.array_equal(out, s) for s in symmetries)


def test_colour_jitter_changes_colour_not_layout(tile: np.ndarray) -> None:
    params = AugmentParameters(dihedral=False)
    out = augment_tile(tile, np.random.default_rng(1), params)
    assert np.abs(out.astype(int) - tile.astype(int)).mean() > 1.0
    # still the same picture: grey levels strongly correlated with the original's
    r = np.corrcoef(out.mean(-1).ravel(), tile.mean(-1).ravel())[0, 1]
    assert r > 0.9
