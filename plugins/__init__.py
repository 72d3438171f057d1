"""Plugins: adapters to the outside world (slide readers, PACS connectors, exporters).

The plugin contract (:class:`Plugin`) and discovery live on the ground floor, in
:mod:`osteomics.core.plugins`, so that the rooms can find their plugins without importing this
layer; they are re-exported here for third parties. Every plugin, built-in or third-party, is a
:class:`Plugin` object published under the entry-point group of its kind::

    [project.entry-points."osteomics.slide_readers"]      # kind "slide_reader"
    myreader = "mypackage.reader:plugin"

Groups: ``osteomics.slide_readers`` (factory: a :class:`osteomics.wsi.slide.Slide` subclass),
``osteomics.pacs_connectors`` (factory: called as ``factory(config, timeout_s=...)``),
``osteomics.exporters`` and ``osteomics.weight_sources``.
"""

from __future__ import annotations

from osteomics.core.plugins import (
    KIND_GROUPS,
    Plugin,
    PluginLoadFailure,
    clear_plugin_cache,
    discover_plugins,
    missing_requirements,
    plugin_distribution,
)

__all__ = [
    "KIND_GROUPS",
    "Plugin",
    "PluginLoadFailure",
    "clear_plugin_cache",
    "discover_plugins",
    "missing_requirements",
    "plugin_distribution",
]
