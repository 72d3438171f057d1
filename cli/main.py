"""Entry point of the ``osteomics`` command.

Commands are registered lazily (:data:`COMMANDS`): a command's module, and the room it drives
(torch, Dask, pynetdicom...), is imported only when that command runs or its own ``--help`` is
asked for, so ``osteomics --help`` and ``--version`` start at once. Registering a command is one
line in :data:`COMMANDS`.

Help pages are plain text, formatted like a man page (:mod:`osteomics.cli.manpage`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperGroup

from osteomics import OsteomicsError, __version__
from osteomics.cli.manpage import man_page


@dataclass(frozen=True)
class LazyCommand:
    """A command of ``osteomics`` whose module is imported only when it is used.

    Attributes
    ----------
    target:
        ``module:attribute``; the attribute is a command function or a ``typer.Typer`` app
        (a command group, e.g. ``node``).
    extra:
        The optional-dependency extra the command needs (``pip install 'osteomics[EXTRA]'``);
        ``""`` when the base install is enough.
    summary:
        One line for ``osteomics --help`` (tests/cli/test_help.py checks it against the
        command's own help, so the two cannot drift apart).
    """

    target: str
    extra: str
    summary: str


COMMANDS: dict[str, LazyCommand] = {
    "info": LazyCommand("osteomics.cli.info:info", "wsi", "What is in a slide file."),
    "tile": LazyCommand("osteomics.cli.tile:tile", "wsi", "Tile slides at a target µm/px."),
    "necrosis": LazyCommand(
        "osteomics.cli.necrosis:necrosis", "wsi", "Necrosis rate, Huvos grade and responder."
    ),
    "demo": LazyCommand("osteomics.cli.demo:demo", "wsi", "Build and score the demo case."),
    "train": LazyCommand("osteomics.cli.train:train", "wsi", "Train a tile classifier."),
    "evaluate": LazyCommand(
        "osteomics.cli.evaluate:evaluate", "wsi", "Evaluate a model on labelled images."
    ),
    "node": LazyCommand("osteomics.cli.node:app", "node", "The DICOM node (serve, echo, ...)."),
    "radiomics": LazyCommand(
        "osteomics.cli.radiomics:radiomics", "radiomics", "IBSI radiomics features."
    ),
    "signature": LazyCommand(
        "osteomics.cli.signature:app", "fusion", "Fused signatures (fit, apply)."
    ),
    "export-dicom": LazyCommand(
        "osteomics.cli.export_dicom:export_dicom", "radiomics", "Results as DICOM SR and SEG."
    ),
    "plugins": LazyCommand("osteomics.cli.plugins:list_plugins", "", "List installed plugins."),
}
"""Every command of ``osteomics``, in the order ``--help`` lists them."""

# Third-party modules that only an extra installs: a command that misses one names the extra.
EXTRA_MODULES: dict[str, str] = {
    **dict.fromkeys(
        (
            "torch", "torchvision", "timm", "safetensors", "openslide", "tiffslide",
            "wsidicom", "zarr", "dask", "distributed", "tifffile", "imagecodecs",
        ),
        "wsi",
    ),
    **dict.fromkeys(("pynetdicom",), "node"),
    **dict.fromkeys(("nibabel", "highdicom"), "radiomics"),
    **dict.fromkeys(("sklearn", "sksurv", "neuroCombat", "matplotlib"), "fusion"),
    # needed by more than one extra: the running command's extra is named
    **dict.fromkeys(("pydicom", "skimage", "PIL"), ""),
}  # fmt: skip


#: What each extra installs that its commands cannot run without (checked before a command
#: runs, without importing anything: a site without torch gets one line, not a traceback).
EXTRA_CHECKS: dict[str, tuple[str, ...]] = {
    "wsi": (
        "PIL",
        "skimage",
        "openslide",
        "tiffslide",
        "wsidicom",
        "zarr",
        "dask",
        "torch",
        "timm",
    ),
    "node": ("pydicom", "pynetdicom"),
    "radiomics": ("pydicom", "skimage", "nibabel", "highdicom"),
    "fusion": ("sklearn", "sksurv", "neuroCombat", "matplotlib"),
}


class MissingExtraError(OsteomicsError, ModuleNotFoundError):
    """A command needs an optional dependency that is not installed."""


def missing_modules(extra: str) -> list[str]:
    """The modules of :data:`EXTRA_CHECKS` ``[extra]`` that are not installed."""
    return [m for m in EXTRA_CHECKS.get(extra, ()) if importlib.util.find_spec(m) is None]


_running: list[str] = []  # the lazy command being run, for the missing-extra message


def missing_extra_error(command: str, exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The one-line error for ``exc`` when it is a missing optional dependency, else ``None``."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRA_MODULES:
        return None
    extra = EXTRA_MODULES[module] or (COMMANDS[command].extra if command in COMMANDS else "")
    extra = extra or "all"
    return MissingExtraError(
        f"osteomics {command} needs {module!r}, which is not installed: "
        f"pip install 'osteomics[{extra}]'"
    )


def _load(name: str, spec: LazyCommand) -> Any:
    module_name, attribute = spec.target.split(":")
    try:
        obj: Any = getattr(importlib.import_module(module_name), attribute)
    except ModuleNotFoundError as exc:
        error = missing_extra_error(name, exc)
        if error is None:
            raise
        raise error from exc
    if isinstance(obj, typer.Typer):
        command = typer.main.get_command(obj)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    if spec.extra:
        run_command = command.invoke

        def invoke(ctx: Any) -> Any:  # after parsing, so that --help works without the extra
            missing = missing_modules(spec.extra)
            if missing:
                raise MissingExtraError(
                    f"osteomics {name} needs {', '.join(missing)}, which "
                    f"{'is' if len(missing) == 1 else 'are'} not installed: "
                    f"pip install 'osteomics[{spec.extra}]'"
                )
            return run_command(ctx)

        command.invoke = invoke  # type: ignore[method-assign]
    return man_page(command)


class LazyGroup(TyperGroup):
    """The root command group: lists :data:`COMMANDS` without importing them."""

    _loaded: dict[str, Any]

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return super().get_command(ctx, cmd_name)
        loaded = self.__dict__.setdefault("_loaded", {})
        if cmd_name not in loaded:
            loaded[cmd_name] = _load(cmd_name, spec)
        _running[:] = [cmd_name]
        return loaded[cmd_name]

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, spec.summary) for name, spec in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="osteomics",
    cls=LazyGroup,
    help="Bone-tumour pathology and radiology: slides, tiles, necrosis, DICOM, radiomics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Dask's own chatter (cluster start/stop) is not news to a pathologist. Dask reads this
    # when it is first imported, which is after this point.
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


def main() -> None:
    """Run the app; an :class:`OsteomicsError` becomes one line on stderr and exit code 1.

    So does a missing optional dependency (it names the extra to install).
    """
    try:
        app()
    except OsteomicsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except ModuleNotFoundError as exc:
        error = missing_extra_error(_running[0], exc) if _running else None
        if error is None:
            raise
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
