"""open_slide with every reader that can open each real file: dimensions, levels, µm/px,
objective, associated images, errors, and pixel identity between readers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from osteomics.wsi.errors import (
    MissingMppError,
    NotASlideError,
    ResolutionError,
    SlideNotFoundError,
    SlideReadError,
    UnknownBackendError,
)
from osteomics.wsi.mosaic import MosaicComposition
from osteomics.wsi.slide import Slide, open_slide

CMU_SIZE = (2220, 2967)
CMU_MPP = 0.499
NDPI_SIZE = (3968, 4864)
NDPI_MPP = 0.228
TIFF_READERS = ("openslide", "tiffslide")


def level_sizes(slide: Slide) -> list[tuple[int, int]]:
    return [(lv.width_px, lv.height_px) for lv in slide.info.levels]


# -- CMU-1-Small-Region.svs (Aperio) ------------------------------------------------------
def test_auto_opens_cmu_with_openslide_first(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        assert slide.info.backend == "openslide"
        assert slide.info.vendor == "aperio"


@pytest.mark.parametrize("backend", TIFF_READERS)
def test_cmu_metadata(cmu_svs: Path, backend: str) -> None:
    with open_slide(cmu_svs, backend) as slide:
        info = slide.info
        assert info.backend == backend
        assert (info.width_px, info.height_px) == CMU_SIZE
        assert len(info.levels) == 1
        assert info.levels[0].downsample == 1.0
        assert info.mpp == pytest.approx(CMU_MPP, abs=1e-4)
        assert info.mpp_y == pytest.approx(CMU_MPP, abs=1e-4)
        assert info.mpp_source == "metadata"
        assert info.require_mpp() == info.mpp
        assert info.objective_power == 20
        assert set(info.associated_images) == {"label", "macro", "thumbnail"}


@pytest.mark.parametrize("backend", TIFF_READERS)
def test_cmu_associated_images_are_rgb(cmu_svs: Path, backend: str) -> None:
    with open_slide(cmu_svs, backend) as slide:
        label = slide.associated_image("label")
        macro = slide.associated_image("macro")
        assert label.dtype == np.uint8 and label.ndim == 3 and label.shape[2] == 3
        assert macro.shape[2] == 3
        # The macro is a photograph of the whole glass slide: wider than tall.
        assert macro.shape[1] > macro.shape[0]
        with pytest.raises(KeyError, match="no associated image 'overview'"):
            slide.associated_image("overview")


def test_cmu_associated_images_identical_across_readers(cmu_svs: Path) -> None:
    with open_slide(cmu_svs, "openslide") as a, open_slide(cmu_svs, "tiffslide") as b:
        for name in a.info.associated_images:
            assert np.array_equal(a.associated_image(name), b.associated_image(name)), name


def test_wsidicom_refuses_a_tiff(cmu_svs: Path) -> None:
    with pytest.raises(NotASlideError, match="wsidicom cannot open it"):
        open_slide(cmu_svs, "wsidicom")


def test_info_to_dict_matches_info(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        d = slide.info.to_dict()
    assert (d["width_px"], d["height_px"]) == CMU_SIZE
    assert d["level_count"] == len(d["levels"]) == 1
    assert d["mpp_x"] == pytest.approx(CMU_MPP, abs=1e-4)
    assert d["mpp_note"] is None
    assert d["associated_images"] == ["label", "macro", "thumbnail"]


# -- test3-DAPI-2.ndpi (Hamamatsu) ----------------------------------------------------------
def test_ndpi_with_openslide_has_seven_levels(ndpi: Path) -> None:
    with open_slide(ndpi) as slide:
        info = slide.info
        assert info.backend == "openslide"
        assert info.vendor == "hamamatsu"
        assert len(info.levels) == 7
        assert level_sizes(slide)[0] == NDPI_SIZE
        assert [lv.downsample for lv in info.levels] == [2.0**i for i in range(7)]
        assert info.mpp == pytest.approx(NDPI_MPP, abs=1e-3)
        assert info.objective_power == 40
        for lv in info.levels:
            assert lv.mpp == pytest.approx(info.mpp * lv.downsample)


def test_ndpi_levels_agree_between_readers(ndpi: Path) -> None:
    with open_slide(ndpi, "openslide") as a, open_slide(ndpi, "tiffslide") as b:
        # tiffslide lists fewer of the NDPI's reduced levels than OpenSlide (4 of 7 here),
        # but those it lists are the same pyramid.
        assert len(b.info.levels) >= 4
        n = len(b.info.levels)
        assert level_sizes(b) == level_sizes(a)[:n]
        assert b.info.mpp == pytest.approx(a.info.mpp, rel=1e-9)
        assert b.info.objective_power == 40
        assert "macro" in a.info.associated_images and "macro" in b.info.associated_images


# -- boxes.tiff: generic TIFF whose resolution tag is the 72 dpi default --------------------
@pytest.mark.parametrize("backend", TIFF_READERS)
def test_72_dpi_tiff_has_no_mpp(boxes_tiff: Path, backend: str) -> None:
    with open_slide(boxes_tiff, backend) as slide:
        info = slide.info
        assert level_sizes(slide)[0] == (300, 250)
        assert len(info.levels) == 4
        assert info.mpp is None and info.mpp_y is None
        assert info.mpp_source == "missing"
        assert all(lv.mpp is None for lv in info.levels)
        assert "352.8" in info.mpp_note
        with pytest.raises(MissingMppError, match="--mpp-override") as caught:
            info.require_mpp()
        assert "boxes.tiff" in str(caught.value)
        assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("backend", TIFF_READERS)
def test_mpp_override_fills_missing_mpp(boxes_tiff: Path, backend: str) -> None:
    with open_slide(boxes_tiff, backend, mpp_override=0.5) as slide:
        info = slide.info
        assert info.mpp == 0.5 and info.mpp_y == 0.5
        assert info.mpp_source == "override"
        assert info.require_mpp() == 0.5
        assert info.levels[1].mpp == pytest.approx(1.0)


def test_mpp_override_replaces_metadata(cmu_svs: Path) -> None:
    with open_slide(cmu_svs, mpp_override=0.25) as slide:
        assert slide.info.mpp == 0.25
        assert slide.info.mpp_source == "override"


@pytest.mark.parametrize("bad", [0.0, 1000.0])
def test_implausible_mpp_override_is_refused(boxes_tiff: Path, bad: float) -> None:
    with pytest.raises(ResolutionError, match="not a microscope resolution"):
        open_slide(boxes_tiff, mpp_override=bad)


# -- DICOM WSI ------------------------------------------------------------------------------
def test_dicom_folder_auto_uses_wsidicom_first(dicom_wsi_dir: Path) -> None:
    """auto reads DICOM with wsidicom (2.5x OpenSlide's DICOM decoding, bench/pacs.py)."""
    with open_slide(dicom_wsi_dir) as slide:
        info = slide.info
        assert info.backend == "wsidicom"
        assert info.vendor == "dicom"
        assert level_sizes(slide) == [(16, 16)]
        assert info.mpp == pytest.approx(0.499, abs=1e-4)
        assert info.path == str(dicom_wsi_dir)


@pytest.mark.parametrize("backend", ["openslide", "wsidicom"])
def test_dicom_folder_and_file_read_the_same_pixels(
    dicom_wsi_dir: Path, fixtures_dir: Path, backend: str
) -> None:
    with (
        open_slide(dicom_wsi_dir, backend) as folder,
        open_slide(fixtures_dir / "boxes_0.dcm", backend) as single,
    ):
        assert folder.info.backend == single.info.backend == backend
        assert level_sizes(folder) == level_sizes(single) == [(16, 16)]
        assert folder.info.mpp == pytest.approx(0.499, abs=1e-4)
        pixels = folder.read_region((0, 0), 0, (16, 16))
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        assert np.array_equal(pixels, single.read_region((0, 0), 0, (16, 16)))
        # Not a blank image: the boxes have colour.
        assert pixels.std() > 0


@pytest.mark.parametrize(("name", "side"), [("boxes_0.dcm", 16), ("highdicom-sm_image.dcm", 50)])
def test_dicom_openslide_and_wsidicom_agree(fixtures_dir: Path, name: str, side: int) -> None:
    path = fixtures_dir / name
    with open_slide(path, "openslide") as a, open_slide(path, "wsidicom") as b:
        assert level_sizes(a) == level_sizes(b) == [(side, side)]
        assert a.info.mpp == pytest.approx(b.info.mpp)
        assert np.array_equal(
            a.read_region((0, 0), 0, (side, side)), b.read_region((0, 0), 0, (side, side))
        )


def test_a_folder_of_two_dicom_series_is_not_two_different_slides(
    fixtures_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "two-series"
    folder.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm", "highdicom-sm_image.dcm"):
        shutil.copy(fixtures_dir / name, folder / name)
    # An ambiguous folder is refused, naming the way out, rather than each reader silently
    # opening a different series.
    for backend in ("openslide", "wsidicom", "auto"):
        with pytest.raises(NotASlideError, match="holds 2 DICOM whole-slide series"):
            open_slide(folder, backend)


def test_tiffslide_refuses_dicom(dicom_wsi_dir: Path) -> None:
    with pytest.raises(NotASlideError, match="tiffslide cannot open it"):
        open_slide(dicom_wsi_dir, "tiffslide")


def test_dicom_object_that_is_not_a_slide(fixtures_dir: Path) -> None:
    with pytest.raises(NotASlideError, match="no slide reader can open it"):
        open_slide(fixtures_dir / "highdicom-sm_annotations.dcm")


# -- errors -------------------------------------------------------------------------------
def test_unknown_backend(cmu_svs: Path) -> None:
    with pytest.raises(UnknownBackendError, match="'bioformats'") as caught:
        open_slide(cmu_svs, "bioformats")
    for name in ("openslide", "tiffslide", "wsidicom"):
        assert name in str(caught.value)


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide", "wsidicom"])
def test_unopenable_tiff_is_not_a_slide(fixtures_dir: Path, backend: str) -> None:
    with pytest.raises(NotASlideError) as caught:
        open_slide(fixtures_dir / "unopenable.tiff", backend)
    assert "unopenable.tiff" in str(caught.value)


def test_unopenable_tiff_reason_names_the_compression(fixtures_dir: Path) -> None:
    with pytest.raises(NotASlideError, match="compression"):
        open_slide(fixtures_dir / "unopenable.tiff")


@pytest.mark.parametrize("backend", TIFF_READERS)
def test_corrupt_tile_data_raises_slide_read_error(fixtures_dir: Path, backend: str) -> None:
    path = fixtures_dir / "unreadable.svs"
    with open_slide(path, backend) as slide:  # the header is fine
        assert level_sizes(slide) == [(16, 16)]
        with pytest.raises(SlideReadError, match="cannot decode pixel data") as caught:
            slide.read_region((0, 0), 0, (16, 16))
    assert "unreadable.svs" in str(caught.value)
    assert isinstance(caught.value, OSError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match="no such file") as caught:
        open_slide(tmp_path / "absent.svs")
    assert isinstance(caught.value, FileNotFoundError)


def test_text_file_with_slide_suffix(tmp_path: Path) -> None:
    fake = tmp_path / "fake.svs"
    fake.write_text("not a slide\n")
    with pytest.raises(NotASlideError, match=r"fake\.svs"):
        open_slide(fake)


# -- pixels: OpenSlide and tiffslide give the same bytes ----------------------------------
def _aligned_locations(slide: Slide, level: int, size: int) -> list[tuple[int, int]]:
    """Level-0 corners (multiples of the level's downsample) spread over the level."""
    lv = slide.info.levels[level]
    ds = round(lv.downsample)
    xs = [0, (lv.width_px - size) // 3, lv.width_px - size]
    ys = [0, (lv.height_px - size) // 2 + 1, lv.height_px - size]
    return [(x * ds, y * ds) for x, y in zip(xs, ys, strict=True)]


def stored_tile_indices(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    """(column, row) of a few whole stored tiles: the first, some inner ones, the last."""
    last = (width // tile - 1, height // tile - 1)
    inner = [(1, 2), (2, 1), (1, 1)]
    return [(0, 0), *[(x, y) for x, y in inner if x <= last[0] and y <= last[1]], last]


def _assert_readers_agree(path: Path, levels: list[int], size: int = 200) -> None:
    with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
        for level in levels:
            for location in _aligned_locations(a, level, size):
                ra = a.read_region(location, level, (size, size))
                rb = b.read_region(location, level, (size, size))
                assert ra.shape == (size, size, 3)
                assert np.array_equal(ra, rb), (level, location)


def test_cmu_read_region_identical_in_openslide_and_tiffslide(cmu_svs: Path) -> None:
    _assert_readers_agree(cmu_svs, [0])


def test_mosaic_read_region_identical_in_openslide_and_tiffslide(
    mosaic_2um: MosaicComposition, mosaic_1um: MosaicComposition
) -> None:
    _assert_readers_agree(Path(mosaic_2um.path), [0, 1, 2])
    _assert_readers_agree(Path(mosaic_1um.path), [0, 1, 2, 3])


def test_ndpi_read_region_identical_in_openslide_and_tiffslide(ndpi: Path) -> None:
    _assert_readers_agree(ndpi, [0, 1, 2, 3])


@pytest.mark.parametrize("direct_decode", ["1", "0"])
def test_stored_tile_reads_identical_in_openslide_and_tiffslide(
    mosaic_1um: MosaicComposition,
    cmu_svs: Path,
    direct_decode: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Requests that coincide with a tile stored in the TIFF (the usual tiling case), with
    the OpenSlide reader's direct JPEG decoding on and off."""
    monkeypatch.setenv("OSTEOMICS_DIRECT_TILE_DECODE", direct_decode)
    for path, tile, levels in [(Path(mosaic_1um.path), 256, [0, 1, 2, 3]), (cmu_svs, 240, [0])]:
        with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
            for level in levels:
                lv = a.info.levels[level]
                ds = round(lv.downsample)
                for tx, ty in stored_tile_indices(lv.width_px, lv.height_px, tile):
                    location = (tx * tile * ds, ty * tile * ds)
                    ra = a.read_region(location, level, (tile, tile))
                    rb = b.read_region(location, level, (tile, tile))
                    assert np.array_equal(ra, rb), (path.name, level, location)


@pytest.mark.parametrize("side", [1024, 512])
def test_thumbnail_identical_in_openslide_and_tiffslide(
    mosaic_2um: MosaicComposition, side: int
) -> None:
    path = Path(mosaic_2um.path)
    with open_slide(path, "openslide") as a, open_slide(path, "tiffslide") as b:
        ta, da = a.read_thumbnail(side)
        tb, db = b.read_thumbnail(side)
    assert da == db
    assert ta.shape == tb.shape
    assert max(ta.shape[:2]) <= side
    assert np.array_equal(ta, tb)


def test_thumbnail_is_block_average_of_level_0(cmu_svs: Path) -> None:
    with open_slide(cmu_svs) as slide:
        thumb, downsample = slide.read_thumbnail(512)
        f = int(downsample)
        assert downsample == f == 6  # ceil(2967 / 512)
        assert thumb.shape == (CMU_SIZE[1] // f, CMU_SIZE[0] // f, 3)
        block = slide.read_region((600, 1200), 0, (f, f)).astype(np.float64)
    expected = block.reshape(-1, 3).mean(axis=0)
    assert np.abs(thumb[200, 100].astype(np.float64) - expected).max() <= 1.0


@pytest.mark.filterwarnings("ignore:.*out-of-bounds, but padding is requested:UserWarning")
@pytest.mark.parametrize("backend", TIFF_READERS)
def test_pixels_outside_the_slide_are_white(cmu_svs: Path, backend: str) -> None:
    w, h = CMU_SIZE
    with open_slide(cmu_svs, backend) as slide:
        corner = slide.read_region((w - 40, h - 24), 0, (64, 48))
        before = slide.read_region((-16, -8), 0, (64, 48))
        beyond = slide.read_region((w + 10, 0), 0, (32, 32))
        inside = slide.read_region((w - 40, h - 24), 0, (40, 24))
    assert (corner[24:] == 255).all() and (corner[:, 40:] == 255).all()
    assert np.array_equal(corner[:24, :40], inside)
    assert (before[:8] == 255).all() and (before[:, :16] == 255).all()
    assert (beyond == 255).all()


@pytest.mark.filterwarnings("ignore:.*out-of-bounds, but padding is requested:UserWarning")
def test_region_outside_the_slide_is_the_same_in_both_readers(cmu_svs: Path) -> None:
    w, h = CMU_SIZE
    with open_slide(cmu_svs, "openslide") as a, open_slide(cmu_svs, "tiffslide") as b:
        for location in [(w - 40, h - 24), (-16, -8), (-100, h - 10)]:
            assert np.array_equal(
                a.read_region(location, 0, (64, 48)), b.read_region(location, 0, (64, 48))
            ), location
