"""Stain normalisation moves a tile's stain statistics to the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteomics.core.errors import InvalidOptionError
from osteomics.wsi.stain import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAINS,
    OD_THRESHOLD,
    REINHARD_REFERENCE_MEAN,
    REINHARD_REFERENCE_STD,
    estimate_stains,
    hed_jitter,
    lab_statistics,
    macenko_normalise,
    normalise,
    optical_density,
    reinhard_normalise,
    stain_concentrations,
)
from osteomics.wsi.subtiles import read_rgb, resample_to_mpp


@pytest.fixture(scope="module")
def viable(data_dir: Path) -> np.ndarray:
    path = data_dir / "osteosarcoma-tiles/Viable/Case-48-P5-C14-54171-23668.jpg"
    return resample_to_mpp(read_rgb(path), 1.0, 2.0)


@pytest.fixture(scope="module")
def necrotic(data_dir: Path) -> np.ndarray:
    path = data_dir / "osteosarcoma-tiles/Non-Viable-Tumor/Case-3-A8-27422-14386.jpg"
    return resample_to_mpp(read_rgb(path), 1.0, 2.0)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.clip((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


@pytest.mark.parametrize("which", ["viable", "necrotic"])
def test_macenko_moves_stain_vectors_and_range_to_the_reference(
    which: str, request: pytest.FixtureRequest
) -> None:
    rgb = request.getfixturevalue(which)
    ref = np.asarray(MACENKO_REFERENCE_STAINS)
    before = estimate_stains(rgb)
    after = estimate_stains(macenko_normalise(rgb))
    assert before is not None and after is not None
    for j in range(2):  # haematoxylin, eosin
        assert _angle_deg(after.stains[:, j], ref[:, j]) < _angle_deg(
            before.stains[:, j], ref[:, j]
        )
        assert _angle_deg(after.stains[:, j], ref[:, j]) < 5.0
    target = np.asarray(MACENKO_REFERENCE_MAX_CONCENTRATIONS)
    assert (
        np.abs(after.max_concentrations - target).max()
        < np.abs(before.max_concentrations - target).max()
    )
    assert np.allclose(after.max_concentrations, target, rtol=0.15)


def test_macenko_makes_two_patients_stains_agree(viable: np.ndarray, necrotic: np.ndarray) -> None:
    a, b = estimate_stains(viable), estimate_stains(necrotic)
    na, nb = (
        estimate_stains(macenko_normalise(viable)),
        estimate_stains(macenko_normalise(necrotic)),
    )
    assert a is not None and b is not None and na is not None and nb is not None
    assert _angle_deg(na.stains[:, 0], nb.stains[:, 0]) < _angle_deg(a.stains[:, 0], b.stains[:, 0])


def test_reinhard_matches_lab_statistics_of_tissue(viable: np.ndarray) -> None:
    before = lab_statistics(viable)
    after = lab_statistics(reinhard_normalise(viable))
    assert before is not None and after is not None
    mean_t, std_t = np.asarray(REINHARD_REFERENCE_MEAN), np.asarray(REINHARD_REFERENCE_STD)
    assert np.abs(after[0] - mean_t).max() < np.abs(before[0] - mean_t).max()
    assert np.abs(after[0] - mean_t).max() < 4.0  # clipping to the sRGB gamut costs a little
    assert np.abs(after[1] - std_t).max() < 4.0


def test_glass_is_left_alone() -> None:
    glass = np.full((64, 64, 3), 245, np.uint8)
    assert np.array_equal(macenko_normalise(glass), glass)
    assert np.array_equal(reinhard_normalise(glass), glass)
    assert np.array_equal(normalise(glass, "none"), glass)
    with pytest.raises(InvalidOptionError):
        normalise(glass, "vahadane")


def test_hed_jitter_is_seeded_and_zero_strength_is_identity(viable: np.ndarray) -> None:
    tile = viable[:128, :128]
    a = hed_jitter(tile, np.random.default_rng(5), 0.2, 0.1)
    assert np.array_equal(a, hed_jitter(tile, np.random.default_rng(5), 0.2, 0.1))
    same = hed_jitter(tile, np.random.default_rng(5), 0.0, 0.0)
    # colour deconvolution round trip: exact on most pixels (dark pixels clip a little)
    diff = np.abs(same.astype(int) - tile.astype(int))
    assert np.median(diff) == 0 and diff.mean() < 1.0 and np.percentile(diff, 95) <= 2
    assert np.abs(a.astype(int) - tile.astype(int)).mean() > 2.0


def test_stain_concentrations_recover_the_macenko_rendering(
    viable: np.ndarray, necrotic: np.ndarray
) -> None:
    """After Macenko, deconvolution with the reference stains gives H and E concentrations
    whose 99th percentiles are the reference ones; glass is zero; viable tumour (dense nuclei)
    has more haematoxylin than necrotic tumour."""
    normalised = {name: macenko_normalise(rgb) for name, rgb in (("v", viable), ("n", necrotic))}
    for rgb in normalised.values():
        c = stain_concentrations(rgb)
        assert c.shape == (*rgb.shape[:2], 2) and c.dtype == np.float32 and c.min() >= 0.0
        tissue = np.all(optical_density(rgb) > OD_THRESHOLD, axis=-1)
        p99 = np.percentile(c[tissue], 99, axis=0)
        assert np.allclose(p99, MACENKO_REFERENCE_MAX_CONCENTRATIONS, rtol=0.1)
    assert np.all(stain_concentrations(np.full((4, 4, 3), 250, np.uint8)) == 0.0)
    h_viable = stain_concentrations(normalised["v"])[..., 0].mean()
    h_necrotic = stain_concentrations(normalised["n"])[..., 0].mean()
    assert h_viable > h_necrotic
