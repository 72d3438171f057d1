"""Shared fixtures: the real data in ../shared/data, mosaic slides built from the real TCIA
tiles, and one Dask LocalCluster (2 worker processes) for the whole session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from osteomics.wsi.labelled import LabelledTile, read_labelled_folder
from osteomics.wsi.mosaic import MosaicComposition, build_mosaic_slide, random_layout

# No internet here: without this, anything that touches the Hugging Face hub retries for ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The project's real data, next to the repository (tests/ -> repository root -> ../shared).
DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"the shared test data is missing: {DATA_DIR.resolve()}")
    return DATA_DIR


@pytest.fixture(scope="session")
def wsi_dir(data_dir: Path) -> Path:
    return data_dir / "wsi"


@pytest.fixture(scope="session")
def fixtures_dir(wsi_dir: Path) -> Path:
    return wsi_dir / "fixtures"


@pytest.fixture(scope="session")
def cmu_svs(wsi_dir: Path) -> Path:
    return wsi_dir / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def ndpi(wsi_dir: Path) -> Path:
    return wsi_dir / "test3-DAPI-2.ndpi"


@pytest.fixture(scope="session")
def boxes_tiff(fixtures_dir: Path) -> Path:
    return fixtures_dir / "boxes.tiff"


@pytest.fixture(scope="session")
def dicom_wsi_dir(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only the two instances of the `boxes` DICOM WSI series."""
    folder = tmp_path_factory.mktemp("dicom") / "boxes-dicom"
    folder.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(fixtures_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def labelled_tiles(data_dir: Path) -> list[LabelledTile]:
    """The 45 real TCIA osteosarcoma tiles (1024 px, about 1 µm/px)."""
    return read_labelled_folder(data_dir / "osteosarcoma-tiles")


def _build_mosaic(
    folder: Path, tiles: list[LabelledTile], rows: int, cols: int, cell_px: int, seed: int
) -> MosaicComposition:
    layout = random_layout(tiles, rows, cols, glass_fraction=0.25, seed=seed)
    return build_mosaic_slide(
        folder / f"mosaic-{rows}x{cols}-{cell_px}px.tiff",
        layout,
        source_mpp=1.0,
        cell_px=cell_px,
        seed=seed,
    )


@pytest.fixture(scope="session")
def mosaic_2um(
    labelled_tiles: list[LabelledTile], tmp_path_factory: pytest.TempPathFactory
) -> MosaicComposition:
    """4 x 6 cells of 512 px: 3072 x 2048 px at 2 µm/px, 3 levels. Treat as read-only."""
    return _build_mosaic(tmp_path_factory.mktemp("mosaic-2um"), labelled_tiles, 4, 6, 512, 1)


@pytest.fixture(scope="session")
def mosaic_1um(
    labelled_tiles: list[LabelledTile], tmp_path_factory: pytest.TempPathFactory
) -> MosaicComposition:
    """4 x 6 cells of 1024 px: 6144 x 4096 px at 1 µm/px, 4 levels. Treat as read-only."""
    return _build_mosaic(tmp_path_factory.mktemp("mosaic-1um"), labelled_tiles, 4, 6, 1024, 2)


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    """One real Dask LocalCluster of 2 worker processes for every tiling test."""
    from osteomics.wsi.tiling import dask_client

    with dask_client(2) as dask_cl:
        yield dask_cl


#: Folders DCMTK's tools are taken from. pynetdicom installs console scripts with DCMTK's names
#: (storescu, storescp, echoscu, findscu, movescu) into the venv: with the venv on PATH, a plain
#: ``storescu`` would be pynetdicom's, not DCMTK's.
DCMTK_FOLDERS = (Path("/usr/bin"), Path("/usr/local/bin"))


def dcmtk_tool(name: str) -> Path:
    """The absolute path of DCMTK's tool ``name`` (a compiled program, never a venv script).

    Fails the test, saying how to install DCMTK, when it is missing.
    """
    for folder in DCMTK_FOLDERS:
        path = folder / name
        if path.is_file() and os.access(path, os.X_OK):
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    return path
    pytest.fail(
        f"DCMTK's {name} is missing (looked in {', '.join(map(str, DCMTK_FOLDERS))}): run "
        ".ci/system-packages as root, or apt-get install dcmtk"
    )


@pytest.fixture(scope="session", name="dcmtk_tool")
def dcmtk_tool_fixture() -> Any:
    """:func:`dcmtk_tool`: ``dcmtk_tool("storescu")`` -> ``Path("/usr/bin/storescu")``."""
    return dcmtk_tool


@pytest.fixture(scope="session")
def big_mosaic(
    labelled_tiles: list[LabelledTile], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """12 x 12 cells of 1024 px (12288 px square, 1 µm/px): tiling it takes several seconds,
    long enough to interrupt it or kill a worker mid-slide. Treat as read-only."""
    path = tmp_path_factory.mktemp("big") / "big.tiff"
    build_mosaic_slide(path, random_layout(labelled_tiles, 12, 12, 0.25, seed=5), cell_px=1024)
    return path
