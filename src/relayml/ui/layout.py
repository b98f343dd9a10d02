"""Layered graph layout for the lineage page: pure geometry, no I/O, no relayml imports.

Nodes sit in columns (one per pipeline step, data versions first, registered versions last);
inside a column they are ordered by the mean position of their neighbours in the column
before (then after), ties broken by their sort key, so the same graph always gets the same
picture whatever order its nodes arrive in. Edges are cubic curves from the right side of
one node to the left side of the other.

Example:
    >>> lay = layout([LNode("a", 0, "a"), LNode("b", 1, "b")], [("a", "b")])
    >>> lay.boxes["b"].x > lay.boxes["a"].x, len(lay.edges)
    (True, 1)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Box", "Edge", "LNode", "Layout", "layout"]

NODE_W = 250
NODE_H = 64
COL_GAP = 60
ROW_GAP = 16
MARGIN = 20


@dataclass(frozen=True)
class LNode:
    """A node to place: its id, its column, and the key that orders ties (e.g. its run key)."""

    id: str
    column: int
    sort_key: str


@dataclass(frozen=True)
class Box:
    """A placed node: top-left corner and size."""

    x: float
    y: float
    w: float = NODE_W
    h: float = NODE_H

    def overlaps(self, other: Box) -> bool:
        """Whether two boxes share any area."""
        return not (
            self.x + self.w <= other.x
            or other.x + other.w <= self.x
            or self.y + self.h <= other.y
            or other.y + other.h <= self.y
        )


@dataclass(frozen=True)
class Edge:
    """A drawn edge: its ends and the SVG path between them."""

    src: str
    dst: str
    path: str


@dataclass
class Layout:
    """The placed graph: boxes by node id, drawn edges, the picture's size, and the x of
    each column that holds a node."""

    boxes: dict[str, Box]
    edges: list[Edge]
    width: float
    height: float
    column_x: dict[int, float]


def layout(nodes: Sequence[LNode], edges: Iterable[tuple[str, str]]) -> Layout:
    """Place nodes in their columns and route every edge between two placed nodes.

    Args:
        nodes: the nodes; ids must be unique.
        edges: ``(src, dst)`` pairs; pairs naming an unknown node are an error.

    Raises:
        ValueError: a duplicate node id, or an edge to an unknown node.

    Example:
        >>> lay = layout([LNode("x", 0, "x"), LNode("y", 0, "y")], [])
        >>> [lay.boxes[n].y for n in "xy"]
        [20, 100]
    """
    by_id = {}
    for n in nodes:
        if n.id in by_id:
            raise ValueError(f"duplicate node id {n.id!r}")
        by_id[n.id] = n
    pairs = sorted(set(edges))
    for s, d in pairs:
        if s not in by_id or d not in by_id:
            raise ValueError(f"edge {s!r} -> {d!r} names a node that is not in the graph")
    columns: dict[int, list[str]] = defaultdict(list)
    for n in sorted(by_id.values(), key=lambda n: (n.column, n.sort_key, n.id)):
        columns[n.column].append(n.id)
    neighbours: dict[str, list[str]] = defaultdict(list)
    for s, d in pairs:
        neighbours[s].append(d)
        neighbours[d].append(s)
    order = [columns[c] for c in sorted(columns)]
    for sweep in (range(1, len(order)), range(len(order) - 2, -1, -1)):
        for i in sweep:
            ref = i - 1 if sweep.step == 1 else i + 1
            rank = {nid: r for r, nid in enumerate(order[ref])}
            order[i] = _by_barycenter(order[i], rank, neighbours)
    boxes: dict[str, Box] = {}
    height = 0.0
    column_x = {}
    for c, ids in enumerate(order):
        x = column_x[sorted(columns)[c]] = MARGIN + c * (NODE_W + COL_GAP)
        for r, nid in enumerate(ids):
            boxes[nid] = Box(x, MARGIN + r * (NODE_H + ROW_GAP))
        height = max(height, MARGIN * 2 + len(ids) * (NODE_H + ROW_GAP) - ROW_GAP)
    width = MARGIN * 2 + len(order) * (NODE_W + COL_GAP) - COL_GAP if order else 0
    drawn = [Edge(s, d, _curve(boxes[s], boxes[d])) for s, d in pairs]
    return Layout(boxes, drawn, max(width, 0), max(height, 0), column_x)


def _by_barycenter(
    ids: list[str], rank: dict[str, int], neighbours: dict[str, list[str]]
) -> list[str]:
    """Sort a column by the mean rank of each node's neighbours in the reference column;
    a node with none there keeps its place (scaled to the reference column's ranks)."""
    here = {nid: i for i, nid in enumerate(ids)}
    scale = max(len(rank) - 1, 1) / max(len(ids) - 1, 1)

    def weight(nid: str) -> tuple[float, int]:
        near = [rank[m] for m in neighbours[nid] if m in rank]
        centre = sum(near) / len(near) if near else here[nid] * scale
        return (centre, here[nid])

    return sorted(ids, key=weight)


def _curve(a: Box, b: Box) -> str:
    x1, y1 = a.x + a.w, a.y + a.h / 2
    x2, y2 = b.x, b.y + b.h / 2
    if x2 <= x1:  # same column or backwards: leave from the left side instead
        x1 = a.x
    bend = max(abs(x2 - x1) / 2, 30)
    return (
        f"M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
    )
