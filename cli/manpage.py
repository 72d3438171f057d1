"""Help pages that read like a man page.

typer's defaults show every parameter with a type tag (``--json <bool>``, ``{slide}``,
``<list[Path]>``) and read help texts as rich markup (so ``[remotes.NAME]`` disappears).
:func:`man_page` turns a command tree into plain text help: arguments and values in capitals
(``SLIDE...``, ``--config PATH``), flags without a value, markup left as written, and the
reStructuredText double backticks of docstrings shown as single ones.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from typer.core import TyperArgument

_DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str | None:
    """``text`` with reStructuredText ````literal```` shown as `literal`."""
    return _DOUBLE_BACKTICKS.sub(r"`\1`", text) if text else text


class ManPageArgument(TyperArgument):
    """A positional argument shown as ``NAME``, ``NAME...`` or ``[NAME]``."""

    def _man_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        return f"{name}..." if self.nargs != 1 else name

    def _usage_display_name(self) -> str:
        return self._man_name() if self.required else f"[{self._man_name()}]"

    def get_help_record(self, ctx: Any) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        return None if record is None else (self._man_name(), record[1])


def _first_paragraph(text: str | None) -> str | None:
    """The first paragraph of a help text on one line (the group listing shows it whole)."""
    if not text:
        return text
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split())


_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}


def _metavar(param: Any) -> str:
    """``PATH``, ``FLOAT``, ``a|b|c``...: the value placeholder of an option, click-style."""
    desc = getattr(param, "type_descriptor", None)  # typer >= 0.29 (its own copy of click)
    if desc is None:
        param_type = param.type
        choices = getattr(param_type, "choices", None)
        if choices:
            return "|".join(str(getattr(c, "value", c)) for c in choices)
        return str(getattr(param_type, "name", "value")).upper()
    if desc.is_choice and desc.choices:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices)
    if desc.is_path:
        return "PATH"
    name = re.sub(r"^list\[(.*)\]$", r"\1", param.bare_type())
    return _TYPE_NAMES.get(name, name.upper())


def man_page(command: Any) -> Any:
    """Make ``command`` and everything under it print man-page-like help (in place).

    Parameters
    ----------
    command:
        A command or group built by typer (``typer.main.get_command``).

    Returns
    -------
    command
        The same object.
    """
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    command.help = plain(command.help)
    command.short_help = plain(command.short_help) or _first_paragraph(command.help)
    # A sub-app's own shell-completion options: osteomics installs no completion.
    command.params = [
        p for p in command.params if p.name not in ("install_completion", "show_completion")
    ]
    for param in command.params:
        if isinstance(param, TyperArgument) and not isinstance(param, ManPageArgument):
            param.__class__ = ManPageArgument
        is_option = getattr(param, "param_type_name", "") == "option"
        if is_option and not param.is_flag and not param.count and param.metavar is None:
            param.metavar = _metavar(param)
        if hasattr(param, "help"):
            param.help = plain(param.help)
    for sub in getattr(command, "commands", {}).values():  # a group: its commands too
        man_page(sub)
    return command
