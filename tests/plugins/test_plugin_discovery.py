"""Plugins are found through the `osteomics.plugins` entry points, built-in or third-party."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from osteomics.plugins import ENTRY_POINT_GROUP, Plugin, discover_plugins
from osteomics.wsi.slide import Slide, reader_classes
from osteomics.wsi.sources import source_for_path

READERS = ["openslide", "tiffslide", "wsidicom"]


def install_fake_distribution(site: Path) -> None:
    """A real (if tiny) installed distribution on ``site`` registering three entry points:
    an exporter plugin, one that fails to import, and one that is not a Plugin."""
    (site / "osteomics_test_exporter.py").write_text(
        "from osteomics.plugins import Plugin\n"
        "plugin = Plugin('csv', 'exporter', 'CSV tables', factory=dict, priority=5)\n"
    )
    (site / "osteomics_test_broken.py").write_text("raise ImportError('needs libfoo.so')\n")
    dist_info = site / "osteomics_test_plugins-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: osteomics-test-plugins\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "csv = osteomics_test_exporter:plugin\n"
        "broken = osteomics_test_broken:plugin\n"
        "notaplugin = os.path:join\n"
    )


def test_builtin_readers_are_registered_entry_points() -> None:
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert set(READERS) <= names


def test_discover_slide_readers() -> None:
    plugins, failures = discover_plugins("slide_reader")
    assert [p.name for p in plugins] == READERS  # by priority: the order `auto` tries them
    assert failures == []
    for p in plugins:
        assert isinstance(p, Plugin)
        assert p.kind == "slide_reader"
        assert issubclass(p.factory, Slide)
        assert p.factory.backend == p.name
        assert p.description
    assert [p.priority for p in plugins] == sorted(p.priority for p in plugins)


def test_reader_classes_follow_discovery() -> None:
    readers = reader_classes()
    assert list(readers) == READERS
    assert all(issubclass(cls, Slide) for cls in readers.values())


def test_no_plugins_of_an_unknown_kind() -> None:
    plugins, _ = discover_plugins("teleporter")
    assert plugins == []
    connectors, _ = discover_plugins("pacs_connector")
    assert [p.name for p in connectors] == ["dimse"]


def test_readers_sniff_their_formats(cmu_svs: Path, dicom_wsi_dir: Path) -> None:
    readers = reader_classes()
    svs, dicom = source_for_path(cmu_svs), source_for_path(dicom_wsi_dir)
    assert readers["openslide"].can_open(svs)
    assert readers["tiffslide"].can_open(svs)
    assert not readers["wsidicom"].can_open(svs)
    assert readers["openslide"].can_open(dicom)
    assert not readers["tiffslide"].can_open(dicom)
    assert readers["wsidicom"].can_open(dicom)


def test_third_party_plugins_and_broken_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins, failures = discover_plugins()
    names = [p.name for p in plugins]
    assert names[0] == "csv"  # priority 5
    assert [p.name for p in plugins if p.kind == "slide_reader"] == READERS
    reasons = {f.name: f.reason for f in failures}
    assert set(reasons) == {"broken", "notaplugin"}
    assert "ImportError: needs libfoo.so" in reasons["broken"]
    assert "not an osteomics Plugin" in reasons["notaplugin"]
    exporters, _ = discover_plugins("exporter")
    assert [p.name for p in exporters] == ["csv", "qupath-geojson"]  # priority 5, then 10
    readers, _ = discover_plugins("slide_reader")
    assert [p.name for p in readers] == READERS


def test_plugins_command_reports_a_broken_plugin(tmp_path: Path) -> None:
    install_fake_distribution(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "osteomics.cli.main", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:2] == ["exporter", "csv"] for line in lines)
    broken = [line for line in lines if line.startswith("broken")]
    assert len(broken) == 2
    assert any("needs libfoo.so" in line for line in broken)
    assert "Traceback" not in done.stdout + done.stderr
