"""TileGrid: level choice for a target µm/px, tolerance, overlap, tissue filter, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteomics.core.errors import InvalidOptionError
from osteomics.wsi.errors import MissingMppError, NoTissueError, ResolutionError
from osteomics.wsi.grid import SAME_RESOLUTION_TOLERANCE, choose_read_level, make_tile_grid
from osteomics.wsi.mosaic import MosaicComposition
from osteomics.wsi.slide import SlideInfo, open_slide
from osteomics.wsi.tissue import TissueMask, detect_tissue


def slide_info(path: Path, mpp_override: float | None = None) -> SlideInfo:
    with open_slide(path, mpp_override=mpp_override) as slide:
        return slide.info


def full_mask(info: SlideInfo, downsample: float = 8.0) -> TissueMask:
    """All tissue: isolates the grid's geometry from tissue detection."""
    shape = (int(np.ceil(info.height_px / downsample)), int(np.ceil(info.width_px / downsample)))
    return TissueMask(np.ones(shape, dtype=bool), downsample, 0.06, 0.06)


@pytest.fixture(scope="module")
def ndpi_info(ndpi: Path) -> SlideInfo:
    return slide_info(ndpi)


@pytest.fixture(scope="module")
def cmu_info(cmu_svs: Path) -> SlideInfo:
    return slide_info(cmu_svs)


@pytest.fixture(scope="module")
def mosaic_tissue(mosaic_2um: MosaicComposition) -> tuple[SlideInfo, TissueMask]:
    with open_slide(Path(mosaic_2um.path)) as slide:
        thumb, downsample = slide.read_thumbnail(1024)
        return slide.info, detect_tissue(thumb, downsample, slide.info.mpp)


def test_ndpi_target_1um_reads_level_2_and_resamples(ndpi_info: SlideInfo) -> None:
    grid = make_tile_grid(ndpi_info, full_mask(ndpi_info), target_mpp=1.0, tile_px=256)
    level_mpp = ndpi_info.require_mpp() * 4
    assert level_mpp == pytest.approx(0.9127, abs=1e-4)
    assert grid.read_level == 2
    assert grid.read_downsample == 4.0
    assert grid.read_mpp == pytest.approx(level_mpp)
    assert grid.read_px == round(256 * 1.0 / level_mpp) == 280
    assert grid.needs_resampling
    assert grid.tile_um == pytest.approx(280 * level_mpp)
    assert grid.tile_um == pytest.approx(256 * 1.0, rel=0.005)


@pytest.mark.parametrize(
    ("target", "level"), [(0.228, 0), (0.3, 0), (0.5, 1), (1.9, 3), (7.5, 5), (100.0, 6)]
)
def test_ndpi_coarsest_level_at_most_the_target(
    ndpi_info: SlideInfo, target: float, level: int
) -> None:
    assert choose_read_level(ndpi_info, target) == level
    level_mpps = [ndpi_info.require_mpp() * lv.downsample for lv in ndpi_info.levels]
    assert level_mpps[level] <= target * (1 + SAME_RESOLUTION_TOLERANCE)
    if level + 1 < len(level_mpps):
        assert level_mpps[level + 1] > target * (1 + SAME_RESOLUTION_TOLERANCE)


def test_within_tolerance_no_resampling(cmu_info: SlideInfo) -> None:
    grid = make_tile_grid(cmu_info, full_mask(cmu_info), target_mpp=0.5, tile_px=256)
    assert grid.read_level == 0
    assert grid.read_px == grid.tile_px == 256
    assert not grid.needs_resampling
    assert grid.tile_um == pytest.approx(256 * 0.499)
    # Neighbours one tile apart: the stride is the tile itself.
    assert np.diff(np.unique(grid.x_px)).tolist() == [256] * (len(np.unique(grid.x_px)) - 1)


def test_slightly_finer_target_within_tolerance_is_served_as_is(cmu_info: SlideInfo) -> None:
    grid = make_tile_grid(cmu_info, full_mask(cmu_info), target_mpp=0.49, tile_px=256)
    assert grid.read_px == 256 and grid.read_level == 0


@pytest.mark.parametrize("target", [0.48, 0.25, 0.1])
def test_target_finer_than_level_0_is_refused(cmu_info: SlideInfo, target: float) -> None:
    with pytest.raises(ResolutionError, match="finer than the slide's finest level") as caught:
        make_tile_grid(cmu_info, full_mask(cmu_info), target_mpp=target)
    assert "CMU-1-Small-Region.svs" in str(caught.value)
    assert "--mpp 0.499" in str(caught.value)


def test_grid_counts_and_bounds(cmu_info: SlideInfo) -> None:
    grid = make_tile_grid(cmu_info, full_mask(cmu_info), target_mpp=1.0, tile_px=128)
    # 1 µm/px from 0.499: read 256-257 px at level 0.
    assert grid.read_px == round(128 * 1.0 / 0.499) == 257
    stride = 128 / 0.499
    n_x = int((2220 - 257) // stride) + 1
    n_y = int((2967 - 257) // stride) + 1
    assert len(grid) == n_x * n_y
    assert (grid.x_px >= 0).all() and (grid.y_px >= 0).all()
    assert (grid.x_px + grid.read_px <= 2220).all()
    assert (grid.y_px + grid.read_px <= 2967).all()
    # Row-major order: y never decreases; within a row x increases.
    assert (np.diff(grid.y_px) >= 0).all()
    assert grid.x_px.dtype == np.int64 and grid.tissue_fraction.dtype == np.float32


@pytest.mark.parametrize("overlap", [0, 32, 128, 224])
def test_overlap_sets_the_stride(cmu_info: SlideInfo, overlap: int) -> None:
    grid = make_tile_grid(cmu_info, full_mask(cmu_info), target_mpp=0.5, overlap_px=overlap)
    xs = np.unique(grid.x_px)
    ys = np.unique(grid.y_px)
    assert set(np.diff(xs).tolist()) == {256 - overlap}
    assert set(np.diff(ys).tolist()) == {256 - overlap}
    assert len(xs) == (2220 - 256) // (256 - overlap) + 1
    assert len(grid) == len(xs) * len(ys)


def test_overlap_with_resampling_strides_in_read_pixels(ndpi_info: SlideInfo) -> None:
    grid = make_tile_grid(ndpi_info, full_mask(ndpi_info), target_mpp=1.0, overlap_px=56)
    stride_level = (256 - 56) * 1.0 / (ndpi_info.require_mpp() * 4)
    xs = np.unique(grid.x_px)
    expected = np.round(np.round(np.arange(len(xs)) * stride_level) * 4).astype(np.int64)
    assert np.array_equal(xs, expected)


def test_min_tissue_filter_is_monotonic(mosaic_tissue: tuple[SlideInfo, TissueMask]) -> None:
    info, tissue = mosaic_tissue
    previous: set[tuple[int, int]] | None = None
    sizes = []
    for min_tissue in (0.0, 0.1, 0.5, 0.9, 1.0):
        grid = make_tile_grid(info, tissue, target_mpp=2.0, min_tissue=min_tissue)
        kept = set(zip(grid.x_px.tolist(), grid.y_px.tolist(), strict=True))
        assert (grid.tissue_fraction >= min_tissue).all()
        if previous is not None:
            assert kept <= previous
        previous = kept
        sizes.append(len(grid))
    assert sizes[0] == (3072 // 256) * (2048 // 256)  # min_tissue 0 keeps every tile
    assert sizes[0] > sizes[2] > sizes[-1] > 0
    assert sizes == sorted(sizes, reverse=True)


def test_tile_fraction_is_the_mask_fraction(mosaic_tissue: tuple[SlideInfo, TissueMask]) -> None:
    info, tissue = mosaic_tissue
    grid = make_tile_grid(info, tissue, target_mpp=2.0, min_tissue=0.0)
    again = tissue.fraction_in_boxes(grid.x_px, grid.y_px, grid.read_px * grid.read_downsample)
    np.testing.assert_allclose(grid.tissue_fraction, again.astype(np.float32))


@pytest.mark.parametrize(("tile_px", "target", "um"), [(256, 2.0, 512.0), (128, 4.0, 512.0)])
def test_tile_um(
    mosaic_tissue: tuple[SlideInfo, TissueMask], tile_px: int, target: float, um: float
) -> None:
    info, tissue = mosaic_tissue
    grid = make_tile_grid(info, tissue, target_mpp=target, tile_px=tile_px, min_tissue=0.0)
    assert grid.tile_um == pytest.approx(um)
    assert grid.read_level == {2.0: 0, 4.0: 1}[target]
    assert not grid.needs_resampling


def test_slide_smaller_than_a_tile(fixtures_dir: Path) -> None:
    info = slide_info(fixtures_dir / "small.svs")  # 16 x 16 px
    with pytest.raises(NoTissueError, match="smaller than one tile") as caught:
        make_tile_grid(info, full_mask(info, 1.0), target_mpp=0.5, tile_px=256)
    assert "--tile-px" in str(caught.value)
    grid = make_tile_grid(info, full_mask(info, 1.0), target_mpp=0.5, tile_px=8)
    assert len(grid) == 4


def test_no_tile_with_enough_tissue(cmu_info: SlideInfo) -> None:
    empty = TissueMask(np.zeros((100, 100), dtype=bool), 30.0, 0.08, 0.08)
    with pytest.raises(NoTissueError, match="--min-tissue"):
        make_tile_grid(cmu_info, empty, target_mpp=0.5)


def test_missing_mpp(boxes_tiff: Path) -> None:
    info = slide_info(boxes_tiff)
    with pytest.raises(MissingMppError, match="--mpp-override"):
        make_tile_grid(info, full_mask(info, 1.0), target_mpp=1.0, tile_px=16)
    overridden = slide_info(boxes_tiff, mpp_override=0.5)
    grid = make_tile_grid(overridden, full_mask(overridden, 1.0), target_mpp=1.0, tile_px=16)
    assert grid.read_level == 1 and grid.read_px == 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_px": 4}, "--tile-px 4: tiles must be at least 8 px"),
        ({"overlap_px": 256}, "smaller than the tile"),
        ({"overlap_px": -1}, "--overlap -1: the overlap must be at least 0"),
        ({"min_tissue": 1.5}, "between 0 and 1"),
    ],
)
def test_invalid_parameters(cmu_info: SlideInfo, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        make_tile_grid(cmu_info, full_mask(cmu_info), **{"target_mpp": 0.5, **kwargs})
