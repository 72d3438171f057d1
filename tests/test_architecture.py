"""The house plan, checked against the code's own imports (docs/ARCHITECTURE.md).

Layers, bottom to top: core -> (wsi | radiology) -> fusion -> plugins -> cli. No module imports
a layer above its own; wsi and radiology never import each other; fusion imports only core
(it reads result tables); nothing imports cli. And no two modules import each other, directly
or round a longer cycle. Every import counts, including those inside functions and under
``TYPE_CHECKING``: an import that is deferred is still a dependency.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "osteomics"
#: Folders of the repository root that are not package code.
NOT_PACKAGE = {"tests", "bench", "docs", "build", ".venv", ".typecheck", ".git", ".ci"}

#: What each layer may import (besides itself). The root module (``osteomics``: the version
#: and OsteomicsError) is below everything.
ALLOWED: dict[str, set[str]] = {
    "root": set(),
    "core": {"root"},
    "wsi": {"root", "core"},
    "radiology": {"root", "core"},
    "fusion": {"root", "core"},
    "plugins": {"root", "core", "wsi", "radiology", "fusion"},
    "cli": {"root", "core", "wsi", "radiology", "fusion", "plugins"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_PACKAGE or any(p.startswith(".") for p in rel.parts):
            continue
        modules[module_name(path)] = path
    return modules


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def imports_of(path: Path, module: str, known: set[str]) -> Iterator[tuple[str, int]]:
    """The osteomics modules that ``module`` imports (resolved to modules that exist), with
    the line of each import."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield closest(alias.name, known), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # `from osteomics.wsi import slide` imports a module; `from x import name` not
                yield (sub if sub in known else closest(target, known)), node.lineno


def closest(name: str, known: set[str]) -> str:
    """``name`` or the nearest enclosing module that exists."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def import_graph() -> dict[str, dict[str, int]]:
    modules = package_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for target, line in imports_of(path, module, known):
            if target != module:
                edges.setdefault(target, line)
    return graph


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    found = []
    for module, edges in graph.items():
        for target, line in edges.items():
            src, dst = layer(module), layer(target)
            if src != dst and dst not in ALLOWED[src]:
                found.append(f"{module}:{line} imports {target} ({src} -> {dst})")
    return sorted(found)


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each with one cycle
    through it spelled out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_through(c, graph) for c in components]


def cycle_through(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One cycle a -> b -> ... -> a inside a strongly connected component (breadth-first)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in graph[v]:
            if w == start:
                return [*paths[v], start]
            if w in members and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return component


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


# -- the checker itself, on small graphs with known answers --------------------------------
def test_the_checker_finds_upward_imports_and_cycles() -> None:
    graph = {
        "osteomics.core.a": {"osteomics.wsi.b": 3},
        "osteomics.wsi.b": {"osteomics.wsi.c": 1, "osteomics.radiology.d": 2},
        "osteomics.wsi.c": {"osteomics.wsi.b": 4},
        "osteomics.radiology.d": {},
        "osteomics.fusion.e": {"osteomics.core.a": 1, "osteomics.cli.f": 2},
        "osteomics.cli.f": {"osteomics.plugins.g": 1},
        "osteomics.plugins.g": {"osteomics.wsi.b": 1},
    }
    assert upward_imports(graph) == [
        "osteomics.core.a:3 imports osteomics.wsi.b (core -> wsi)",
        "osteomics.fusion.e:2 imports osteomics.cli.f (fusion -> cli)",
        "osteomics.wsi.b:2 imports osteomics.radiology.d (wsi -> radiology)",
    ]
    cycles = import_cycles(graph)
    assert cycles == [["osteomics.wsi.b", "osteomics.wsi.c", "osteomics.wsi.b"]]
    assert describe(cycles[0], graph) == (
        "osteomics.wsi.b (line 1) -> osteomics.wsi.c (line 4) -> osteomics.wsi.b"
    )


def test_the_checker_reads_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import osteomics.core.files\n"
        "from osteomics.wsi import slide\n"
        "from . import sibling\n"
        "def f():\n"
        "    from osteomics.radiology.store import DicomStore\n"
        "if TYPE_CHECKING:\n"
        "    from ..fusion import x\n"
    )
    known = {
        "osteomics",
        "osteomics.core.files",
        "osteomics.wsi",
        "osteomics.wsi.slide",
        "osteomics.plugins",
        "osteomics.plugins.sibling",
        "osteomics.radiology.store",
        "osteomics.fusion",
    }
    found = sorted(imports_of(source, "osteomics.plugins.m", known))
    assert found == [
        ("osteomics.core.files", 2),
        ("osteomics.fusion", 8),
        ("osteomics.plugins.sibling", 4),
        ("osteomics.radiology.store", 6),
        ("osteomics.wsi.slide", 3),
    ]


# -- the house -------------------------------------------------------------------------------
def test_the_graph_covers_the_package() -> None:
    graph = import_graph()
    assert {layer(m) for m in graph} >= {"root", "core", "wsi", "radiology", "plugins", "cli"}
    assert "osteomics.cli.main" in graph and "osteomics.core.plugins" in graph
    # the rooms find their plugins on the ground floor, not through the plugins layer
    assert "osteomics.core.plugins" in graph["osteomics.wsi.slide"]


def test_no_room_imports_a_room_above_it() -> None:
    found = upward_imports(import_graph())
    if found:
        pytest.fail("imports against the house plan:\n" + "\n".join(found))


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = import_cycles(graph)
    if cycles:
        pytest.fail("import cycles:\n" + "\n".join(describe(c, graph) for c in cycles))
