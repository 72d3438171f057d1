"""The `osteomics` command, run as a user runs it: a separate process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import osteomics
from osteomics.wsi.mosaic import MosaicComposition

#: `python -m osteomics.cli.main`, with this test run's interpreter.
CLI = [sys.executable, "-m", "osteomics.cli.main"]
INFO_KEYS = {
    "path",
    "backend",
    "vendor",
    "width_px",
    "height_px",
    "mpp_x",
    "mpp_y",
    "mpp_source",
    "mpp_note",
    "objective_power",
    "level_count",
    "levels",
    "associated_images",
    "decodes",
}


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def console_script() -> Path:
    """The `osteomics` entry point installed next to this interpreter."""
    script = Path(sys.executable).parent / "osteomics"
    assert script.is_file(), f"{script} is missing: is osteomics installed in this venv?"
    return script


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


# -- info ---------------------------------------------------------------------------------
def test_info_json(cmu_svs: Path) -> None:
    done = run_cli("info", cmu_svs, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert set(info) == INFO_KEYS
    assert info["path"] == str(cmu_svs)
    assert info["backend"] == "openslide"
    assert info["vendor"] == "aperio"
    assert (info["width_px"], info["height_px"]) == (2220, 2967)
    assert info["mpp_x"] == pytest.approx(0.499, abs=1e-4)
    assert info["mpp_source"] == "metadata"
    assert info["mpp_note"] is None
    assert info["objective_power"] == 20
    assert info["level_count"] == 1
    assert info["levels"] == [
        {
            "index": 0,
            "width_px": 2220,
            "height_px": 2967,
            "downsample": 1.0,
            "mpp": info["mpp_x"],
            "decodes": True,
        }
    ]
    assert info["decodes"] is True
    assert info["associated_images"] == ["label", "macro", "thumbnail"]


def test_info_json_with_backend_and_override(boxes_tiff: Path) -> None:
    done = run_cli("info", boxes_tiff, "--backend", "tiffslide", "--mpp-override", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["backend"] == "tiffslide"
    assert info["mpp_x"] == 0.5 and info["mpp_source"] == "override"
    assert info["level_count"] == 4
    assert info["levels"][1]["mpp"] == pytest.approx(1.0)


def test_info_human_readable(ndpi: Path, boxes_tiff: Path) -> None:
    done = run_cli("info", ndpi)
    assert done.returncode == 0, done.stderr
    assert "hamamatsu" in done.stdout and "3968 x 4864" in done.stdout
    assert "0.2282" in done.stdout and "40x" in done.stdout
    missing = run_cli("info", boxes_tiff)
    assert missing.returncode == 0, missing.stderr
    assert "unknown" in missing.stdout and "352.8" in missing.stdout


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["unopenable.tiff"], "no slide reader can open it"),
        (["unopenable.tiff", "--backend", "bioformats"], "unknown slide reader 'bioformats'"),
        (["absent.svs"], "no such file"),
        (["boxes.tiff", "--mpp-override", "1000"], "not a microscope resolution"),
    ],
)
def test_info_errors_are_one_line(fixtures_dir: Path, args: list[str], phrase: str) -> None:
    done = run_cli("info", fixtures_dir / args[0], *args[1:])
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith("error: ")
    assert phrase in line
    assert args[0] in line or "bioformats" in line
    assert done.stdout == ""


@pytest.mark.parametrize("as_json", [False, True])
def test_info_says_when_tiles_do_not_decode(fixtures_dir: Path, as_json: bool) -> None:
    """`unreadable.svs` opens (its header is fine) but its JPEG tile data is corrupt: info used
    to list it as a healthy slide."""
    slide = fixtures_dir / "unreadable.svs"
    done = run_cli("info", slide, *(["--json"] if as_json else []))
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith(f"error: {slide}: cannot decode pixel data at level 0")
    if as_json:
        info = json.loads(done.stdout)
        assert info["decodes"] is False and info["levels"][0]["decodes"] is False
    else:
        assert "damaged" in done.stdout


def test_info_on_a_slide_with_damaged_tile_data(cmu_svs: Path, tmp_path: Path) -> None:
    """A real scan whose tile data was overwritten (a partial copy): metadata fine, pixels not."""
    data = bytearray(cmu_svs.read_bytes())
    data[20_000:1_200_000] = bytes(1_180_000)  # tile data, after the first IFD's header
    damaged = tmp_path / "damaged.svs"
    damaged.write_bytes(bytes(data))
    done = run_cli("info", damaged, "--json")
    assert done.returncode == 1
    info = json.loads(done.stdout)
    assert (info["width_px"], info["height_px"]) == (2220, 2967)  # the header still reads
    assert info["levels"][0]["decodes"] is False
    assert "damaged or truncated" in one_error_line(done.stderr)
    healthy = run_cli("info", cmu_svs)
    assert healthy.returncode == 0 and "damaged" not in healthy.stdout


# -- evaluate ---------------------------------------------------------------------------------
@pytest.mark.slow  # whole-command run of several seconds: CI runs it
def test_evaluate_shows_progress_on_stderr(data_dir: Path, tmp_path: Path) -> None:
    """`evaluate` was silent for as long as it scored; a bar on stderr counts the images (rich
    draws it on a terminal: TTY_COMPATIBLE=1 says stderr is one), stdout stays pure JSON."""
    tiles = data_dir / "osteosarcoma-tiles"
    for label in ("Non-Tumor", "Viable"):
        (tmp_path / label).mkdir()
        first = sorted((tiles / label).glob("*.jpg"))[0]
        (tmp_path / label / first.name).write_bytes(first.read_bytes())
    done = subprocess.run(
        [*CLI, "evaluate", "default", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TTY_COMPATIBLE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n"] == 2
    assert "scoring images" in done.stderr
    assert "2/2" in done.stderr


# -- tile ---------------------------------------------------------------------------------
def test_tile_json_exit_codes_and_resume(
    mosaic_2um: MosaicComposition, fixtures_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    common = ["--out", out, "--mpp", "4", "--tile-px", "128", "--workers", "1", "--json"]
    good, bad = Path(mosaic_2um.path), fixtures_dir / "unopenable.tiff"

    done = run_cli("tile", good, *common)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)  # stdout is only the JSON
    assert record == json.loads((out / "run.json").read_text())
    tiles = record["summary"]["tiles"]
    assert record["summary"] == {"slides": 1, "ok": 1, "error": 0, "resumed": 0, "tiles": tiles}
    assert record["parameters"]["target_mpp"] == 4.0 and record["parameters"]["tile_px"] == 128
    assert record["compute"]["workers"] == 1
    assert len(pd.read_parquet(out / good.stem / "tiles.parquet")) == tiles > 0
    assert "Traceback" not in done.stderr

    failed = run_cli("tile", good, bad, *common)
    assert failed.returncode == 1, failed.stderr
    summary = json.loads(failed.stdout)["summary"]
    assert summary == {"slides": 2, "ok": 1, "error": 1, "resumed": 1, "tiles": tiles}
    assert "Traceback" not in failed.stderr
    # One report line per failed slide (besides its progress bar), naming it and why.
    [error_line] = [line for line in failed.stderr.splitlines() if line.startswith("unopenable:")]
    assert "unopenable.tiff: no slide reader can open it" in error_line


def test_tile_to_unwritable_output(mosaic_2um: MosaicComposition, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_cli("tile", mosaic_2um.path, "--out", blocker / "out", "--json")
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["summary"]["error"] == 1
    assert "not writable" in record["slides"][0]["reason"]
    assert "Traceback" not in done.stderr


# -- plugins, version -----------------------------------------------------------------------
def test_plugins_lists_the_three_readers() -> None:
    done = subprocess.run(
        [str(console_script()), "plugins"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert rows[0] == ["KIND", "NAME", "FROM", "STATUS", "DESCRIPTION"]
    readers = [row[1] for row in rows if row[0] == "slide_reader"]
    assert readers == ["openslide", "tiffslide", "wsidicom"]  # the order auto tries them
    assert all(row[2:5] == ["osteomics", osteomics.__version__, "ok"] for row in rows[1:])
    assert "broken" not in done.stdout


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"osteomics {osteomics.__version__}"


# -- demo ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_scores_a_three_slide_case(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = run_cli("demo", "--out", out, "--workers", "2")
    assert done.returncode == 0, done.stderr
    for i in (1, 2, 3):
        slide = out / "slides" / f"demo-case-slide-{i}.tiff"
        composition = MosaicComposition.from_json(slide.with_suffix(".json").read_text())
        assert composition.mpp == 2.0
        assert (composition.width_px, composition.height_px) == (3072, 3072)
        assert (out / "necrosis" / "slides" / f"{slide.stem}.heatmap.png").stat().st_size > 0
    cases = pd.read_csv(out / "necrosis" / "necrosis_cases.csv")
    assert list(cases["case"]) == ["demo-case"]
    assert int(cases["n_slides"].iloc[0]) == 3
    # The case rate is the area-weighted rate of its slides, recomputed here from the slide
    # table (not a mean of slide rates), and the printed truth is the compositions' own.
    slides = pd.read_csv(out / "necrosis" / "necrosis_slides.csv")
    necrotic, viable = slides["necrotic_mm2"].sum(), slides["viable_mm2"].sum()
    assert float(cases["necrosis_rate"].iloc[0]) == pytest.approx(
        100 * necrotic / (necrotic + viable), abs=1e-3
    )
    truth = [
        MosaicComposition.from_json((out / "slides" / f"demo-case-slide-{i}.json").read_text())
        for i in (1, 2, 3)
    ]
    true_necrotic = sum(c.area_mm2_by_label().get("Non-Viable-Tumor", 0.0) for c in truth)
    true_viable = sum(c.area_mm2_by_label().get("Viable", 0.0) for c in truth)
    expected_truth = 100 * true_necrotic / (true_necrotic + true_viable)
    assert f"necrosis {expected_truth:.1f} %" in done.stdout
    assert "building demo slides" in done.stderr
    assert "report.html" in done.stdout and "truth by cell area" in done.stdout
    assert (out / "necrosis" / "report.html").read_text().count("<section>") == 1


# -- Ctrl-C -------------------------------------------------------------------------------
def staged_chunks(out: Path) -> bool:
    """True once a tile chunk has been written into the run's staging folder."""
    try:
        return any(
            p.is_file() and "c" in p.relative_to(out).parts for p in (out / ".staging").rglob("*")
        )
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_keeps_nothing_and_a_rerun_completes(big_mosaic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["tile", big_mosaic, "--out", out, "--tile-px", "128", "--workers", "2", "--json"]
    proc = subprocess.Popen(
        [*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: staged_chunks(out) or proc.poll() is not None, 180, "the first tiles")
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    record = json.loads((out / "run.json").read_text())
    assert json.loads(stdout) == record
    assert record["interrupted"] is True
    [row] = record["slides"]
    assert row["slide"] == "big" and row["status"] == "error"
    assert "interrupted" in row["reason"] and "Ctrl-C" in row["reason"]
    assert not (out / ".staging").exists()
    assert not (out / "big" / "slide.json").exists()
    assert not (out / "big").exists()

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert summary["ok"] == 1 and summary["resumed"] == 0
    marker = json.loads((out / "big" / "slide.json").read_text())
    assert marker["result"]["n_tiles"] == summary["tiles"] > 1000
    assert not (out / ".staging").exists()


# -- README and CI --------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """CI must run what the README tells a contributor to run, and neither may put the venv
    first on PATH (pynetdicom's storescu/echoscu/findscu would shadow DCMTK's)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:]]
    commands = [b for b in blocks if ".ci/lint" in b]
    assert len(commands) == 1, commands
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == commands[0]
    assert 'pip install -e ".[all,test]"' in ci
    assert "PATH=" not in ci
    install = [b for b in blocks if "osteomics demo" in b]
    assert len(install) == 1 and 'pip install -e ".[all]"' in install[0]
