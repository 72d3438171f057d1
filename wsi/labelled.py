"""Labelled H&E images: one folder per class, the patient (case) and slide in the file name.

TCIA Osteosarcoma-Tumor-Assessment names are ``<case>-<slide>-<x>-<y>.jpg`` where the case
itself may hold a dash: ``Case-3-A15-2939-11262.jpg`` is case ``Case-3``, slide ``A15``;
``P9-B12-15791-34183.jpg`` is case ``P9``, slide ``B12``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
_TCIA_NAME = re.compile(r"^(?P<case>.+)-(?P<slide>[A-Za-z]+\d+)-(?P<x>\d+)-(?P<y>\d+)$")


@dataclass(frozen=True)
class LabelledTile:
    """One labelled image: its file, class label, and where it came from."""

    path: Path
    label: str
    case: str
    slide: str


def parse_tcia_name(stem: str) -> tuple[str, str]:
    """(case, slide) from a TCIA tile name; unknown patterns give (stem, stem)."""
    match = _TCIA_NAME.match(stem)
    if match is None:
        return stem, stem
    return match["case"], match["slide"]


def read_labelled_folder(folder: Path) -> list[LabelledTile]:
    """Every image under ``folder/<label>/``, sorted by label then file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of labelled tiles")
    tiles = []
    for label_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for image in sorted(label_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                case, slide = parse_tcia_name(image.stem)
                tiles.append(LabelledTile(image, label_dir.name, case, slide))
    if not tiles:
        raise FileNotFoundError(
            f"{folder}: no images found; expected one sub-folder per class label"
        )
    return tiles
