"""``osteomics plugins``: what readers, connectors and exporters are installed."""

from __future__ import annotations

import typer

from osteomics.plugins import discover_plugins


def list_plugins() -> None:
    """List installed plugins (entry-point group ``osteomics.plugins``)."""
    plugins, failures = discover_plugins()
    for p in plugins:
        typer.echo(f"{p.kind:15s} {p.name:12s} {p.description}")
    for f in failures:
        typer.secho(f"{'broken':15s} {f.name:12s} {f.target}: {f.reason}", fg="yellow")
