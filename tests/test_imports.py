"""The import graph of ``src/relayml`` has no circle and points downward only.

The layers, bottom to top (docs/ARCHITECTURE.md draws them): the vocabulary, the MLflow
boundary, the domain, the engines, the services, and the CLI and web pages on top. A module
imports modules of its own layer or below. Every import counts, at module level, inside
functions and under ``TYPE_CHECKING`` alike: an import moved into a function to dodge a circle
is still a circle. The package's own ``__init__`` is left out (it names modules as strings
and imports them lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph() -> dict[str, set[str]]:
    """``{module: {relayml modules it imports}}`` for every module of the package."""
    modules = {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (SRC / "relayml").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == "relayml":
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m not in (name, "relayml")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# layer of every module, by the longest matching name prefix (a new module must be placed)
LAYERS: dict[str, tuple[int, str]] = {
    **{
        m: (0, "vocabulary")
        for m in (
            "relayml.errors",
            "relayml.tags",
            "relayml.keys",
            "relayml.config",
            "relayml.redaction",
            "relayml.codeinfo",
            "relayml.usercache",
        )
    },
    **{m: (1, "MLflow boundary") for m in ("relayml.store", "relayml.readstore")},
    **{
        m: (2, "domain")
        for m in (
            "relayml.steps",
            "relayml.pipeline",
            "relayml.checks",
            "relayml.check_keys",
            "relayml.data",
            "relayml.data_digest",
            "relayml.data_sources",
            "relayml.data_summary",
            "relayml.data_rowhash",
            "relayml.datadiff",
            "relayml.datadrift",
            "relayml.fingerprint",
            "relayml.outputs",
            "relayml.trust",
            "relayml.lineage",
            "relayml.runs",
            "relayml.bundle",
            "relayml.bundle_child",
            "relayml.bundle_compile",
            "relayml.bundle_load",
            "relayml.bundle_log",
            "relayml.bundle_proof",
            "relayml.bundle_requirements",
            "relayml.bundle_runtime",
            "relayml.bundle_trust",
        )
    },
    **{
        m: (3, "engines")
        for m in (
            "relayml.runner",
            "relayml.request",
            "relayml.context",
            "relayml.runstart",
            "relayml.runfinish",
            "relayml.claims",
            "relayml.chain",
            "relayml.chain_links",
            "relayml.chain_result",
            "relayml.cluster",
        )
    },
    **{
        m: (4, "services")
        for m in (
            "relayml.lifecycle",
            "relayml.serving",
            "relayml.executor",
            "relayml.scaffold",
        )
    },
    **{m: (5, "interfaces") for m in ("relayml.cli", "relayml.ui", "relayml.__main__")},
}


def layer(module: str) -> tuple[int, str]:
    """The layer of ``module``: the entry of its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:n]))
        if found:
            return found
    raise KeyError(f"{module} has no layer: add it to LAYERS in tests/test_imports.py")


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module of a higher layer, as ``"a (layer) -> b (layer)"``."""
    return sorted(
        f"{a} ({layer(a)[1]}) -> {b} ({layer(b)[1]})"
        for a, targets in graph.items()
        for b in targets
        if layer(b)[0] > layer(a)[0]
    )


def test_every_import_points_down_the_layers() -> None:
    graph = import_graph()
    assert [m for m in graph if m != "relayml" and not _placed(m)] == []
    assert upward(graph) == []


def _placed(module: str) -> bool:
    try:
        layer(module)
    except KeyError:
        return False
    return True


def test_an_upward_import_is_found() -> None:
    assert upward({"relayml.store": {"relayml.runs"}, "relayml.runs": {"relayml.store"}}) == [
        "relayml.store (MLflow boundary) -> relayml.runs (domain)"
    ]


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert "relayml.runner" in graph and "relayml.runs" in graph["relayml.runner"]
    assert cycles(graph) == []


def test_a_circle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
