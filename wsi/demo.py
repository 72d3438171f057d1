"""The built-in demo case: small mosaic slides from real TCIA tiles shipped in the package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from osteomics.wsi.labelled import read_labelled_folder
from osteomics.wsi.mosaic import MosaicComposition, build_mosaic_slide, random_layout
from osteomics.wsi.necrosis import LABEL_TO_CLASS
from osteomics.wsi.results import SlideTiles

#: µm/px of the shipped demo tiles (1024 px TCIA tiles at about 1 µm/px, reduced 2x).
DEMO_TILE_MPP = 2.0


@dataclass(frozen=True)
class DemoSlide:
    path: Path
    composition: MosaicComposition


def demo_tiles_folder() -> Path:
    """Folder of the shipped demo tiles (one sub-folder per label; see its README.md)."""
    return Path(str(resources.files("osteomics.wsi").joinpath("demo_tiles")))


def build_demo_case(
    out_dir: Path, n_slides: int = 2, progress: Callable[[int, int], None] | None = None
) -> list[DemoSlide]:
    """Write ``n_slides`` mosaic slides (6 x 6 cells of 512 px, 2 µm/px) of one demo case.

    ``progress(done, total)`` is called before each slide and after the last.
    """
    tiles = read_labelled_folder(demo_tiles_folder())
    slides = []
    for i in range(n_slides):
        if progress is not None:
            progress(i, n_slides)
        path = Path(out_dir) / f"demo-case-slide-{i + 1}.tiff"
        layout = random_layout(tiles, rows=6, cols=6, glass_fraction=0.3, seed=i)
        composition = build_mosaic_slide(
            path, layout, source_mpp=DEMO_TILE_MPP, cell_px=512, seed=i
        )
        slides.append(DemoSlide(path, composition))
    if progress is not None:
        progress(n_slides, n_slides)
    return slides


def demo_tiles_in_training(card: dict[str, Any]) -> tuple[int, int]:
    """How many of the shipped demo tiles the model was trained on, by original file name
    against the images its card lists (``training.images``): (in training, demo tiles)."""
    demo = [p.name for p in demo_tiles_folder().glob("*/*.jpg")]
    images = (card.get("training") or {}).get("images") or []
    trained = {Path(str(i.get("file", ""))).name for i in images if isinstance(i, dict)}
    return sum(name in trained for name in demo), len(demo)


@dataclass(frozen=True)
class TileAgreement:
    """Scored tiles whose predicted class is the class of the mosaic cell under their centre."""

    agreeing: int
    scored: int

    @property
    def share(self) -> float | None:
        return self.agreeing / self.scored if self.scored else None


def tile_agreement(tiles: SlideTiles, composition: MosaicComposition) -> TileAgreement:
    """Per-tile agreement of the model with a mosaic's known composition: a tile agrees when
    its most probable class is the tissue class of the cell under its centre (a centre on
    glass never agrees)."""
    if len(tiles.x_px) == 0:
        return TileAgreement(0, 0)
    predicted = [tiles.classes[k] for k in np.asarray(tiles.probabilities).argmax(axis=1)]
    agreeing = 0
    for x, y, name in zip(tiles.x_px.tolist(), tiles.y_px.tolist(), predicted, strict=True):
        cx, cy = x + tiles.side_px / 2.0, y + tiles.side_px / 2.0
        for cell in composition.cells:
            if (
                cell.x_px <= cx < cell.x_px + cell.size_px
                and cell.y_px <= cy < cell.y_px + cell.size_px
            ):
                agreeing += LABEL_TO_CLASS.get(cell.label) == name
                break
    return TileAgreement(agreeing, len(predicted))
