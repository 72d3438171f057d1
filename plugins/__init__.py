"""Plugins: adapters to the outside world, discovered through entry points.

Every plugin, built-in or third-party, is a :class:`Plugin` object published under the
entry-point group ``osteomics.plugins``. A package registers one in its ``pyproject.toml``::

    [project.entry-points."osteomics.plugins"]
    myreader = "mypackage.reader:plugin"

Kinds: ``slide_reader`` (factory: a :class:`osteomics.wsi.slide.Slide` subclass),
later ``pacs_connector`` and ``exporter``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "osteomics.plugins"


@dataclass(frozen=True)
class Plugin:
    """One registered plugin.

    Attributes
    ----------
    name:
        Short name users type (``--backend openslide``).
    kind:
        ``slide_reader``, ``pacs_connector`` or ``exporter``.
    description:
        One line for ``osteomics plugins``.
    factory:
        The object the plugin provides; for a slide reader, the ``Slide`` subclass.
    priority:
        Lower is tried first where several plugins of a kind could serve (``--backend auto``).
    """

    name: str
    kind: str
    description: str
    factory: Any
    priority: int = 100


@dataclass(frozen=True)
class PluginLoadFailure:
    """An entry point that is registered but failed to import (reported, never fatal)."""

    name: str
    target: str
    reason: str


def discover_plugins(kind: str | None = None) -> tuple[list[Plugin], list[PluginLoadFailure]]:
    """Load every plugin registered under ``osteomics.plugins``.

    Parameters
    ----------
    kind:
        Keep only plugins of this kind; ``None`` keeps all.

    Returns
    -------
    plugins, failures:
        Plugins sorted by (priority, name); entry points that failed to load, with the reason.
    """
    plugins: list[Plugin] = []
    failures: list[PluginLoadFailure] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break osteomics
            log.warning("plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            failures.append(PluginLoadFailure(ep.name, ep.value, f"{type(exc).__name__}: {exc}"))
            continue
        if not isinstance(obj, Plugin):
            failures.append(
                PluginLoadFailure(
                    ep.name, ep.value, "entry point is not an osteomics Plugin object"
                )
            )
            continue
        if kind is None or obj.kind == kind:
            plugins.append(obj)
    plugins.sort(key=lambda p: (p.priority, p.name))
    return plugins, failures
