"""Golden per-tile probabilities of the shipped default model on fixed real tiles.

A change anywhere between the image and the probabilities (resampling, sub-tiling, tissue
filter, stain handling, normalisation, weights, calibration) shows up here as a changed number,
the way wsinfer pins its models. When a change is meant, look at why the numbers moved, then
regenerate the file with::

    HF_HUB_OFFLINE=1 .venv/bin/python tests/wsi/test_golden_probabilities.py
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from osteomics.wsi.evaluate import subtiles_for_model
from osteomics.wsi.labelled import read_labelled_folder
from osteomics.wsi.model import load_model, resolve_model, tissue_classes_of
from osteomics.wsi.subtiles import read_rgb

GOLDEN = Path(__file__).parent / "golden" / "default_model_probabilities.csv"
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "osteosarcoma-tiles"
#: Two real TCIA tiles per label, chosen once (the first two of each label, sorted by name).
TILES_PER_LABEL = 2
#: µm/px of the 1024 px TCIA originals (the data README; `osteomics evaluate`'s default).
TILE_MPP = 1.0


def golden_rows() -> list[dict[str, str]]:
    """(image, sub-tile, model, class probabilities) computed now."""
    model_dir = resolve_model("default")
    model, card = load_model(model_dir)
    classes = tissue_classes_of(card)
    tiles = read_labelled_folder(DATA)
    chosen = []
    for label in sorted({t.label for t in tiles}):
        chosen += sorted((t for t in tiles if t.label == label), key=lambda t: t.path.name)[
            :TILES_PER_LABEL
        ]
    from osteomics.wsi.model import predict_tiles

    rows = []
    for tile in chosen:
        subtiles = subtiles_for_model(read_rgb(tile.path), card, TILE_MPP)
        probabilities = predict_tiles(model, card, subtiles)
        for i, p in enumerate(probabilities):
            row = {"image": tile.path.name, "subtile": str(i), "model": card.name,
                   "weights_sha256": card.weights_sha256}  # fmt: skip
            row.update({f"p_{c}": f"{v:.6f}" for c, v in zip(classes, p, strict=True)})
            rows.append(row)
    return rows


def test_shipped_model_gives_the_golden_probabilities() -> None:
    assert DATA.is_dir(), f"{DATA} is missing: the tests read ../shared/data"
    with open(GOLDEN, newline="") as fh:
        expected = list(csv.DictReader(fh))
    got = golden_rows()
    assert [(r["image"], r["subtile"]) for r in got] == [
        (r["image"], r["subtile"]) for r in expected
    ], "the tiles or their sub-tiles changed (resampling / sub-tiling / tissue filter)"
    assert {r["weights_sha256"] for r in got} == {r["weights_sha256"] for r in expected}, (
        "the shipped weights changed: regenerate the golden file if that was meant"
    )
    columns = [c for c in expected[0] if c.startswith("p_")]
    e = np.array([[float(r[c]) for c in columns] for r in expected])
    g = np.array([[float(r[c]) for c in columns] for r in got])
    np.testing.assert_allclose(g, e, atol=2e-4)
    # The file is not degenerate: the model is confident on some tiles and not on others.
    assert e.max() > 0.6 and np.ptp(e[:, 0]) > 0.1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = golden_rows()
    GOLDEN.parent.mkdir(exist_ok=True)
    with open(GOLDEN, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {GOLDEN}")
