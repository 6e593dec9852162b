"""The import graph of ``src/clarion`` from the source text (AST), and the checks of ``test_layers.py``.

Every ``import`` / ``from ... import`` statement counts, wherever it stands: at module level,
inside a function (the lazy imports that used to hide cycles), under ``if TYPE_CHECKING``.
``from X import name`` is an edge to the module ``X.name`` when that is a module, else to ``X``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# bottom to top; a module may import from its own layer and the layers below it, never above
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["clarion.version", "clarion.files", "clarion.runtime", "clarion.config"]),
    ("audio", ["clarion.audio"]),
    ("data", ["clarion.data"]),
    ("ot", ["clarion.ot"]),
    ("models, objectives", ["clarion.objectives", "clarion.models"]),
    ("run directory", ["clarion.rundir"]),
    ("evaluate", ["clarion.evaluate"]),
    ("train", ["clarion.train"]),
    ("experiments", ["clarion.synth", "clarion.compare", "clarion.report"]),
    ("api, serve", ["clarion.api", "clarion.bulk", "clarion.serve", "clarion.export"]),
    ("cli, package façade", ["clarion.cli", "clarion"]),
]


def module_sources(root: Path = SRC) -> dict[str, str]:
    """``{dotted module name: source text}`` of every ``.py`` file of the ``clarion`` package."""
    sources = {}
    for path in sorted((root / "clarion").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources


def _is_package(name: str, sources: dict[str, str]) -> bool:
    return any(m.startswith(name + ".") for m in sources)


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (see the module docstring)."""
    graph = {}
    for module, text in sources.items():
        package = module.split(".") if _is_package(module, sources) else module.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "clarion")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.split(".")[0] != "clarion":
                    continue
                for alias in node.names:
                    full = f"{name}.{alias.name}"
                    deps.add(full if full in sources else name)
        graph[module] = {d for d in deps if d != module}
    return graph


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix that names ``module`` or a package above it."""
    best, length = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = i, len(prefix)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/layering.py")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer, as ``importer (layer) -> imported (layer)``."""
    return sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) -> {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (~120)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)
