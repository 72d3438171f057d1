"""A radiology-only site: `pip install "osteomics[node,radiomics]"` brings no torch, and the
radiology commands work there; the pathology commands say which extra they need.

This builds a real venv and installs a copy of this checkout into it from the package index
pip is configured with (a local one here, so it works offline); about a minute.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / ".." / "shared" / "data" / "radiology"
#: Not part of the package: left out of the copy that is installed.
NOT_PACKAGE = ("tests", "bench", "docs", "build", ".*", "*.egg-info", "__pycache__")


@pytest.fixture(scope="module")
def radiology_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with `osteomics[node,radiomics]` installed (not editable: a real wheel)."""
    base = tmp_path_factory.mktemp("radiology-site")
    source = base / "osteomics"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_PACKAGE))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [venv / "bin" / "pip", "install", "--quiet", f"{source}[node,radiomics]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


def run(venv: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv)},
    )


@pytest.mark.slow
def test_radiology_commands_work_without_torch(radiology_venv: Path, tmp_path: Path) -> None:
    python, osteomics = radiology_venv / "bin" / "python", radiology_venv / "bin" / "osteomics"
    for module in ("torch", "dask", "openslide"):
        absent = run(radiology_venv, python, "-c", f"import {module}")
        assert absent.returncode != 0 and "ModuleNotFoundError" in absent.stderr, module

    # radiomics on the IBSI digital phantom
    phantom = DATA / "ibsi-digital-phantom"
    table = tmp_path / "phantom.csv"
    done = run(
        radiology_venv,
        osteomics,
        "radiomics",
        phantom / "phantom.nii.gz",
        "--mask",
        phantom / "mask.nii.gz",
        "--config",
        "ibsi-digital-phantom",
        "--out",
        table,
    )
    assert done.returncode == 0, done.stderr
    rows = table.read_text().splitlines()
    assert rows[0].startswith("patient,study,series,modality,roi,family,feature,ibsi_id,value")
    assert len(rows) > 100

    # node status on a small store (five CT instances of a real study)
    store = tmp_path / "store"
    ct = sorted((DATA / "sts" / "STS_001" / "CT" / "image").glob("*.dcm"))[:5]
    fill = run(
        radiology_venv,
        python,
        "-c",
        "import sys\n"
        "from pathlib import Path\n"
        "from osteomics.radiology.store import DicomStore\n"
        "store = DicomStore(Path(sys.argv[1]))\n"
        "for f in sys.argv[2:]:\n"
        "    store.store_file(Path(f))\n"
        "store.close()\n",
        store,
        *ct,
    )
    assert fill.returncode == 0, fill.stderr
    (tmp_path / "node.toml").write_text(
        '[node]\nae_title = "OSTEOMICS"\nport = 11112\nstorage = "store"\n', encoding="utf-8"
    )
    status = run(radiology_venv, osteomics, "node", "status", "--config", "node.toml", "--json",
                 cwd=tmp_path)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["instances"] == 5


@pytest.mark.slow
def test_pathology_commands_name_the_missing_extra(radiology_venv: Path, tmp_path: Path) -> None:
    osteomics = radiology_venv / "bin" / "osteomics"
    slide = REPO / ".." / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"
    for args in (["info", str(slide)], ["tile", str(slide), "--out", "tiles"]):
        done = run(radiology_venv, osteomics, *args, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"osteomics {args[0]} needs" in lines[0]
        assert "torch" in lines[0] and "pip install 'osteomics[wsi]'" in lines[0]
        help_page = run(radiology_venv, osteomics, args[0], "--help")
        assert help_page.returncode == 0 and "Usage: osteomics" in help_page.stdout
    listing = run(radiology_venv, osteomics, "plugins")
    assert listing.returncode == 0, listing.stderr
    rows = {tuple(line.split()[:2]): line for line in listing.stdout.splitlines()}
    for reader in ("openslide", "tiffslide", "wsidicom"):
        assert f"needs {reader} (pip install 'osteomics[wsi]')" in rows["slide_reader", reader]
    assert " ok " in rows["pacs_connector", "dimse"]
    assert run(radiology_venv, osteomics, "--help").returncode == 0
