"""The built-in demo case: small mosaic slides from real TCIA tiles shipped in the package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from osteomics.wsi.labelled import read_labelled_folder
from osteomics.wsi.mosaic import MosaicComposition, build_mosaic_slide, random_layout

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
