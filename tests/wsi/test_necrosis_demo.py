"""The demo's honesty figures: training-tile overlap and per-tile agreement with the mosaic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from osteomics.wsi.demo import demo_tiles_in_training, tile_agreement
from osteomics.wsi.mosaic import MosaicComposition
from osteomics.wsi.necrosis import LABEL_TO_CLASS, TISSUE_CLASSES
from osteomics.wsi.results import SlideTiles

MODELS = Path(__file__).resolve().parents[2] / "wsi" / "models"


def test_demo_tiles_are_training_tiles_of_both_shipped_models() -> None:
    for name in ("osteosarcoma-necrosis-v1", "osteosarcoma-necrosis-v2"):
        card = json.loads((MODELS / name / "model_card.json").read_text())
        assert demo_tiles_in_training(card) == (7, 7), name
    assert demo_tiles_in_training({"training": {"images": []}}) == (0, 7)


def tiles_on_cells(composition: MosaicComposition, shift_px: int, wrong: int) -> SlideTiles:
    """One tile per tissue cell (shifted by ``shift_px``), probability 1 on the cell's class,
    except the first ``wrong`` tiles, which are given the next class."""
    cells = [c for c in composition.cells if c.label in LABEL_TO_CLASS]
    probabilities = np.zeros((len(cells), 3))
    for i, cell in enumerate(cells):
        k = TISSUE_CLASSES.index(LABEL_TO_CLASS[cell.label])
        probabilities[i, (k + 1) % 3 if i < wrong else k] = 1.0
    n = len(cells)
    return SlideTiles(
        np.array([c.x_px + shift_px for c in cells]), np.array([c.y_px for c in cells]),
        float(composition.cell_px), np.ones(n, np.float32), probabilities, TISSUE_CLASSES,
        probabilities, np.zeros((8, 8, 3), np.uint8), 1.0,
    )  # fmt: skip


def test_tile_agreement_counts_the_class_under_each_tile_centre(
    mosaic_2um: MosaicComposition,
) -> None:
    n = sum(c.label in LABEL_TO_CLASS for c in mosaic_2um.cells)
    exact = tile_agreement(tiles_on_cells(mosaic_2um, 0, wrong=0), mosaic_2um)
    assert (exact.agreeing, exact.scored) == (n, n) and exact.share == 1.0
    three_wrong = tile_agreement(tiles_on_cells(mosaic_2um, 0, wrong=3), mosaic_2um)
    assert (three_wrong.agreeing, three_wrong.scored) == (n - 3, n)
    # Shifted by 60 % of a cell, each tile's centre lies in the next cell to the right.
    shifted = tile_agreement(
        tiles_on_cells(mosaic_2um, int(0.6 * mosaic_2um.cell_px), 0), mosaic_2um
    )
    assert shifted.agreeing < n
