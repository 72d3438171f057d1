"""Entry point of the ``osteomics`` command."""

from __future__ import annotations

import logging
import os
import sys

import typer

from osteomics import OsteomicsError, __version__
from osteomics.cli import demo, evaluate, info, necrosis, node, plugins, radiomics, tile, train

app = typer.Typer(
    name="osteomics",
    help="Bone-tumour pathology and radiology: slides, tiles, necrosis, DICOM, radiomics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("info")(info.info)
app.command("tile")(tile.tile)
app.command("necrosis")(necrosis.necrosis)
app.command("demo")(demo.demo)
app.command("plugins")(plugins.list_plugins)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.add_typer(node.app, name="node")
app.command("radiomics")(radiomics.radiomics)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"osteomics {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Dask's own chatter (cluster start/stop) is not news to a pathologist. Dask reads this
    # when it is first imported, which is after this point.
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


def main() -> None:
    """Run the app; an :class:`OsteomicsError` becomes one line on stderr and exit code 1."""
    try:
        app()
    except OsteomicsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
