"""tiles.zarr: what write_tile_batch writes, zarr reads back byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from osteomics.wsi.tilestore import create_tile_array, write_tile_batch


def random_tiles(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


@pytest.mark.parametrize(("n_tiles", "batch"), [(10, 4), (8, 4), (3, 64)])
def test_batches_read_back_byte_identical(tmp_path: Path, n_tiles: int, batch: int) -> None:
    path = tmp_path / "tiles.zarr"
    tiles = random_tiles(n_tiles, 16, seed=n_tiles)
    create_tile_array(path, n_tiles, 16, batch, {"slide": "s", "tile_px": 16})
    # Write the batches out of order, as Dask tasks finish; the last one may be partial.
    for first in reversed(range(0, n_tiles, batch)):
        write_tile_batch(path, first, tiles[first : first + batch])
    array = zarr.open_array(str(path), mode="r")
    assert array.shape == (n_tiles, 16, 16, 3)
    assert array.dtype == np.uint8
    assert array.chunks == (batch, 16, 16, 3)
    back = array[:]
    assert back.tobytes() == tiles.tobytes()
    assert np.array_equal(array[n_tiles - 1], tiles[-1])  # the partial last chunk
    assert dict(array.attrs) == {"slide": "s", "tile_px": 16}
    assert list(array.metadata.dimension_names) == ["tile", "y", "x", "rgb"]


def test_unwritten_chunks_read_as_zero(tmp_path: Path) -> None:
    path = tmp_path / "tiles.zarr"
    tiles = random_tiles(8, 8, seed=1)
    create_tile_array(path, 8, 8, 4, {})
    write_tile_batch(path, 4, tiles[4:])
    back = zarr.open_array(str(path), mode="r")[:]
    assert not back[:4].any()
    assert np.array_equal(back[4:], tiles[4:])


def test_rewriting_a_batch_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "tiles.zarr"
    create_tile_array(path, 4, 8, 4, {})
    write_tile_batch(path, 0, random_tiles(4, 8, seed=1))
    second = random_tiles(4, 8, seed=2)
    write_tile_batch(path, 0, second)
    assert np.array_equal(zarr.open_array(str(path), mode="r")[:], second)
    # No temporary files are left next to the chunks.
    assert not [p for p in path.rglob("*") if p.name.endswith(".partial")]


def test_batch_must_start_a_chunk(tmp_path: Path) -> None:
    path = tmp_path / "tiles.zarr"
    create_tile_array(path, 8, 8, 4, {})
    with pytest.raises(ValueError, match="does not start a chunk of 4"):
        write_tile_batch(path, 2, random_tiles(2, 8, seed=0))


def test_compressed_arrays_go_through_zarr(tmp_path: Path) -> None:
    """An array with a compressor is written by zarr itself and still round-trips."""
    from zarr.codecs import ZstdCodec

    path = tmp_path / "tiles.zarr"
    zarr.create_array(
        store=str(path),
        shape=(6, 8, 8, 3),
        chunks=(4, 8, 8, 3),
        dtype="uint8",
        fill_value=0,
        compressors=ZstdCodec(level=1),
    )
    tiles = random_tiles(6, 8, seed=3)
    write_tile_batch(path, 0, tiles[:4])
    write_tile_batch(path, 4, tiles[4:])
    assert np.array_equal(zarr.open_array(str(path), mode="r")[:], tiles)


def test_zstd_chunks_are_what_zarr_itself_writes(tmp_path: Path, labelled_tiles: list) -> None:
    """compression="zstd": our direct chunk write gives the bytes zarr's own Zstd codec
    writes for the same chunk, and zarr reads them back byte for byte (real H&E, which
    compresses, and random pixels, which do not)."""
    from osteomics.wsi.subtiles import image_subtiles

    he = image_subtiles(labelled_tiles[0].path, 1.0, 1.0, 64)[:8]
    for name, tiles in (("he", he), ("noise", random_tiles(8, 64, seed=3))):
        ours, theirs = tmp_path / f"{name}-ours.zarr", tmp_path / f"{name}-zarr.zarr"
        for path in (ours, theirs):
            create_tile_array(path, 8, 64, 4, {}, compression="zstd")
        for first in (0, 4):
            write_tile_batch(ours, first, tiles[first : first + 4])
        zarr.open_array(str(theirs), mode="r+")[:] = tiles
        for key in ("c/0/0/0/0", "c/1/0/0/0"):
            assert (ours / key).read_bytes() == (theirs / key).read_bytes(), (name, key)
        assert zarr.open_array(str(ours), mode="r")[:].tobytes() == tiles.tobytes()
    he_chunk = (tmp_path / "he-ours.zarr" / "c/0/0/0/0").stat().st_size
    assert he_chunk < 4 * 64 * 64 * 3 / 1.1  # H&E compresses
