"""Score labelled images of any size with a tile classifier, and measure how well it did."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from osteomics.wsi.calibration import ClassificationMetrics, classification_metrics
from osteomics.wsi.errors import TrainingDataError
from osteomics.wsi.labelled import LabelledTile, read_labelled_folder
from osteomics.wsi.model import ModelCard, predict_tiles
from osteomics.wsi.subtiles import read_rgb, tissue_subtiles

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def subtiles_for_model(rgb: np.ndarray, card: ModelCard, source_mpp: float) -> np.ndarray:
    """The image's sub-tiles at the model's µm/px and size, those with enough tissue.

    When none reaches ``card.preprocessing.min_tissue``, the one with the most tissue is kept.
    """
    return tissue_subtiles(
        rgb, source_mpp, card.input_mpp, card.input_px, card.preprocessing.min_tissue
    )


def score_image(
    model: torch.nn.Module, card: ModelCard, rgb: np.ndarray, source_mpp: float
) -> np.ndarray:
    """Class probabilities (n_classes,) of one image: mean over its tissue sub-tiles."""
    return predict_tiles(model, card, subtiles_for_model(rgb, card, source_mpp)).mean(axis=0)


def check_labels(tiles: Sequence[LabelledTile], card: ModelCard, folder: Path) -> np.ndarray:
    """Class index of each tile; raises :class:`TrainingDataError` for a label the model lacks."""
    unknown = sorted({t.label for t in tiles} - set(card.classes))
    if unknown:
        raise TrainingDataError(
            f"{folder}: sub-folder(s) {', '.join(unknown)} are not classes of model "
            f"{card.name} ({', '.join(card.classes)}); rename or remove them"
        )
    return np.array([card.classes.index(t.label) for t in tiles], dtype=np.int64)


def evaluate_folder(
    model: torch.nn.Module,
    card: ModelCard,
    folder: Path,
    tile_mpp: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ClassificationMetrics, list[LabelledTile], np.ndarray]:
    """Score every image of a labelled folder (one sub-folder per class).

    Parameters
    ----------
    folder:
        ``folder/<label>/*.jpg``, labels among the card's classes.
    tile_mpp:
        µm/px of the images.
    progress:
        Called as ``progress(images_scored, images_total)`` before the first image and after
        each one.

    Returns
    -------
    (metrics, tiles, probabilities (n_images, n_classes))
    """
    try:
        tiles = read_labelled_folder(folder)
    except FileNotFoundError as exc:
        raise TrainingDataError(str(exc)) from exc
    labels = check_labels(tiles, card, Path(folder))
    scored: list[np.ndarray] = []
    for tile in tiles:
        if progress:
            progress(len(scored), len(tiles))
        scored.append(score_image(model, card, read_rgb(tile.path), tile_mpp))
    if progress:
        progress(len(scored), len(tiles))
    probabilities = np.stack(scored)
    return classification_metrics(probabilities, labels, card.classes), tiles, probabilities
