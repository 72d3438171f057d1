"""Slide-job options a user mistypes: refused at the command line, naming the option, never
"unexpected error ... please report this" from inside a Dask worker (regression)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from osteomics import OsteomicsError
from osteomics.core.errors import InvalidOptionError
from osteomics.wsi.mosaic import MosaicComposition
from osteomics.wsi.results import NecrosisParameters
from osteomics.wsi.tiling import TilingParameters

CLI = [sys.executable, "-m", "osteomics.cli.main"]


@pytest.mark.parametrize(
    ("command", "args", "option"),
    [
        ("tile", ["--tile-px", "4"], "--tile-px"),
        ("tile", ["--min-tissue", "1.5"], "--min-tissue"),
        ("tile", ["--overlap", "-3"], "--overlap"),
        ("tile", ["--workers", "0"], "--workers"),
        ("necrosis", ["--workers", "0"], "--workers"),
    ],
)
def test_out_of_range_options_are_refused_at_the_command_line(
    mosaic_2um: MosaicComposition, tmp_path: Path, command: str, args: list[str], option: str
) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [*CLI, command, mosaic_2um.path, "--out", str(out), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr  # a usage error, before any work
    assert option in done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_overlap_as_large_as_the_tile_is_refused_with_the_option_named(
    mosaic_2um: MosaicComposition, tmp_path: Path
) -> None:
    """Ranges that depend on another option are checked by the parameters themselves."""
    done = subprocess.run(
        [*CLI, "tile", mosaic_2um.path, "--out", str(tmp_path / "out"), "--overlap", "256"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--overlap 256" in done.stderr and "smaller than the tile" in done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "settings",
    [{"tile_px": 4}, {"min_tissue": 1.5}, {"overlap_px": 256}, {"target_mpp": 0.0},
     {"batch_tiles": 0}, {"mpp_override": -1.0}],
)  # fmt: skip
def test_tiling_parameters_raise_the_projects_error(settings: dict[str, float]) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        TilingParameters(**settings)  # type: ignore[arg-type]
    assert isinstance(caught.value, OsteomicsError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "settings", [{"min_tissue": -0.1}, {"confidence": 1.0}, {"bootstrap_resamples": 0}]
)
def test_necrosis_parameters_raise_the_projects_error(settings: dict[str, float]) -> None:
    with pytest.raises(InvalidOptionError):
        NecrosisParameters(**settings)  # type: ignore[arg-type]
