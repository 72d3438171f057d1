"""Mosaic slides: the recorded composition is true (pixels of each cell are its source tile,
in its recorded orientation), and both readers read the pyramid and its µm/px back."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteomics.wsi.labelled import LabelledTile, parse_tcia_name
from osteomics.wsi.mosaic import (
    GLASS_LABEL,
    GLASS_RGB,
    MosaicCell,
    MosaicComposition,
    build_mosaic_slide,
    random_layout,
)
from osteomics.wsi.slide import open_slide

LABELS = {"Non-Tumor", "Non-Viable-Tumor", "Viable"}


def oriented_source(cell: MosaicCell, tiles_dir: Path) -> np.ndarray:
    """The cell's source tile at the cell's size, turned and mirrored as recorded."""
    with Image.open(tiles_dir / cell.label / cell.source) as im:
        rgb = im.convert("RGB")
        if rgb.size != (cell.size_px, cell.size_px):
            rgb = rgb.reduce(rgb.size[0] // cell.size_px)
        arr = np.asarray(rgb)
    arr = np.rot90(arr, cell.rotation_90)
    return arr[:, ::-1] if cell.flipped else arr


def all_orientations(arr: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(arr, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_composition_json_round_trips(mosaic_2um: MosaicComposition) -> None:
    path = Path(mosaic_2um.path)
    from_disk = MosaicComposition.from_json(path.with_suffix(".json").read_text())
    assert from_disk == mosaic_2um
    assert MosaicComposition.from_json(mosaic_2um.to_json()) == mosaic_2um
    assert all(isinstance(c, MosaicCell) for c in from_disk.cells)


@pytest.mark.parametrize("fixture", ["mosaic_2um", "mosaic_1um"])
def test_geometry(fixture: str, request: pytest.FixtureRequest) -> None:
    comp: MosaicComposition = request.getfixturevalue(fixture)
    cell_px = comp.cell_px
    assert (comp.width_px, comp.height_px) == (6 * cell_px, 4 * cell_px)
    assert comp.mpp == pytest.approx(1024 / cell_px)  # 1024 px sources at 1 µm/px
    assert len(comp.cells) == 24
    positions = {(c.x_px, c.y_px) for c in comp.cells}
    assert positions == {(c * cell_px, r * cell_px) for r in range(4) for c in range(6)}
    counts = Counter(c.label for c in comp.cells)
    assert counts[GLASS_LABEL] == 6  # 25 % of 24
    assert set(counts) - {GLASS_LABEL} <= LABELS


def test_area_by_label_sums_to_slide_area(mosaic_2um: MosaicComposition) -> None:
    areas = mosaic_2um.area_mm2_by_label()
    total = mosaic_2um.width_px * mosaic_2um.height_px * mosaic_2um.mpp**2 / 1e6
    assert sum(areas.values()) == pytest.approx(total)
    assert areas[GLASS_LABEL] == pytest.approx(6 * (512 * 2.0 / 1000) ** 2)
    assert list(areas) == sorted(areas)


@pytest.mark.parametrize(("fixture", "levels"), [("mosaic_2um", 3), ("mosaic_1um", 4)])
@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_pyramid_and_mpp_read_back(
    fixture: str, levels: int, backend: str, request: pytest.FixtureRequest
) -> None:
    comp: MosaicComposition = request.getfixturevalue(fixture)
    assert comp.levels == levels
    with open_slide(Path(comp.path), backend) as slide:
        info = slide.info
        assert len(info.levels) == levels
        assert info.mpp == pytest.approx(comp.mpp, rel=1e-6)
        assert info.mpp_source == "metadata"
        for i, lv in enumerate(info.levels):
            assert (lv.width_px, lv.height_px) == (comp.width_px >> i, comp.height_px >> i)
            assert lv.downsample == pytest.approx(2.0**i)
        assert max(info.levels[-1].width_px, info.levels[-1].height_px) <= 1024


def test_cells_record_their_sources(
    mosaic_2um: MosaicComposition, data_dir: Path, labelled_tiles: list[LabelledTile]
) -> None:
    tiles_dir = data_dir / "osteosarcoma-tiles"
    for cell in mosaic_2um.cells:
        if cell.label == GLASS_LABEL:
            assert cell.source == "" and cell.source_sha256 == ""
            continue
        source = tiles_dir / cell.label / cell.source
        assert hashlib.sha256(source.read_bytes()).hexdigest() == cell.source_sha256
        assert (cell.case, cell.slide) == parse_tcia_name(source.stem)
        assert 0 <= cell.rotation_90 < 4
    # Tissue cells cycle through the tiles: no tile repeats before all 45 are used.
    sources = [c.source for c in mosaic_2um.cells if c.label != GLASS_LABEL]
    assert len(sources) == len(set(sources)) == 18
    assert len(labelled_tiles) == 45


@pytest.mark.parametrize(("fixture", "max_diff"), [("mosaic_1um", 2.0), ("mosaic_2um", 5.0)])
def test_cell_pixels_are_the_oriented_source(
    fixture: str, max_diff: float, data_dir: Path, request: pytest.FixtureRequest
) -> None:
    """Level 0 of every cell matches its source tile in the recorded orientation (JPEG
    tolerance), and matches it better than in any other orientation."""
    comp: MosaicComposition = request.getfixturevalue(fixture)
    tiles_dir = data_dir / "osteosarcoma-tiles"
    with open_slide(Path(comp.path)) as slide:
        for cell in comp.cells:
            pixels = slide.read_region((cell.x_px, cell.y_px), 0, (cell.size_px, cell.size_px))
            if cell.label == GLASS_LABEL:
                assert (pixels == np.array(GLASS_RGB, dtype=np.uint8)).all()
                continue
            expected = oriented_source(cell, tiles_dir)
            diff = mean_abs_diff(pixels, expected)
            assert diff < max_diff, (cell.row, cell.col, diff)
            others = [mean_abs_diff(pixels, o) for o in all_orientations(expected)[1:]]
            assert min(others) > 3 * diff, (cell.row, cell.col)


def test_reduced_level_is_the_average_of_level_0(mosaic_1um: MosaicComposition) -> None:
    cell = next(c for c in mosaic_1um.cells if c.label != GLASS_LABEL)
    with open_slide(Path(mosaic_1um.path)) as slide:
        full = slide.read_region((cell.x_px, cell.y_px), 0, (1024, 1024))
        half = slide.read_region((cell.x_px, cell.y_px), 1, (512, 512))
    reduced = np.asarray(Image.fromarray(full).reduce(2))
    assert mean_abs_diff(half, reduced) < 3.0


def test_random_layout_is_seeded_and_counts_glass(labelled_tiles: list[LabelledTile]) -> None:
    a = random_layout(labelled_tiles, 5, 7, glass_fraction=0.2, seed=4)
    b = random_layout(labelled_tiles, 5, 7, glass_fraction=0.2, seed=4)
    c = random_layout(labelled_tiles, 5, 7, glass_fraction=0.2, seed=5)
    assert a == b
    assert a != c
    assert len(a) == 5 and all(len(row) == 7 for row in a)
    assert sum(cell is None for row in a for cell in row) == 7  # round(35 * 0.2)
    with pytest.raises(ValueError, match="at least one labelled tile"):
        random_layout([], 2, 2)


def test_build_refuses_bad_cell_sizes(tmp_path: Path, labelled_tiles: list[LabelledTile]) -> None:
    layout = random_layout(labelled_tiles[:2], 1, 2, glass_fraction=0.0)
    for cell_px in (384, 128):  # not a power of two; smaller than a TIFF tile
        with pytest.raises(ValueError, match="power of two"):
            build_mosaic_slide(tmp_path / "bad.tiff", layout, cell_px=cell_px)
    with pytest.raises(ValueError, match="same number of cells"):
        build_mosaic_slide(tmp_path / "ragged.tiff", [[None, None], [None]], cell_px=256)
    assert not list(tmp_path.iterdir())
