"""The plugin contract: what a plugin is, and how the rooms find the plugins of one kind.

Every plugin, built-in or third-party, is a :class:`Plugin` object published under the
entry-point group of its kind (:data:`KIND_GROUPS`). A package registers a slide reader in its
``pyproject.toml`` like this::

    [project.entry-points."osteomics.slide_readers"]
    myreader = "mypackage.reader:plugin"

One group per kind lets discovery choose the entry points of a kind *before* importing them:
opening a slide imports the slide readers and nothing else (not pynetdicom, not the node).
Results are cached per kind for the life of the process (:func:`clear_plugin_cache` forgets them).

This module lives on the ground floor so that the rooms (``wsi``, ``radiology``) can find
their plugins without importing the ``plugins`` layer above them; ``osteomics.plugins``
re-exports it for third parties.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

log = logging.getLogger(__name__)

KIND_GROUPS: dict[str, str] = {
    "slide_reader": "osteomics.slide_readers",
    "pacs_connector": "osteomics.pacs_connectors",
    "exporter": "osteomics.exporters",
    "weight_source": "osteomics.weight_sources",
}
"""Plugin kind -> the entry-point group its plugins are registered under."""

RETIRED_GROUP = "osteomics.plugins"
"""The single group of osteomics 0.1; entries still found there are reported, never loaded."""


@dataclass(frozen=True)
class Plugin:
    """One registered plugin.

    Attributes
    ----------
    name:
        Short name users type (``--backend openslide``).
    kind:
        ``slide_reader``, ``pacs_connector``, ``exporter`` or ``weight_source``; it must match
        the entry-point group the plugin is registered under (:data:`KIND_GROUPS`).
    description:
        One line for ``osteomics plugins``.
    factory:
        The object the plugin provides; for a slide reader, the ``Slide`` subclass.
    priority:
        Lower is tried first where several plugins of a kind could serve (``--backend auto``).
    requires:
        Top-level modules the plugin needs when it runs but its module does not import (a
        reader that imports its library lazily); ``osteomics plugins`` says which are missing.
    """

    name: str
    kind: str
    description: str
    factory: Any
    priority: int = 100
    requires: tuple[str, ...] = ()


def missing_requirements(plugin: Plugin) -> list[str]:
    """The modules of ``plugin.requires`` that are not installed (found without importing)."""
    return [m for m in plugin.requires if importlib.util.find_spec(m) is None]


@dataclass(frozen=True)
class PluginLoadFailure:
    """An entry point that is registered but could not be used (reported, never fatal).

    Attributes
    ----------
    name:
        The entry point's name.
    target:
        What it points at (``module:attribute``).
    reason:
        Why it could not be used, and what to do where that is known.
    group:
        The entry-point group it is registered under.
    distribution:
        ``(name, version)`` of the installed distribution that registers it (``("", "")`` when
        unknown).
    """

    name: str
    target: str
    reason: str
    group: str = ""
    distribution: tuple[str, str] = ("", "")


def distribution_of(ep: EntryPoint) -> tuple[str, str]:
    """``(name, version)`` of the distribution that registers ``ep`` (``("", "")`` if unknown)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("", "")
    try:
        return (str(dist.metadata["Name"]), str(dist.version))
    except Exception:  # broken metadata of a third-party package: not worth failing over
        return ("", "")


@dataclass(frozen=True)
class _Discovered:
    plugins: tuple[Plugin, ...]
    failures: tuple[PluginLoadFailure, ...]
    distributions: tuple[tuple[str, tuple[str, str]], ...]  # plugin name -> (dist, version)


@functools.cache
def _discover_kind(kind: str) -> _Discovered:
    group = KIND_GROUPS[kind]
    plugins: list[Plugin] = []
    failures: list[PluginLoadFailure] = []
    dists: list[tuple[str, tuple[str, str]]] = []
    for ep in entry_points(group=group):
        dist = distribution_of(ep)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break osteomics
            log.warning("plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            failures.append(
                PluginLoadFailure(ep.name, ep.value, f"{type(exc).__name__}: {exc}", group, dist)
            )
            continue
        if not isinstance(obj, Plugin):
            failures.append(
                PluginLoadFailure(
                    ep.name, ep.value, "entry point is not an osteomics Plugin object", group, dist
                )
            )
            continue
        if obj.kind != kind:
            failures.append(
                PluginLoadFailure(
                    ep.name,
                    ep.value,
                    f"a {obj.kind!r} plugin registered under {group!r}; register it under "
                    f"{KIND_GROUPS.get(obj.kind, 'the group of its kind')!r}",
                    group,
                    dist,
                )
            )
            continue
        plugins.append(obj)
        dists.append((obj.name, dist))
    plugins.sort(key=lambda p: (p.priority, p.name))
    return _Discovered(tuple(plugins), tuple(failures), tuple(dists))


@functools.cache
def _retired_entries() -> tuple[PluginLoadFailure, ...]:
    groups = ", ".join(KIND_GROUPS.values())
    return tuple(
        PluginLoadFailure(
            ep.name,
            ep.value,
            f"registered under the retired group {RETIRED_GROUP!r}; register it under the group "
            f"of its kind ({groups})",
            RETIRED_GROUP,
            distribution_of(ep),
        )
        for ep in entry_points(group=RETIRED_GROUP)
    )


def discover_plugins(kind: str | None = None) -> tuple[list[Plugin], list[PluginLoadFailure]]:
    """Find the plugins of one kind (importing only those), or of every kind.

    Parameters
    ----------
    kind:
        ``slide_reader``, ``pacs_connector``, ``exporter`` or ``weight_source``: only the entry
        points of that kind's group are imported. ``None``: every kind (``osteomics plugins``);
        this also reports entries left under the retired group ``osteomics.plugins``. An unknown
        kind has no plugins.

    Returns
    -------
    plugins, failures:
        Plugins sorted by (priority, name); entry points that could not be used, with the reason.
        Both are fresh lists over a per-process cache.
    """
    if kind is not None and kind not in KIND_GROUPS:
        return [], []
    plugins: list[Plugin] = []
    failures: list[PluginLoadFailure] = []
    for k in [kind] if kind is not None else list(KIND_GROUPS):
        found = _discover_kind(k)
        plugins.extend(found.plugins)
        failures.extend(found.failures)
    if kind is None:
        failures.extend(_retired_entries())
        plugins.sort(key=lambda p: (p.priority, p.name))
    return plugins, failures


def plugin_distribution(plugin: Plugin) -> tuple[str, str]:
    """``(name, version)`` of the distribution that registers ``plugin`` (``("", "")`` when
    unknown, e.g. a plugin that discovery did not find)."""
    if plugin.kind not in KIND_GROUPS:
        return ("", "")
    return dict(_discover_kind(plugin.kind).distributions).get(plugin.name, ("", ""))


def clear_plugin_cache() -> None:
    """Forget what discovery found (after installing a plugin in a running process; tests)."""
    _discover_kind.cache_clear()
    _retired_entries.cache_clear()
