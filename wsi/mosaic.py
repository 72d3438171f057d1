"""Mosaic slides: pyramidal tiled JPEG TIFFs assembled from labelled tiles, of known composition.

Real multi-level H&E pyramids cannot be shipped here, so tests and benchmarks build them from
the real TCIA osteosarcoma tiles: a grid of cells, each one labelled tile (in one of its 8
orientations) or bare glass. The composition (area per label) is recorded, so necrosis
estimates can be checked against the truth.

The file is a generic tiled TIFF: level 0 and every 2x reduction as successive directories,
JPEG-compressed 256 px tiles, resolution tags in pixels per centimetre. OpenSlide and tiffslide
both read the µm/px from those tags.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from osteomics.wsi.labelled import LabelledTile

GLASS_RGB = (242, 242, 240)
GLASS_LABEL = "glass"


@dataclass(frozen=True)
class MosaicCell:
    """One cell of a mosaic: where it is (level-0 px) and what it holds."""

    row: int
    col: int
    x_px: int
    y_px: int
    size_px: int
    label: str
    """Class label of the source tile, or ``glass`` for an empty cell."""
    source: str = ""
    """Source file name ('' for glass)."""
    source_sha256: str = ""
    case: str = ""
    slide: str = ""
    rotation_90: int = 0
    """Quarter turns counter-clockwise applied to the source."""
    flipped: bool = False
    """Mirrored left-right (after the rotation)."""


@dataclass
class MosaicComposition:
    """What a mosaic slide is made of."""

    path: str
    mpp: float
    width_px: int
    height_px: int
    cell_px: int
    levels: int
    cells: list[MosaicCell] = field(default_factory=list)

    def area_mm2_by_label(self) -> dict[str, float]:
        """Cell area per label in mm² (glass included)."""
        areas: dict[str, float] = {}
        mm2_per_cell = (self.cell_px * self.mpp / 1000.0) ** 2
        for cell in self.cells:
            areas[cell.label] = areas.get(cell.label, 0.0) + mm2_per_cell
        return dict(sorted(areas.items()))

    def necrosis_rate_percent(self) -> float | None:
        """True necrosis rate of the mosaic by cell area (``Non-Viable-Tumor`` over tumour)."""
        from osteomics.wsi.necrosis import necrosis_rate_percent

        areas = self.area_mm2_by_label()
        return necrosis_rate_percent(areas.get("Non-Viable-Tumor", 0.0), areas.get("Viable", 0.0))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> MosaicComposition:
        data = json.loads(text)
        data["cells"] = [MosaicCell(**c) for c in data["cells"]]
        return cls(**data)


def random_layout(
    tiles: Sequence[LabelledTile],
    rows: int,
    cols: int,
    glass_fraction: float = 0.25,
    seed: int = 0,
) -> list[list[LabelledTile | None]]:
    """A rows x cols layout: ``glass_fraction`` of the cells empty, the rest cycling through
    ``tiles`` in a seeded random order (every tile used before any repeats)."""
    if not tiles:
        raise ValueError("a mosaic needs at least one labelled tile")
    rng = random.Random(seed)
    n_cells = rows * cols
    n_glass = round(n_cells * glass_fraction)
    order: list[LabelledTile] = []
    while len(order) < n_cells - n_glass:
        batch = list(tiles)
        rng.shuffle(batch)
        order.extend(batch)
    flat: list[LabelledTile | None] = [*order[: n_cells - n_glass], *([None] * n_glass)]
    rng.shuffle(flat)
    return [flat[r * cols : (r + 1) * cols] for r in range(rows)]


def build_mosaic_slide(
    out_path: Path,
    layout: Sequence[Sequence[LabelledTile | None]],
    source_mpp: float = 1.0,
    cell_px: int = 1024,
    seed: int = 0,
    jpeg_quality: int = 90,
    tile_px: int = 256,
    smallest_level_px: int = 1024,
) -> MosaicComposition:
    """Write a pyramidal tiled JPEG TIFF of labelled tiles and return its composition.

    Parameters
    ----------
    out_path:
        The ``.tiff`` file to write (its composition goes next to it as ``.json``).
    layout:
        Rows of cells; each a :class:`LabelledTile` or ``None`` for glass.
    source_mpp:
        µm/px of the source tiles (the TCIA tiles are about 1.0, scanned at 10x).
    cell_px:
        Side of one cell in level-0 pixels; sources are resized to it, so the slide's µm/px is
        ``source_mpp * source_side / cell_px``. A power of two, at least ``tile_px``.
    seed:
        Chooses each cell's orientation (one of 8), so repeated tiles are not identical.
    jpeg_quality, tile_px:
        TIFF tile compression and size.
    smallest_level_px:
        Reductions stop once the longer side is at most this.
    """
    import tifffile

    rows, cols = len(layout), len(layout[0])
    if any(len(r) != cols for r in layout):
        raise ValueError("every layout row must have the same number of cells")
    if cell_px < tile_px or cell_px & (cell_px - 1):
        raise ValueError(
            f"cell size {cell_px} px must be a power of two, at least a TIFF tile ({tile_px})"
        )
    width, height = cols * cell_px, rows * cell_px
    rng = random.Random(seed)
    cells: list[MosaicCell] = []
    source_sides: set[int] = set()
    for r, row in enumerate(layout):
        for c, tile in enumerate(row):
            if tile is None:
                cells.append(MosaicCell(r, c, c * cell_px, r * cell_px, cell_px, GLASS_LABEL))
                continue
            with Image.open(tile.path) as im:
                source_sides.add(max(im.size))
            cells.append(
                MosaicCell(
                    r,
                    c,
                    c * cell_px,
                    r * cell_px,
                    cell_px,
                    tile.label,
                    source=tile.path.name,
                    source_sha256=_sha256(tile.path),
                    case=tile.case,
                    slide=tile.slide,
                    rotation_90=rng.randrange(4),
                    flipped=rng.random() < 0.5,
                )
            )
    if len(source_sides) > 1:
        raise ValueError(f"source tiles differ in size ({sorted(source_sides)}); use one size")
    source_side = source_sides.pop() if source_sides else cell_px
    mpp = source_mpp * source_side / cell_px
    paths = {t.path.name: t.path for row in layout for t in row if t is not None}

    n_levels = 1
    while max(width, height) >> (n_levels - 1) > smallest_level_px and cell_px >> n_levels >= 16:
        n_levels += 1

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
        for level in range(n_levels):
            factor = 2**level
            lw, lh = width // factor, height // factor
            px_per_cm = 1e4 / (mpp * factor)
            tif.write(
                _level_tiles(cells, paths, rows, cols, cell_px // factor, tile_px, factor),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_px, tile_px),
                compression="jpeg",
                compressionargs={"level": jpeg_quality},
                photometric="rgb",
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 else 1,
                description=f"osteomics mosaic slide, level {level}" if level == 0 else None,
                metadata=None,
            )
    tmp.replace(out_path)
    composition = MosaicComposition(str(out_path), mpp, width, height, cell_px, n_levels, cells)
    out_path.with_suffix(".json").write_text(composition.to_json())
    return composition


def _level_tiles(
    cells: list[MosaicCell],
    paths: dict[str, Path],
    rows: int,
    cols: int,
    cell_side: int,
    tile_px: int,
    factor: int,
) -> Iterator[np.ndarray]:
    """Yield TIFF tiles of one level in row-major order, one row of cells in memory at a time."""
    by_position = {(c.row, c.col): c for c in cells}
    tiles_per_cell = max(1, cell_side // tile_px)
    width = cols * cell_side
    strip_rows = max(cell_side, tile_px)
    cells_per_strip = max(1, tile_px // cell_side)  # small cells: several cell rows per strip
    for r0 in range(0, rows, cells_per_strip):
        strip = np.empty((strip_rows, _round_up(width, tile_px), 3), dtype=np.uint8)
        strip[:] = GLASS_RGB
        for dr in range(cells_per_strip):
            r = r0 + dr
            if r >= rows:
                break
            for c in range(cols):
                img = _cell_pixels(by_position[(r, c)], paths, cell_side)
                y = dr * cell_side
                strip[y : y + cell_side, c * cell_side : (c + 1) * cell_side] = img
        n_tile_rows = tiles_per_cell if cell_side >= tile_px else 1
        for tr in range(n_tile_rows):
            for tc in range(strip.shape[1] // tile_px):
                yield strip[tr * tile_px : (tr + 1) * tile_px, tc * tile_px : (tc + 1) * tile_px]


def _cell_pixels(cell: MosaicCell, paths: dict[str, Path], side: int) -> np.ndarray:
    if cell.label == GLASS_LABEL:
        return np.broadcast_to(np.array(GLASS_RGB, dtype=np.uint8), (side, side, 3))
    with Image.open(paths[cell.source]) as im:
        rgb = im.convert("RGB")
        if rgb.size != (side, side):
            # Integer reductions average exact blocks; other sizes resample with Lanczos.
            ratio = rgb.size[0] // side
            if ratio * side == rgb.size[0] and rgb.size[0] == rgb.size[1]:
                rgb = rgb.reduce(ratio)
            else:
                rgb = rgb.resize((side, side), Image.Resampling.LANCZOS)
        arr = np.asarray(rgb)
    arr = np.rot90(arr, cell.rotation_90)
    if cell.flipped:
        arr = arr[:, ::-1]
    return arr


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
