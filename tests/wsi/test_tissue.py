"""Tissue detection against mosaics of known composition, and fraction_in_boxes against a
hand-computed mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteomics.wsi.labelled import LabelledTile
from osteomics.wsi.mosaic import GLASS_LABEL, MosaicComposition, build_mosaic_slide, random_layout
from osteomics.wsi.slide import open_slide
from osteomics.wsi.tissue import (
    MAX_SATURATION,
    MIN_SATURATION,
    TissueMask,
    detect_tissue,
    saturation,
)

NECROSIS = "Non-Viable-Tumor"


def cell_fractions(comp: MosaicComposition, thumbnail_px: int = 1024) -> tuple[TissueMask, dict]:
    """Detect tissue on the slide's thumbnail; tissue fraction of every cell by (row, col)."""
    with open_slide(Path(comp.path)) as slide:
        thumb, downsample = slide.read_thumbnail(thumbnail_px)
        tissue = detect_tissue(thumb, downsample, slide.info.mpp)
    xs = np.array([c.x_px for c in comp.cells])
    ys = np.array([c.y_px for c in comp.cells])
    fractions = tissue.fraction_in_boxes(xs, ys, comp.cell_px)
    return tissue, {(c.row, c.col): f for c, f in zip(comp.cells, fractions, strict=True)}


def saturated_share(source: Path) -> float:
    """Share of a source tile's pixels above the top saturation bound: surely tissue."""
    with Image.open(source) as im:
        return float((saturation(np.asarray(im.convert("RGB"))) > MAX_SATURATION).mean())


@pytest.fixture(scope="module")
def tumour_mosaic(
    labelled_tiles: list[LabelledTile], tmp_path_factory: pytest.TempPathFactory
) -> MosaicComposition:
    """All 14 necrotic and 14 viable tumour tiles and 4 glass cells, 256 px cells (4 µm/px)."""
    tumour = [t for t in labelled_tiles if t.label in (NECROSIS, "Viable")]
    layout = random_layout(tumour, 4, 8, glass_fraction=0.125, seed=3)
    path = tmp_path_factory.mktemp("tumour") / "tumour.tiff"
    return build_mosaic_slide(path, layout, cell_px=256, seed=3)


@pytest.mark.parametrize("fixture", ["mosaic_2um", "mosaic_1um"])
def test_glass_cells_have_no_tissue(fixture: str, request: pytest.FixtureRequest) -> None:
    comp: MosaicComposition = request.getfixturevalue(fixture)
    _, fractions = cell_fractions(comp)
    glass = [fractions[(c.row, c.col)] for c in comp.cells if c.label == GLASS_LABEL]
    assert len(glass) == 6
    assert max(glass) < 0.01


def test_dense_tissue_cells_are_tissue(mosaic_2um: MosaicComposition, data_dir: Path) -> None:
    """Cells whose source is mostly clearly coloured are (nearly) all tissue; whatever the
    source, a tissue cell is never empty."""
    _, fractions = cell_fractions(mosaic_2um)
    tiles_dir = data_dir / "osteosarcoma-tiles"
    dense = 0
    for cell in mosaic_2um.cells:
        if cell.label == GLASS_LABEL:
            continue
        fraction = fractions[(cell.row, cell.col)]
        assert fraction > 0.1, cell
        if saturated_share(tiles_dir / cell.label / cell.source) >= 0.8:
            dense += 1
            assert fraction >= 0.9, (cell.source, fraction)
    assert dense >= 5  # the check above ran on enough cells to mean something


def test_whole_slide_fraction_matches_cells(mosaic_2um: MosaicComposition) -> None:
    tissue, fractions = cell_fractions(mosaic_2um)
    assert tissue.tissue_fraction == pytest.approx(np.mean(list(fractions.values())), abs=0.01)


def test_pale_necrosis_is_tissue(tumour_mosaic: MosaicComposition, data_dir: Path) -> None:
    tissue, fractions = cell_fractions(tumour_mosaic)
    # The slide is full of vivid viable tumour: Otsu alone would set the bar above necrosis.
    assert tissue.otsu_threshold > MAX_SATURATION
    assert tissue.threshold == MAX_SATURATION
    tiles_dir = data_dir / "osteosarcoma-tiles"
    necrotic = [c for c in tumour_mosaic.cells if c.label == NECROSIS]
    assert len(necrotic) == 14
    for cell in necrotic:
        # Every necrotic pixel coloured above the bound is kept (and morphology adds more).
        share = saturated_share(tiles_dir / cell.label / cell.source)
        assert fractions[(cell.row, cell.col)] >= share - 0.02, cell.source
    detected = [fractions[(c.row, c.col)] for c in necrotic]
    assert min(detected) >= 0.6
    assert np.mean(detected) >= 0.9
    glass = [fractions[(c.row, c.col)] for c in tumour_mosaic.cells if c.label == GLASS_LABEL]
    assert max(glass) < 0.01


def test_unclamped_otsu_would_lose_necrosis(tumour_mosaic: MosaicComposition) -> None:
    """Why the clamp exists: the same slide thresholded at Otsu's own value drops necrosis."""
    with open_slide(Path(tumour_mosaic.path)) as slide:
        thumb, downsample = slide.read_thumbnail(1024)
    detected = detect_tissue(thumb, downsample, tumour_mosaic.mpp)
    raw = TissueMask(saturation(thumb) > detected.otsu_threshold, downsample, 0.0, 0.0)
    necrotic = [c for c in tumour_mosaic.cells if c.label == NECROSIS]
    xs = np.array([c.x_px for c in necrotic])
    ys = np.array([c.y_px for c in necrotic])
    assert raw.fraction_in_boxes(xs, ys, 256).mean() < 0.5
    assert detected.fraction_in_boxes(xs, ys, 256).mean() >= 0.9


def test_threshold_is_clamped_on_a_blank_image() -> None:
    glass = np.full((200, 300, 3), 240, dtype=np.uint8)
    tissue = detect_tissue(glass, 8.0, 0.5)
    assert tissue.threshold == MIN_SATURATION
    assert not tissue.mask.any()
    assert tissue.tissue_fraction == 0.0
    assert tissue.mask.shape == (200, 300)


def test_specks_are_removed_and_small_holes_filled() -> None:
    """Morphology works in µm: at 8 µm per mask pixel (64 µm² each), a 3 x 3 px speck
    (576 µm² < 0.01 mm²) goes, a 6 x 6 px hole (2304 µm² < 0.05 mm²) is filled."""
    image = np.full((300, 300, 3), 240, dtype=np.uint8)
    image[50:250, 50:250] = (200, 80, 160)  # a block of tissue
    image[140:146, 140:146] = 240  # a small hole in it
    image[10:13, 280:283] = (200, 80, 160)  # a speck
    tissue = detect_tissue(image, downsample=16.0, mpp=0.5)
    assert tissue.mask[140:146, 140:146].all()
    assert not tissue.mask[5:20, 270:290].any()
    assert tissue.mask[60:240, 60:240].all()
    assert not tissue.mask[:40].any()


def test_saturation_values() -> None:
    rgb = np.array([[[255, 0, 0], [128, 128, 128], [0, 0, 0], [200, 100, 100]]], dtype=np.uint8)
    assert saturation(rgb)[0] == pytest.approx([1.0, 0.0, 0.0, 0.5])


# -- fraction_in_boxes ----------------------------------------------------------------------
def brute_force_fraction(mask: np.ndarray, downsample: int, x: int, y: int, side: int) -> float:
    block = mask[
        y // downsample : (y + side) // downsample, x // downsample : (x + side) // downsample
    ]
    return float(block.mean())


def test_fraction_in_boxes_by_hand() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:5, 0:5] = True  # top-left quarter is tissue
    mask[5:10, 5:10] = True  # and the bottom-right quarter
    tissue = TissueMask(mask, downsample=4.0, threshold=0.06, otsu_threshold=0.06)
    xs = np.array([0, 20, 0, 8, 0])
    ys = np.array([0, 20, 20, 8, 0])
    sides = 20.0  # 5 mask pixels
    result = tissue.fraction_in_boxes(xs, ys, sides)
    # boxes: top-left quarter, bottom-right quarter, bottom-left quarter, the middle 5 x 5
    # (rows and columns 2-6: 9 + 4 tissue pixels of 25), and the top-left quarter again.
    assert result == pytest.approx([1.0, 1.0, 0.0, 13 / 25, 1.0])
    whole = tissue.fraction_in_boxes(np.array([0]), np.array([0]), 40.0)
    assert whole == pytest.approx([0.5])


def test_fraction_in_boxes_matches_brute_force_on_random_masks() -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((60, 80)) < 0.4
    downsample = 8
    tissue = TissueMask(mask, float(downsample), 0.06, 0.06)
    side = 10 * downsample
    xs = rng.integers(0, 80 - 10, size=200) * downsample
    ys = rng.integers(0, 60 - 10, size=200) * downsample
    got = tissue.fraction_in_boxes(xs, ys, side)
    expected = [
        brute_force_fraction(mask, downsample, x, y, side) for x, y in zip(xs, ys, strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got.dtype == np.float64 and got.shape == (200,)


def test_tissue_png_round_trip(tmp_path: Path) -> None:
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:5, 3:8] = True
    TissueMask(mask, 4.0, 0.05, 0.05).save_png(tmp_path / "tissue.png")
    with Image.open(tmp_path / "tissue.png") as im:
        back = np.asarray(im)
    assert back.dtype == np.uint8
    assert np.array_equal(back == 255, mask)
    assert set(np.unique(back)) == {0, 255}
