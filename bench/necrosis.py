"""Benchmark and validation of the necrosis job.

Throughput (always): on a mosaic slide built from the real TCIA tiles (1 µm/px, pyramidal),
in the same run and over the same tissue tiles at the model's µm/px and input size:

- tiling ceiling: a plain OpenSlide ``read_region`` loop, split over ``--workers`` processes;
- model only: ``predict_tiles`` of the default model on tiles already in memory, one process
  per worker with one PyTorch thread each;
- osteomics: ``score_slides`` end to end (plan, reads, inference, aggregation, outputs) on a
  Dask LocalCluster of ``--workers`` processes started before the clock.

Target: osteomics >= 0.7 x min(ceiling, model only). The ratio is printed last.

Accuracy (``--accuracy``): trains a model with ``osteomics train`` on the tiles of all slides
but the held-out ones, builds mosaic slides of known composition from the held-out slides'
tiles only, scores them with that model, and prints |estimated - true| necrosis rate (by tissue
area under the same tissue mask), the Huvos grade and responder status against the truth.

Usage: python bench/necrosis.py [--workers 2] [--cells 12] [--accuracy]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from osteomics.wsi.cluster import dask_client
from osteomics.wsi.grid import read_tiles
from osteomics.wsi.labelled import LabelledTile, read_labelled_folder
from osteomics.wsi.mosaic import MosaicComposition, build_mosaic_slide, random_layout
from osteomics.wsi.necrosis import huvos_grade, responder
from osteomics.wsi.scoring import NecrosisParameters, score_slides
from osteomics.wsi.slide import open_slide

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "osteosarcoma-tiles"
CACHE = Path(__file__).resolve().parent / "out"

_slide = None


def _open(path: str) -> None:
    global _slide
    import openslide

    _slide = openslide.OpenSlide(path)


def _read_loop(coords: list[tuple[int, int]], level: int, size: int) -> int:
    assert _slide is not None
    for x, y in coords:
        _slide.read_region((x, y), level, (size, size))
    return len(coords)


def ceiling_tiles_per_s(
    path: Path, coords: np.ndarray, level: int, size: int, workers: int
) -> float:
    parts = [[tuple(map(int, c)) for c in p] for p in np.array_split(coords, workers * 8)]
    with mp.get_context("spawn").Pool(workers, initializer=_open, initargs=(str(path),)) as pool:
        pool.starmap(_read_loop, [([tuple(map(int, coords[0]))], level, size)] * workers)
        t0 = time.perf_counter()
        n = sum(pool.starmap(_read_loop, [(p, level, size) for p in parts]))
        return n / (time.perf_counter() - t0)


def _predict_loop(tiles_npy: str) -> tuple[int, float]:
    import torch

    from osteomics.wsi.model import load_model, predict_tiles

    torch.set_num_threads(1)
    model, card = load_model("default")
    tiles = np.load(tiles_npy)
    predict_tiles(model, card, tiles[:64])  # warm
    t0 = time.perf_counter()
    predict_tiles(model, card, tiles)
    return len(tiles), time.perf_counter() - t0


def model_only_tiles_per_s(workers: int, tiles_npy: Path) -> float:
    """The same real tissue tiles, already in memory, through the model in each process."""
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_predict_loop, [str(tiles_npy)] * workers)
    return sum(n for n, _ in results) / max(s for _, s in results)


def throughput(args: argparse.Namespace) -> None:
    from osteomics.wsi.model import load_model

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"necrosis-mosaic-{args.cells}x{args.cells}.tiff"
    if not path.exists():
        tiles = read_labelled_folder(DATA)
        layout = random_layout(tiles, args.cells, args.cells, glass_fraction=0.25, seed=3)
        build_mosaic_slide(path, layout, source_mpp=1.0, cell_px=1024, seed=3)
    _model, card = load_model("default")
    ours, ceilings, models = [], [], []
    with dask_client(args.workers) as client:
        # Warm up: each worker imports PyTorch and loads the model once (a few seconds, paid
        # once per worker process, not per slide); the timed runs measure the steady state.
        warm = Path(tempfile.mkdtemp(prefix="necrosis-warm-", dir=CACHE))
        score_slides([path], warm, NecrosisParameters(), client=client)
        shutil.rmtree(warm, ignore_errors=True)
        for repeat in range(args.repeat):
            out = Path(tempfile.mkdtemp(prefix="necrosis-bench-", dir=CACHE))
            t0 = time.perf_counter()
            run = score_slides([path], out, NecrosisParameters(), client=client)
            elapsed = time.perf_counter() - t0
            row = run.slides[0]
            assert row.status == "ok", row.reason
            tiles = run.tiles[row.slide]
            level = 1 if row.mpp and abs(card.input_mpp / row.mpp - 2.0) < 1e-6 else 0
            size = card.input_px if level == 1 else round(card.input_px * card.input_mpp)
            coords = np.stack([tiles.x_px, tiles.y_px], axis=1)
            ours.append(row.n_tiles / elapsed)
            ceilings.append(ceiling_tiles_per_s(path, coords, level, size, args.workers))
            tiles_npy = CACHE / f"necrosis-bench-tiles-{card.name}-{card.input_px}px.npy"
            if not tiles_npy.exists():
                with open_slide(path) as slide:
                    np.save(
                        tiles_npy,
                        read_tiles(slide, tiles.x_px[:384], tiles.y_px[:384], level, size,
                                   card.input_px),
                    )  # fmt: skip
            models.append(model_only_tiles_per_s(args.workers, tiles_npy))
            print(
                f"repeat {repeat}: {row.n_tiles} tiles; osteomics necrosis {ours[-1]:.0f} tiles/s, "
                f"OpenSlide read loop {ceilings[-1]:.0f}, model only {models[-1]:.0f} tiles/s"
            )
            shutil.rmtree(out, ignore_errors=True)
    o, c, m = (statistics.median(v) for v in (ours, ceilings, models))
    print(
        f"osteomics necrosis: {o:.0f} tiles/s on {args.workers} CPU workers; tiling ceiling "
        f"{c:.0f}, model only {m:.0f} tiles/s (median of {args.repeat}; model {card.name}, "
        f"{card.input_px} px at {card.input_mpp} µm/px)"
    )
    print(f"ratio osteomics/min(ceiling, model) = {o / min(c, m):.2f}")


def held_out_split(tiles: list[LabelledTile]) -> tuple[list[LabelledTile], list[LabelledTile]]:
    """Hold out, per class, the slide with the most tiles (tiles of one slide stay together)."""
    held: set[tuple[str, str]] = set()
    for label in sorted({t.label for t in tiles}):
        counts: dict[tuple[str, str], int] = {}
        for t in tiles:
            if t.label == label:
                counts[(t.case, t.slide)] = counts.get((t.case, t.slide), 0) + 1
        held.add(max(sorted(counts), key=lambda k: counts[k]))
    test = [t for t in tiles if (t.case, t.slide) in held]
    train = [t for t in tiles if (t.case, t.slide) not in held]
    return train, test


def true_rate_by_tissue(composition: MosaicComposition, tiles: object) -> float | None:
    """Necrotic / tumour tissue area, each tile labelled by the mosaic cell it lies in."""
    from osteomics.wsi.results import SlideTiles

    assert isinstance(tiles, SlideTiles)
    cells = {(c.row, c.col): c.label for c in composition.cells}
    necrotic = viable = 0.0
    for x, y, f in zip(tiles.x_px, tiles.y_px, tiles.tissue_fraction, strict=True):
        cx = int((x + tiles.side_px / 2) // composition.cell_px)
        cy = int((y + tiles.side_px / 2) // composition.cell_px)
        label = cells[(cy, cx)]
        necrotic += f if label == "Non-Viable-Tumor" else 0.0
        viable += f if label == "Viable" else 0.0
    return 100 * necrotic / (necrotic + viable) if necrotic + viable else None


def cycle(items: list[LabelledTile], n: int) -> list[LabelledTile]:
    return [items[i % len(items)] for i in range(n)]


def shipped_training_options() -> list[str]:
    """`osteomics train` options of the shipped default model, read from its card (the
    held-out model is trained the same way, only with 2 folds to save time)."""
    card = json.loads(
        (Path(__file__).resolve().parents[1] / "wsi" / "models" / "osteosarcoma-necrosis-v1"
         / "model_card.json").read_text()
    )  # fmt: skip
    config = card["training"]["config"]
    options = [
        "--arch", config["arch"], "--tile-mpp", str(config["tile_mpp"]),
        "--input-mpp", str(config["input_mpp"]), "--input-px", str(config["input_px"]),
        "--epochs", str(config["epochs"]), "--seed", str(config["seed"]),
        "--crops-per-image", str(config["crops_per_image"]),
        "--label-smoothing", str(config["label_smoothing"]),
        "--colour", config["preprocessing"]["colour"],
        "--stain-normalisation", config["preprocessing"]["stain_normalisation"],
    ]  # fmt: skip
    if not config["early_stopping"]:
        options.append("--fixed-schedule")
    return options


def accuracy(args: argparse.Namespace) -> None:
    tiles = read_labelled_folder(DATA)
    train, test = held_out_split(tiles)
    work = Path(tempfile.mkdtemp(prefix="necrosis-accuracy-", dir=CACHE))
    for t in train:
        (work / "train" / t.label).mkdir(parents=True, exist_ok=True)
        (work / "train" / t.label / t.path.name).symlink_to(t.path.resolve())
    print(f"held out {len(test)} tiles: {sorted({(t.label, t.case, t.slide) for t in test})}")
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "osteomics.cli.main", "train", str(work / "train"),
         "--out", str(work / "model"), "--folds", "2", *shipped_training_options()],
        check=True,
    )  # fmt: skip
    print(f"trained the held-out model in {time.perf_counter() - t0:.0f} s")
    by_label = {label: [t for t in test if t.label == label] for label in {t.label for t in test}}
    errors = []
    for target, (n_necrotic, n_viable, n_other) in {
        "good": (10, 1, 5),
        "mid": (6, 6, 4),
        "poor": (2, 10, 4),
    }.items():
        cells = (
            cycle(by_label["Non-Viable-Tumor"], n_necrotic)
            + cycle(by_label["Viable"], n_viable)
            + cycle(by_label["Non-Tumor"], n_other)
        )
        layout = [cells[r * 4 : (r + 1) * 4] for r in range(4)]
        composition = build_mosaic_slide(work / f"{target}.tiff", layout, cell_px=1024, seed=1)
        run = score_slides(
            [Path(composition.path)], work / f"out-{target}",
            NecrosisParameters(model=str(work / "model")), workers=args.workers,
        )  # fmt: skip
        row = run.slides[0]
        truth = true_rate_by_tissue(composition, run.tiles[row.slide])
        estimate = row.necrosis_rate
        assert truth is not None and estimate is not None
        errors.append(abs(estimate - truth))
        print(
            f"{target}: true {truth:.1f} % (Huvos {huvos_grade(truth)}, {responder(truth)}), "
            f"estimated {estimate:.1f} % (Huvos {huvos_grade(estimate)}, {responder(estimate)}), "
            f"|error| {errors[-1]:.1f} points"
        )
    print(f"mean |estimated - true| necrosis = {statistics.mean(errors):.1f} percentage points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--accuracy", action="store_true", help="also train and validate")
    parser.add_argument("--accuracy-only", action="store_true", help="only train and validate")
    args = parser.parse_args()
    if args.accuracy or args.accuracy_only:
        accuracy(args)
    if not args.accuracy_only:
        throughput(args)


if __name__ == "__main__":
    main()
