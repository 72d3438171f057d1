"""Benchmark: `osteomics tile` throughput against a plain OpenSlide read loop (the ceiling).

Builds mosaic slides (pyramidal tiled JPEG TIFF, 1 µm/px) from the real TCIA osteosarcoma
tiles in ../shared/data/osteosarcoma-tiles, then, in the same run and on the same tiles:

- ceiling: a plain ``OpenSlide.read_region`` loop over the tile coordinates, split over the
  same number of processes (a multiprocessing pool, started before the clock);
- osteomics: ``tile_slides`` on a Dask LocalCluster of the same number of worker processes
  (started before the clock): thumbnail, tissue detection, grid, hashing, reads and zarr writes.
  Measured twice: as shipped (stored JPEG tiles that coincide with a requested tile are decoded
  directly, verified against OpenSlide: plugins/tiff_tiles.py), and with that shortcut off
  (every pixel through OpenSlide's read_region, ``OSTEOMICS_DIRECT_TILE_DECODE=0``).

It also reports peak memory per worker for two slide sizes (it must not grow with the slide)
and checks that both runs saw the same tiles. The last line is the ratio.

A second case (issue 9) runs the whole ``osteomics tile`` command, as a user does, on a
0.5 µm/px mosaic stored in 512 px JPEG tiles, asking for 256 px tiles at 0.5 µm/px (no
requested tile is a stored tile), against the same plain read loop over the same grid.

Usage: python bench/tiling.py [--workers 2] [--cells 20] [--small-cells 10] [--repeat 3]
       [--case aligned|misaligned|both] [--misaligned-cells 16]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from osteomics.wsi.labelled import read_labelled_folder
from osteomics.wsi.mosaic import build_mosaic_slide, random_layout
from osteomics.wsi.tiling import TilingParameters, dask_client, tile_slides

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "osteosarcoma-tiles"
CACHE = Path(__file__).resolve().parent / "out"


def build_slide(cells: int, seed: int, cell_px: int = 1024, stored_tile_px: int = 256) -> Path:
    """A cells x cells mosaic of the real tiles (1024 px at about 1 µm/px) resized to
    ``cell_px`` cells, so at ``1024 / cell_px`` µm/px; cached between runs."""
    path = CACHE / f"mosaic-{cells}x{cells}-{cell_px}px-{stored_tile_px}stored-seed{seed}.tiff"
    if not path.exists():
        tiles = read_labelled_folder(DATA)
        layout = random_layout(tiles, cells, cells, glass_fraction=0.25, seed=seed)
        t0 = time.perf_counter()
        build_mosaic_slide(
            path, layout, source_mpp=1.0, cell_px=cell_px, tile_px=stored_tile_px, seed=seed
        )
        print(f"built {path.name} in {time.perf_counter() - t0:.1f} s")
    return path


_slide = None


def _open_for_loop(path: str) -> None:
    global _slide
    import openslide

    _slide = openslide.OpenSlide(path)


def _read_loop(coords: list[tuple[int, int]], tile_px: int) -> int:
    assert _slide is not None
    for x, y in coords:
        _slide.read_region((x, y), 0, (tile_px, tile_px))
    return len(coords)


def ceiling_tiles_per_s(path: Path, coords: np.ndarray, workers: int, tile_px: int) -> float:
    """Plain OpenSlide read_region loop over the same tiles, split over `workers` processes."""
    chunks = [[tuple(map(int, c)) for c in part] for part in np.array_split(coords, workers * 8)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_open_for_loop, initargs=(str(path),)) as pool:
        pool.starmap(_read_loop, [([tuple(map(int, coords[0]))], tile_px)] * workers)  # warm
        t0 = time.perf_counter()
        n = sum(pool.starmap(_read_loop, [(c, tile_px) for c in chunks]))
        elapsed = time.perf_counter() - t0
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cells", type=int, default=20, help="mosaic side in 1024 px cells")
    parser.add_argument("--small-cells", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--misaligned-cells", type=int, default=16, help="misaligned mosaic side in 2048 px cells"
    )
    parser.add_argument(
        "--case", choices=("aligned", "misaligned", "both"), default="both", help="which case"
    )
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    if args.case in ("misaligned", "both"):
        misaligned_case(args)
    if args.case == "misaligned":
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    big = build_slide(args.cells, seed=1)
    small = build_slide(args.small_cells, seed=2)
    params = TilingParameters(target_mpp=1.0, tile_px=256, min_tissue=0.5)
    ours, ours_openslide_only, ceiling, peaks = [], [], [], {}
    os.environ["OSTEOMICS_DIRECT_TILE_DECODE"] = "0"  # inherited by this cluster's workers
    openslide_only = ExitStack()
    client_openslide_only = openslide_only.enter_context(dask_client(args.workers))
    del os.environ["OSTEOMICS_DIRECT_TILE_DECODE"]
    with openslide_only, dask_client(args.workers) as client:
        for repeat in range(args.repeat):
            for label, slide in (("big", big), ("small", small)):
                result, elapsed, out = run_tiling(client, slide, params)
                peaks.setdefault(label, []).append(result.peak_worker_rss_mb or 0.0)
                if label == "big":
                    table = pd.read_parquet(out / result.slide / "tiles.parquet")
                    coords = table[["x_px", "y_px"]].to_numpy()
                    ours.append(result.n_tiles / elapsed)
                    other, elapsed_other, out_other = run_tiling(
                        client_openslide_only, slide, params
                    )
                    assert other.n_tiles == result.n_tiles
                    ours_openslide_only.append(other.n_tiles / elapsed_other)
                    shutil.rmtree(out_other, ignore_errors=True)
                    ceiling.append(ceiling_tiles_per_s(slide, coords, args.workers, params.tile_px))
                    print(
                        f"repeat {repeat}: {result.n_tiles} tissue tiles; osteomics "
                        f"{ours[-1]:.0f} tiles/s (OpenSlide only: {ours_openslide_only[-1]:.0f}), "
                        f"plain OpenSlide read loop {ceiling[-1]:.0f} tiles/s"
                    )
                shutil.rmtree(out, ignore_errors=True)
    ours_med, ceiling_med = statistics.median(ours), statistics.median(ceiling)
    only_med = statistics.median(ours_openslide_only)
    print(f"slide sizes: big {args.cells * 1024} px square, small {args.small_cells * 1024} px")
    print(
        f"peak RSS per worker (MB): big {max(peaks['big']):.0f}, small {max(peaks['small']):.0f} "
        f"(ratio big/small {max(peaks['big']) / max(peaks['small']):.2f})"
    )
    print(
        f"osteomics tile: {ours_med:.0f} tiles/s; with every read through OpenSlide: "
        f"{only_med:.0f} tiles/s ({only_med / ceiling_med:.2f} x ceiling); ceiling: "
        f"{ceiling_med:.0f} tiles/s ({args.workers} workers, median of {args.repeat})"
    )
    print(f"ratio osteomics/ceiling = {ours_med / ceiling_med:.2f}")


def command_tiles_per_s(
    slide: Path, workers: int, mpp: float, tile_px: int, compression: str
) -> tuple[float, int, int]:
    """The whole `osteomics tile` command as a user runs it (process start, cluster start,
    planning, reads, zarr writes, run.json): tiles/s of wall time, tile count, bytes written."""
    out = Path(tempfile.mkdtemp(prefix="osteomics-bench-cmd-", dir=CACHE))
    try:
        command = [
            sys.executable, "-m", "osteomics.cli.main", "tile", str(slide), "--out", str(out),
            "--mpp", str(mpp), "--tile-px", str(tile_px), "--workers", str(workers), "--json",
            "--compression", compression,
        ]  # fmt: skip
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"osteomics tile failed:\n{done.stderr}")
        n_tiles = json.loads(done.stdout)["summary"]["tiles"]
        coords = pd.read_parquet(next(out.glob("*/tiles.parquet")))[["x_px", "y_px"]]
        np.save(CACHE / "misaligned-coords.npy", coords.to_numpy())
        written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        return n_tiles / elapsed, n_tiles, written
    finally:
        shutil.rmtree(out, ignore_errors=True)


def disk_write_seconds(n_bytes: int, chunk_bytes: int = 64 * 256 * 256 * 3) -> float:
    """Seconds a plain loop takes to write ``n_bytes`` in tile-chunk-sized files on the
    output disk: the floor under any command that stores that many bytes of tiles."""
    folder = Path(tempfile.mkdtemp(prefix="osteomics-bench-disk-", dir=CACHE))
    block = np.random.default_rng(0).integers(0, 256, chunk_bytes, dtype=np.uint8).tobytes()
    try:
        t0 = time.perf_counter()
        for i in range(max(1, n_bytes // chunk_bytes)):
            (folder / f"{i}").write_bytes(block)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def misaligned_case(args: argparse.Namespace) -> None:
    """Issue 9's case: 256 px tiles at 0.5 µm/px over a slide stored in 512 px JPEG tiles, so
    no requested tile is a stored tile; the whole command (raw and zstd tile chunks) against
    the plain read loop, and the disk's own write time for the raw output's bytes."""
    slide = build_slide(args.misaligned_cells, seed=3, cell_px=2048, stored_tile_px=512)
    rates: dict[str, list[float]] = {"none": [], "zstd": []}
    ceiling, disk = [], []
    for repeat in range(args.repeat):
        sizes = {}
        for compression in rates:
            rate, n_tiles, sizes[compression] = command_tiles_per_s(
                slide, args.workers, 0.5, 256, compression
            )
            rates[compression].append(rate)
        coords = np.load(CACHE / "misaligned-coords.npy")
        ceiling.append(ceiling_tiles_per_s(slide, coords, args.workers, 256))
        disk.append(n_tiles / disk_write_seconds(sizes["none"]))
        print(
            f"misaligned repeat {repeat}: {n_tiles} tissue tiles; `osteomics tile` "
            f"{rates['none'][-1]:.0f} tiles/s ({sizes['none'] / 1e9:.2f} GB), with --compression "
            f"zstd {rates['zstd'][-1]:.0f} tiles/s ({sizes['zstd'] / 1e9:.2f} GB); plain OpenSlide "
            f"read loop {ceiling[-1]:.0f} tiles/s; the raw bytes alone: {disk[-1]:.0f} tiles/s"
        )
    ceiling_med = statistics.median(ceiling)
    raw_med, zstd_med = statistics.median(rates["none"]), statistics.median(rates["zstd"])
    print(
        f"misaligned ({args.misaligned_cells * 2048} px square at 0.5 µm/px, 512 px stored "
        f"tiles, 256 px requested; {args.workers} workers, median of {args.repeat}): command "
        f"{raw_med:.0f} tiles/s raw, {zstd_med:.0f} tiles/s zstd; read loop {ceiling_med:.0f} "
        f"tiles/s; the disk writes the raw output at {statistics.median(disk):.0f} tiles/s"
    )
    print(
        f"ratio osteomics tile command/read loop (misaligned) = {raw_med / ceiling_med:.2f} raw, "
        f"{zstd_med / ceiling_med:.2f} with --compression zstd"
    )


def run_tiling(client: object, slide: Path, params: TilingParameters) -> tuple:
    out = Path(tempfile.mkdtemp(prefix="osteomics-bench-", dir=CACHE))
    t0 = time.perf_counter()
    run = tile_slides([slide], out, params, client=client)
    elapsed = time.perf_counter() - t0
    result = run.results[0]
    assert result.status == "ok", result.reason
    return result, elapsed, out


if __name__ == "__main__":
    main()
