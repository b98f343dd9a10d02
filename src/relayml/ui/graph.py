"""The lineage neighbourhood of a run or a data version, as nodes and edges to lay out.

A store of 100,000 runs cannot be drawn; a run's neighbourhood can: its ancestors, what
consumed it (and what consumed those), the other runs that reused its ancestors, the data
versions at the start and the registered versions at the end. Every fan-out is capped; what
is left out becomes one "+N more" node per parent, so the picture never exceeds
:data:`MAX_NODES` whatever the store's size.

Example:
    >>> g = run_graph(Queries(settings), run)  # doctest: +SKIP
    >>> len(g.nodes) <= MAX_NODES  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relayml.runs import Run
from relayml.ui.layout import Layout, LNode, layout
from relayml.ui.queries import Queries

__all__ = ["MAX_NODES", "GNode", "Graph", "data_graph", "headline", "run_graph"]

MAX_NODES = 200
FAN_OUT = 12  # consumers shown per run; the rest is counted
SIBLINGS = 6  # other consumers shown per ancestor
COUNT_UP_TO = 500


@dataclass
class GNode:
    """A node of the lineage graph.

    Attributes:
        id: unique in the graph (a run id, ``data:DIGEST``, ``model:VERSION``, ``more:...``).
        kind: ``run``, ``data``, ``model`` or ``more``.
        column: 0 for data versions, 1.. for steps in pipeline order, last for the registry.
        title: the first line (a run key, a digest, "version 3").
        lines: further lines (params, headline metric, aliases, a count).
        status: FINISHED, FAILED, KILLED, RUNNING, STALE, or "" for non-runs.
        href: the page a click opens.
        selected: the run (or data version) the graph is about.
    """

    id: str
    kind: str
    column: int
    title: str
    lines: list[str] = field(default_factory=list)
    status: str = ""
    href: str = ""
    selected: bool = False
    sort_key: str = ""


@dataclass
class Graph:
    """Nodes, edges (``(src, dst, reused)``), the runs drawn by id, and their layout."""

    nodes: dict[str, GNode]
    edges: list[tuple[str, str, bool]]
    steps: list[str]
    runs: dict[str, Run] = field(default_factory=dict)
    placed: Layout | None = None

    def lay_out(self) -> Graph:
        """Place the nodes (see :mod:`relayml.ui.layout`); returns self."""
        lnodes = [LNode(n.id, n.column, n.sort_key or n.title) for n in self.nodes.values()]
        self.placed = layout(lnodes, [(s, d) for s, d, _ in self.edges])
        return self

    @property
    def reused(self) -> set[tuple[str, str]]:
        """The edges along which an existing run was reused rather than computed again."""
        return {(s, d) for s, d, r in self.edges if r}


def headline(metrics: dict[str, float], preferred: str | None = None) -> tuple[str, float] | None:
    """The metric a node shows: the preferred one, else the first ``test_*``, else the first.

    Example:
        >>> headline({"cv_auc": 0.9, "test_auc": 0.8})
        ('test_auc', 0.8)
    """
    if not metrics:
        return None
    if preferred and preferred in metrics:
        return preferred, metrics[preferred]
    names = sorted(metrics)
    name = next((n for n in names if n.startswith("test")), names[0])
    return name, metrics[name]


class _Builder:
    def __init__(self, q: Queries, metric: str | None) -> None:
        self.q = q
        self.registry = q.registry()
        self.metric = metric or self.registry[2]
        self.steps = q.steps()
        self.column = {s: i + 1 for i, s in enumerate(self.steps)}
        self.nodes: dict[str, GNode] = {}
        self.runs: dict[str, Run] = {}
        self.edges: set[tuple[str, str]] = set()

    def full(self) -> bool:
        return len(self.nodes) >= MAX_NODES - 2

    def add_run(self, run: Run, *, selected: bool = False) -> bool:
        if run.run_id in self.nodes:
            return True
        if self.full() or run.step not in self.column:
            return False
        lines = [", ".join(f"{k}={v}" for k, v in sorted(run.params.items())[:3])]
        top = headline(run.metrics, self.metric)
        if top:
            lines.append(f"{top[0]} {top[1]:.4g}")
        self.nodes[run.run_id] = GNode(
            run.run_id,
            "run",
            self.column[run.step],
            str(run.key),
            [x for x in lines if x],
            run.status,
            f"/relay/run/{run.key}",
            selected,
            run.key.time + str(run.key),
        )
        self.runs[run.run_id] = run
        return True

    def add_more(self, parent: str, column: int, count: int, capped: bool, what: str) -> None:
        nid = f"more:{parent}:{column}"
        label = f"+{count}{'+' if capped else ''} more"
        self.nodes[nid] = GNode(nid, "more", column, label, [what], sort_key="~")
        self.edges.add((parent, nid) if self._column_of(parent) < column else (nid, parent))

    def _column_of(self, nid: str) -> int:
        return self.nodes[nid].column

    def consumers(self, runs: list[Run], shown: int) -> list[Run]:
        """Add up to ``shown`` consumers of each run, the rest as a count; the added ones."""
        added = []
        for rid, (found, total) in self.q.consumers(runs, shown, count_up_to=COUNT_UP_TO).items():
            new = [r for r in found if self.add_run(r)]
            added += new
            if total > len(new) and not self.full():
                column = min((self.column.get(r.step, 0) for r in found), default=0)
                column = column or self._column_of(rid) + 1
                self.add_more(rid, column, total - len(new), total >= COUNT_UP_TO, "consumers")
        return added

    def finish(self, extra_edges: set[tuple[str, str]]) -> Graph:
        edges = set(self.edges) | extra_edges
        for rid, run in self.runs.items():
            for up in run.upstream_ids.values():
                if up in self.runs:
                    edges.add((up, rid))
        self._data_nodes(edges)
        self._model_nodes(edges)
        # an edge is a reuse when its upstream run had already been consumed before
        first: dict[str, float] = {}
        for s, d in sorted(edges, key=lambda e: self._start(e[1])):
            if s in self.runs and d in self.runs:
                first.setdefault(s, self._start(d))
        marked = [
            (s, d, s in self.runs and d in self.runs and self._start(d) > first[s])
            for s, d in sorted(edges)
        ]
        return Graph(self.nodes, marked, self.steps, self.runs).lay_out()

    def _start(self, nid: str) -> float:
        run = self.runs.get(nid)
        return run.started.timestamp() if run else 0.0

    def _data_nodes(self, edges: set[tuple[str, str]]) -> None:
        for rid, run in list(self.runs.items()):
            if run.upstream_ids or not run.data_version:
                continue
            nid = f"data:{run.data_version}"
            if nid not in self.nodes and len(self.nodes) < MAX_NODES:
                rows = self.q.snapshot_rows(run.data_version)
                self.nodes[nid] = GNode(
                    nid,
                    "data",
                    0,
                    f"data {run.data_version[:12]}",
                    ["data version" + (f", {rows:,} rows" if rows is not None else "")],
                    href=f"/relay/data/{run.data_version}",
                )
            if nid in self.nodes:
                edges.add((nid, rid))

    def _model_nodes(self, edges: set[tuple[str, str]]) -> None:
        aliases, versions, _ = self.registry
        by_version: dict[int, list[str]] = {}
        for alias, v in aliases.items():
            by_version.setdefault(v, []).append(alias)
        last = len(self.steps) + 1
        for v in versions:
            if v["run_id"] not in self.runs or self.full():
                continue
            nid = f"model:{v['version']}"
            names = sorted(by_version.get(v["version"], []))
            self.nodes[nid] = GNode(
                nid,
                "model",
                last,
                f"{self.q.settings.project} v{v['version']}",
                [("@" + ", @".join(names)) if names else "registered"],
                href=f"/relay/run/{self.runs[v['run_id']].key}",
                sort_key=f"{v['version']:09d}",
            )
            edges.add((v["run_id"], nid))


def run_graph(q: Queries, run: Run, *, metric: str | None = None) -> Graph:
    """The neighbourhood of a run: ancestors, descendants, reusers of its ancestors.

    Example:
        >>> run_graph(q, q.resolve("training/logreg@latest")).steps  # doctest: +SKIP
        ['load', 'processing', 'training']
    """
    b = _Builder(q, metric)
    b.add_run(run, selected=True)
    ancestors, frontier = [], [run]
    while frontier:
        nxt = []
        for r in frontier:
            for up in r.upstream.values():
                if up.run_id not in b.nodes and b.add_run(up):
                    ancestors.append(up)
                    nxt.append(up)
        frontier = nxt
    frontier = [run]
    for _ in b.steps:
        frontier = b.consumers(frontier, FAN_OUT) if frontier else []
    if ancestors:
        b.consumers(ancestors, SIBLINGS)
    return b.finish(set())


def data_graph(q: Queries, digest: str, *, metric: str | None = None) -> Graph:
    """The runs on one data version, step by step (capped per step, the rest counted).

    Example:
        >>> data_graph(q, "3f2a...").nodes["data:3f2a..."].selected  # doctest: +SKIP
        True
    """
    b = _Builder(q, metric)
    nid = f"data:{digest}"
    b.nodes[nid] = GNode(
        nid,
        "data",
        0,
        f"data {digest[:12]}",
        ["data version"],
        href=f"/relay/data/{digest}",
        selected=True,
    )
    per_step = max(4, min(2 * FAN_OUT, (MAX_NODES - 20) // max(len(b.steps), 1) // 2))
    for step in b.steps:
        found, total = q.on_data(digest, step, per_step, count_up_to=COUNT_UP_TO)
        shown = [r for r in found if b.add_run(r)]
        if total > len(shown):
            capped = total >= COUNT_UP_TO
            b.add_more(nid, b.column[step], total - len(shown), capped, f"{step} runs")
    return b.finish(set())


def node_count(graph: Graph) -> int:
    """How many nodes the graph draws."""
    return len(graph.nodes)


def as_json(graph: Graph) -> dict[str, Any]:
    """A JSON-ready view (keys, statuses and edges), for tests and scripts."""
    return {
        "nodes": [
            {"id": n.id, "kind": n.kind, "title": n.title, "status": n.status}
            for n in graph.nodes.values()
        ],
        "edges": [{"src": s, "dst": d, "reused": r} for s, d, r in graph.edges],
    }
