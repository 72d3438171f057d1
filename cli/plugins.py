"""``osteomics plugins``: what readers, connectors and exporters are installed."""

from __future__ import annotations

import json

import typer

from osteomics.cli.main import EXTRA_MODULES
from osteomics.core.plugins import (
    KIND_GROUPS,
    Plugin,
    discover_plugins,
    missing_requirements,
    plugin_distribution,
)

# The extra that installs what a built-in plugin of each kind needs.
_KIND_EXTRA = {
    "slide_reader": "wsi",
    "pacs_connector": "node",
    "exporter": "wsi",
    "weight_source": "wsi",
}
_GROUP_KIND = {group: kind for kind, group in KIND_GROUPS.items()}


def _hint(reason: str, distribution: str, group: str) -> str:
    """``reason``, plus the extra to install when a built-in plugin misses a dependency."""
    extra = _KIND_EXTRA.get(_GROUP_KIND.get(group, ""), "")
    if distribution == "osteomics" and reason.startswith("ModuleNotFoundError") and extra:
        return f"{reason} (pip install 'osteomics[{extra}]')"
    return reason


def _status(plugin: Plugin, distribution: str) -> str:
    """``ok``, or which modules the plugin needs that are not installed (and how to get them)."""
    missing = missing_requirements(plugin)
    if not missing:
        return "ok"
    # The extra that installs the missing module (highdicom: radiomics), else the kind's.
    extra = EXTRA_MODULES.get(missing[0]) or _KIND_EXTRA.get(plugin.kind, "")
    how = f" (pip install 'osteomics[{extra}]')" if distribution == "osteomics" and extra else ""
    return f"needs {', '.join(missing)}{how}"


def _table(rows: list[list[str]]) -> list[str]:
    """Rows as lines of left-aligned columns (the last column is not padded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def list_plugins(
    as_json: bool = typer.Option(
        False, "--json", help="Print plugins and broken entry points as one JSON object."
    ),
) -> None:
    """List installed plugins: kind, name, the distribution (and version) that provides each,
    whether it can run (STATUS: ok, needs MODULE, or broken) and what it does.

    Plugins are registered under one entry-point group per kind: osteomics.slide_readers,
    osteomics.pacs_connectors, osteomics.exporters and osteomics.weight_sources. An entry point
    that cannot be loaded is listed as broken, with the reason; it never stops osteomics.
    """
    plugins, failures = discover_plugins()
    plugins.sort(key=lambda p: (list(KIND_GROUPS).index(p.kind), p.priority, p.name))
    listed = [(p, *plugin_distribution(p)) for p in plugins]
    if as_json:
        document = {
            "plugins": [
                {
                    "kind": p.kind,
                    "name": p.name,
                    "distribution": dist,
                    "version": version,
                    "priority": p.priority,
                    "missing": missing_requirements(p),
                    "description": p.description,
                }
                for p, dist, version in listed
            ],
            "broken": [
                {
                    "kind": _GROUP_KIND.get(f.group, ""),
                    "group": f.group,
                    "name": f.name,
                    "distribution": f.distribution[0],
                    "version": f.distribution[1],
                    "target": f.target,
                    "reason": _hint(f.reason, f.distribution[0], f.group),
                }
                for f in failures
            ],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    rows = [["KIND", "NAME", "FROM", "STATUS", "DESCRIPTION"]]
    rows += [
        [p.kind, p.name, f"{dist} {version}".strip(), _status(p, dist), p.description]
        for p, dist, version in listed
    ]
    rows += [
        [
            _GROUP_KIND.get(f.group, f.group),
            f.name,
            " ".join(f.distribution).strip(),
            "broken",
            f"{f.target}: {_hint(f.reason, f.distribution[0], f.group)}",
        ]
        for f in failures
    ]
    for line in _table(rows):
        typer.echo(line)
