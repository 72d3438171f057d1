"""Plugins are found through entry points, one group per kind, built-in or third-party; only the
plugins of the kind asked for are imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import osteomics
from osteomics.core.plugins import RETIRED_GROUP
from osteomics.plugins import KIND_GROUPS, Plugin, clear_plugin_cache, discover_plugins
from osteomics.wsi.slide import Slide, reader_classes
from osteomics.wsi.sources import source_for_path

READERS = ["openslide", "tiffslide", "wsidicom"]


@pytest.fixture(autouse=True)
def fresh_discovery() -> Iterator[None]:
    """Discovery is cached per process; these tests install plugins, so forget before and after."""
    clear_plugin_cache()
    yield
    clear_plugin_cache()


def install_fake_distribution(site: Path) -> None:
    """A real (if tiny) installed distribution on ``site`` registering: an exporter plugin, one
    that fails to import, one that is not a Plugin, a reader registered as an exporter, and one
    left under the retired group (which must never be imported)."""
    (site / "osteomics_test_exporter.py").write_text(
        "from osteomics.plugins import Plugin\n"
        "plugin = Plugin('csv', 'exporter', 'CSV tables', factory=dict, priority=5)\n"
        "reader = Plugin('fake', 'slide_reader', 'not an exporter', factory=dict)\n"
    )
    (site / "osteomics_test_broken.py").write_text("raise ImportError('needs libfoo.so')\n")
    (site / "osteomics_test_retired.py").write_text("raise SystemExit('imported!')\n")
    dist_info = site / "osteomics_test_plugins-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: osteomics-test-plugins\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[osteomics.exporters]\n"
        "csv = osteomics_test_exporter:plugin\n"
        "broken = osteomics_test_broken:plugin\n"
        "notaplugin = os.path:join\n"
        "wrongkind = osteomics_test_exporter:reader\n"
        f"[{RETIRED_GROUP}]\n"
        "old = osteomics_test_retired:plugin\n"
    )


def test_builtin_plugins_are_registered_under_the_group_of_their_kind() -> None:
    def names(kind: str) -> set[str]:
        return {ep.name for ep in entry_points(group=KIND_GROUPS[kind])}

    assert names("slide_reader") == set(READERS)
    assert names("exporter") == {"qupath-geojson", "dicom-sr", "dicom-seg"}
    assert names("pacs_connector") == {"dimse", "dicomweb"}
    assert not list(entry_points(group=RETIRED_GROUP))


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
    assert [p.name for p in connectors] == ["dimse", "dicomweb"]


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
    readers, failures = discover_plugins("slide_reader")
    assert [p.name for p in readers] == READERS
    assert failures == []  # the broken exporters are not even imported when readers are asked
    assert "osteomics_test_exporter" not in sys.modules
    plugins, failures = discover_plugins()
    names = [p.name for p in plugins]
    assert names[0] == "csv"  # priority 5
    assert [p.name for p in plugins if p.kind == "slide_reader"] == READERS
    reasons = {f.name: f.reason for f in failures}
    assert set(reasons) == {"broken", "notaplugin", "wrongkind", "old"}
    assert "ImportError: needs libfoo.so" in reasons["broken"]
    assert "not an osteomics Plugin" in reasons["notaplugin"]
    assert "osteomics.slide_readers" in reasons["wrongkind"]
    assert "retired group" in reasons["old"]
    assert "osteomics_test_retired" not in sys.modules  # reported, never imported
    assert {f.distribution for f in failures} == {("osteomics-test-plugins", "0.1")}
    exporters, _ = discover_plugins("exporter")
    assert [p.name for p in exporters] == ["csv", "qupath-geojson", "dicom-sr", "dicom-seg"]


def test_discovery_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before, _ = discover_plugins("exporter")
    install_fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cached, _ = discover_plugins("exporter")
    assert cached == before  # the entry points are not read again...
    cached.clear()  # ...and a caller cannot spoil the cache
    assert discover_plugins("exporter")[0] == before
    clear_plugin_cache()
    assert [p.name for p in discover_plugins("exporter")[0]][:2] == ["csv", "qupath-geojson"]


def test_opening_a_slide_imports_no_radiology(cmu_svs: Path) -> None:
    """Opening a slide (with the openslide reader, as `auto` picks) imports the slide readers
    only: not pynetdicom, not the node, not the PACS connector."""
    script = (
        "import sys\n"
        "from osteomics.wsi.slide import open_slide\n"
        f"with open_slide({str(cmu_svs)!r}) as s:\n"
        "    assert s.info.backend == 'openslide', s.info.backend\n"
        "    s.read_region((0, 0), 0, (64, 64))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pynetdicom'\n"
        "    or m.startswith(('osteomics.radiology', 'osteomics.plugins.dimse'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


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
    assert lines[0].split() == ["KIND", "NAME", "FROM", "STATUS", "DESCRIPTION"]
    assert any(
        line.split()[:4] == ["exporter", "csv", "osteomics-test-plugins", "0.1"] for line in lines
    )
    broken = [line for line in lines if line.split()[4:5] == ["broken"]]
    assert len(broken) == 4
    assert any("needs libfoo.so" in line for line in broken)
    assert "Traceback" not in done.stdout + done.stderr
    # aligned: every column starts at the same offset on every line
    starts = {line.index(line.split()[1], len(line.split()[0])) for line in lines}
    assert len(starts) == 1, lines


def test_plugins_json(tmp_path: Path) -> None:
    install_fake_distribution(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "osteomics.cli.main", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    plugins = {(p["kind"], p["name"]): p for p in document["plugins"]}
    assert [name for kind, name in plugins if kind == "slide_reader"] == READERS
    assert plugins["slide_reader", "openslide"]["distribution"] == "osteomics"
    assert plugins["slide_reader", "openslide"]["version"] == osteomics.__version__
    assert plugins["exporter", "csv"]["version"] == "0.1"
    broken = {b["name"]: b for b in document["broken"]}
    assert broken["broken"]["group"] == "osteomics.exporters"
    assert broken["broken"]["kind"] == "exporter"
    assert "needs libfoo.so" in broken["broken"]["reason"]
