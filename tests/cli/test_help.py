"""Help pages read like a man page, and asking for help (or the version) imports no room."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from osteomics.cli.main import COMMANDS, app

#: Every help page of the command, as a user would ask for it.
PAGES = [
    [],
    *([name] for name in COMMANDS),
    *(["node", sub] for sub in ("serve", "echo", "status", "ls", "pull")),
]

#: What typer's defaults put in help pages and a man page never shows.
NOT_MAN_PAGE = [
    (re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\])>"), "a type tag such as <bool>"),
    (re.compile(r"\{[a-z_]+\}"), "a placeholder such as {slide}"),
    (re.compile(r"``"), "reStructuredText double backticks"),
    (re.compile(r"--(install|show)-completion"), "shell-completion options"),
    (re.compile(r"[╭│╰]"), "rich boxes"),
]


def help_page(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("args", PAGES, ids=lambda a: " ".join(a) or "osteomics")
def test_help_reads_like_a_man_page(args: list[str]) -> None:
    page = help_page(*args)
    assert page.startswith(f"Usage: {' '.join(['osteomics', *args])} ")
    for pattern, what in NOT_MAN_PAGE:
        found = pattern.search(page)
        assert found is None, f"{what} in `osteomics {' '.join(args)} --help`: {found}\n{page}"


def test_flags_take_no_value_and_values_are_named() -> None:
    page = help_page("evaluate")
    assert re.search(r"^\s+--json\s+Print", page, re.MULTILINE), page
    assert re.search(r"^\s+--tile-mpp FLOAT\s", page, re.MULTILINE), page
    assert "Usage: osteomics evaluate [OPTIONS] MODEL TILE_DIR" in page
    assert "Usage: osteomics tile [OPTIONS] PATHS..." in help_page("tile")


def test_markup_is_shown_as_written() -> None:
    """`[remotes.NAME]` was read as rich markup and vanished ("A remote of node.toml ()")."""
    assert "[remotes.NAME]" in help_page("node", "echo")


def test_radiomics_help_lists_the_shipped_configurations() -> None:
    from osteomics.radiology.radiomics.config import shipped_configs

    shipped = shipped_configs()
    assert "ibsi-config-a" in shipped
    page = help_page("radiomics")
    for name in shipped:
        assert name in page


def test_every_registered_command_loads_under_its_name() -> None:
    page = help_page()
    for name, spec in COMMANDS.items():
        assert re.search(rf"^  {name}\s+{re.escape(spec.summary)}", page, re.MULTILINE), page
        own = help_page(name)
        assert own.startswith(f"Usage: osteomics {name} ")


ROOMS = (
    "torch",
    "timm",
    "dask",
    "distributed",
    "zarr",
    "numpy",
    "scipy",
    "pandas",
    "pydicom",
    "pynetdicom",
    "openslide",
    "osteomics.wsi",
    "osteomics.radiology",
    "osteomics.fusion",
)


@pytest.mark.parametrize("args", [["--help"], ["--version"], []])
def test_help_and_version_import_no_room(args: list[str]) -> None:
    """Commands are imported lazily: `osteomics --help` took ~4 s cold importing every room."""
    script = (
        "import json, sys\n"
        f"sys.argv = ['osteomics', *{args!r}]\n"
        "from osteomics.cli.main import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    modules = json.loads(done.stderr.strip().splitlines()[-1])
    loaded = sorted(m for m in modules if m in ROOMS or m.startswith(ROOMS))
    assert loaded == [], loaded
    expected = "osteomics " if args == ["--version"] else "Usage: osteomics"
    assert expected in done.stdout + done.stderr


def test_a_command_imports_only_its_room() -> None:
    """`osteomics node --help` needs the node, not torch."""
    script = (
        "import sys\n"
        "sys.argv = ['osteomics', 'node', 'status', '--help']\n"
        "from osteomics.cli.main import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'dask', 'osteomics.wsi') if m in sys.modules),\n"
        "      file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
    assert "Usage: osteomics node status" in done.stdout
