"""Unit tests of the radiomics engine on tiny hand-made images with hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteomics.radiology.radiomics import Mask, Volume, extract_features, load_config
from osteomics.radiology.radiomics.config import parse_config, shipped_configs
from osteomics.radiology.radiomics.discretise import Discretisation, discretise
from osteomics.radiology.radiomics.errors import (
    EmptyMaskError,
    GeometryMismatchError,
    ImageReadError,
    RadiomicsConfigError,
)
from osteomics.radiology.radiomics.morphology import morphology_features
from osteomics.radiology.radiomics.nifti import read_nifti_volume
from osteomics.radiology.radiomics.texture._common import DIRECTIONS_3D
from osteomics.radiology.radiomics.texture.glcm import glcm_features, glcm_per_slice
from osteomics.radiology.radiomics.texture.glrlm import glrlm_per_slice

#: 3 x 3 single-slice image used for the matrix tests.
IMAGE_2D = np.array([[[1, 1, 2], [1, 2, 2], [3, 3, 2]]], dtype=np.int64)
HORIZONTAL = DIRECTIONS_3D.index((0, 0, 1))


def test_fixed_bin_number_ibsi_definition() -> None:
    image = np.arange(11, dtype=np.float64).reshape(1, 1, 11)  # 0..10
    roi = np.ones_like(image, dtype=bool)
    grey = discretise(image, roi, Discretisation("fixed_bin_number", n_bins=5))
    # floor(5 * (x - 0) / 10) + 1, and the maximum goes to the last bin
    assert grey.levels.ravel().tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    assert grey.n_levels == 5


def test_fixed_bin_size_from_lower_bound() -> None:
    image = np.array([[[-1.0, 0.0, 2.4, 2.5, 7.6]]])
    roi = np.array([[[True, True, True, True, False]]])
    grey = discretise(image, roi, Discretisation("fixed_bin_size", bin_width=2.5, lower_bound=-5))
    # floor((x + 5) / 2.5) + 1; outside the ROI stays 0
    assert grey.levels.ravel().tolist() == [2, 3, 3, 4, 0]
    assert grey.n_levels == 4


def test_fixed_bin_size_rejects_lower_bound_above_roi() -> None:
    image = np.array([[[1.0, 2.0]]])
    with pytest.raises(RadiomicsConfigError, match="lower bound"):
        discretise(image, image > 0, Discretisation("fixed_bin_size", bin_width=1, lower_bound=5))


def test_no_discretisation_needs_grey_levels() -> None:
    image = np.array([[[1.0, 2.5]]])
    with pytest.raises(RadiomicsConfigError, match="already grey levels"):
        discretise(image, image > 0, Discretisation("none"))


def test_glcm_counts_hand_computed() -> None:
    m = glcm_per_slice(IMAGE_2D, 3)[0, HORIZONTAL]
    # horizontal pairs: (1,1) (1,2) | (1,2) (2,2) | (3,3) (3,2), each counted in both orders
    expected = np.array([[2, 2, 0], [2, 2, 1], [0, 1, 2]], dtype=float)
    np.testing.assert_array_equal(m, expected)
    f = glcm_features(m)
    assert f["Joint maximum"] == pytest.approx(2 / 12)
    assert f["Contrast"] == pytest.approx((2 * 1 + 2 * 1 + 1 * 1 + 1 * 1) / 12)
    # five cells of 2 and two cells of 1 out of 12 pairs
    assert f["Angular second moment"] == pytest.approx((5 * 2**2 + 2 * 1**2) / 12**2)


def test_glcm_ignores_pairs_leaving_the_roi() -> None:
    levels = IMAGE_2D.copy()
    levels[0, 2, :] = 0  # bottom row outside the ROI
    m = glcm_per_slice(levels, 3)[0, HORIZONTAL]
    assert m.sum() == 8
    assert m[2].sum() == 0


def test_glrlm_runs_hand_computed() -> None:
    r = glrlm_per_slice(IMAGE_2D, 3)[0, HORIZONTAL]
    # rows: 1 1 | 2 ; 1 | 2 2 ; 3 3 | 2  -> columns are run lengths 1, 2, 3
    expected = np.array([[1, 1, 0], [2, 1, 0], [0, 1, 0]], dtype=float)
    np.testing.assert_array_equal(r, expected)


def test_morphology_of_a_box() -> None:
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1:4, 1:5, 1:6] = True  # 3 x 4 x 5 voxels
    spacing = (3.0, 2.0, 1.0)
    image = np.where(mask, 2.0, 0.0)
    f = morphology_features(image, mask, mask, spacing)
    assert f["Volume (voxel counting)"] == pytest.approx(60 * 6.0)
    # the marching-cubes surface lies half a voxel inside the voxel faces, except it
    # cuts the corners; its volume lies between the inner and outer boxes
    assert (2 * 3) * (3 * 2) * (4 * 1) < f["Volume (mesh)"] < 9 * 8 * 5
    assert f["Centre of mass shift"] == pytest.approx(0.0, abs=1e-12)
    assert f["Major axis length"] > f["Minor axis length"] > f["Least axis length"]


def test_config_unknown_name_lists_shipped() -> None:
    with pytest.raises(RadiomicsConfigError, match="ibsi-digital-phantom"):
        load_config("no-such-config")
    assert "ibsi-digital-phantom" in shipped_configs()


def test_config_interpolation_needs_spacing() -> None:
    with pytest.raises(RadiomicsConfigError, match="in_plane_mm"):
        parse_config({"name": "x", "interpolation": {"enabled": True}}, "test")
    with pytest.raises(RadiomicsConfigError, match="image_method"):
        parse_config(
            {
                "name": "x",
                "interpolation": {"enabled": True, "in_plane_mm": 2, "image_method": "x"},
            },
            "test",
        )


def test_config_from_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "ct.toml"
    path.write_text(
        'name = "ct-test"\n[resegmentation]\nrange = [-500, 400]\n'
        '[discretisation]\nmethod = "fixed_bin_size"\nbin_width = 25\n'
    )
    cfg = load_config(path)
    assert cfg.resegmentation_range == (-500.0, 400.0)
    assert cfg.discretisation.bin_width == 25


def test_empty_and_mismatched_masks() -> None:
    vol = Volume(np.ones((2, 3, 4)), (1.0, 1.0, 1.0))
    cfg = load_config("ibsi-digital-phantom")
    with pytest.raises(EmptyMaskError):
        extract_features(vol, Mask(np.zeros((2, 3, 4), bool), (1.0, 1.0, 1.0)), cfg)
    with pytest.raises(GeometryMismatchError, match="shape"):
        extract_features(vol, Mask(np.ones((2, 3, 5), bool), (1.0, 1.0, 1.0)), cfg)
    with pytest.raises(GeometryMismatchError, match="spacing"):
        extract_features(vol, Mask(np.ones((2, 3, 4), bool), (2.0, 1.0, 1.0)), cfg)


def test_resegmentation_range_restricts_intensity_not_morphology() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 7, size=(4, 5, 6)).astype(float)
    mask = np.ones(image.shape, bool)
    cfg = parse_config({"name": "t", "resegmentation": {"range": [2, 5]}}, "test")
    out = {
        (v.family, v.feature): v.value
        for v in extract_features(
            Volume(image, (1.0, 1.0, 1.0)),
            Mask(mask, (1.0, 1.0, 1.0)),
            cfg,
            groups=["morphology", "statistics"],
        )
    }
    assert out[("Morphology", "Volume (voxel counting)")] == image.size
    assert out[("Statistics", "Minimum")] >= 2
    assert out[("Statistics", "Maximum")] <= 5


def test_nifti_geometry(tmp_path: Path) -> None:
    phantom = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "radiology"
    vol = read_nifti_volume(phantom / "ibsi-digital-phantom" / "phantom.nii.gz")
    assert vol.shape == (4, 4, 5)  # the 5 x 4 x 4 (x, y, z) phantom as (z, y, x)
    assert vol.spacing_mm == (2.0, 2.0, 2.0)
    bad = tmp_path / "not.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(ImageReadError, match=r"not\.nii\.gz"):
        read_nifti_volume(bad)
