"""Lineage: the upstream and downstream trees of a run (``relay lineage``, ``Run.lineage()``).

Domain layer, below :mod:`relayml.runs`: it walks what a run object offers (``upstream``,
``downstream``, ``upstream_ids``, ``tags``, ``store``) and asks the store for the chain records
that name the run. It imports neither the runs module (which calls it) nor any engine.

Example:
    >>> tree = run_lineage(relay.get("training/logreg@latest"))  # doctest: +SKIP
    >>> tree.keys("upstream")[:2]  # doctest: +SKIP
    ['training/logreg@20190210094501', 'processing/plain@20190209101500']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relayml import tags as tag
from relayml.store import quote

Run = Any  # a relayml.runs.Run; not imported: the runs module imports this one

__all__ = ["Lineage", "run_lineage"]


@dataclass
class Lineage:
    """The upstream tree and the downstream tree of a run.

    Each tree node is a dict ``{"key", "run_id", "status", "children": [...]}``; upstream
    children are the runs a run consumed, downstream children the runs that consumed it.

    Example:
        >>> lin = relay.get("training/logreg@latest").lineage()  # doctest: +SKIP
        >>> [n["key"] for n in lin.upstream["children"]]  # doctest: +SKIP
        ['processing/plain@20190209101500']
    """

    run: Run
    upstream: dict[str, Any]
    downstream: dict[str, Any]
    chains: list[str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``relay lineage --json`` prints)."""
        return {"upstream": self.upstream, "downstream": self.downstream, "chains": self.chains}

    def keys(self, direction: str = "upstream") -> list[str]:
        """Every key of one tree, depth first (the run itself first)."""
        out: list[str] = []

        def walk(node: dict[str, Any]) -> None:
            out.append(node["key"])
            for child in node["children"]:
                walk(child)

        walk(self.upstream if direction == "upstream" else self.downstream)
        return out


def _node(run: Run, **extra: Any) -> dict[str, Any]:
    return {
        "key": str(run.key),
        "run_id": run.run_id,
        "step": run.step,
        "status": run.status,
        "data_version": run.data_version,
        **extra,
        "children": [],
    }


def run_lineage(run: Run, *, depth: int = 20) -> Lineage:
    """The upstream and downstream trees of a run, and the chain records that name it.

    Args:
        run: the run (a :class:`relayml.runs.Run`).
        depth: how deep to walk each way.

    Example:
        >>> run_lineage(relay.get("processing/plain@latest")).keys("downstream")  # doctest: +SKIP
        ['processing/plain@20190209101500', 'training/logreg@20190210094501']
    """

    def up(r: Run, d: int) -> dict[str, Any]:
        node = _node(r)
        if d < depth:
            recorded = r.upstream_ids
            present = r.upstream
            for step in sorted(recorded):
                if step in present:
                    node["children"].append(up(present[step], d + 1))
                else:
                    key = r.tags.get(tag.upstream_key(step), recorded[step])
                    node["children"].append(
                        {"key": key, "run_id": recorded[step], "step": step,
                         "status": "DELETED", "children": []}
                    )  # fmt: skip
        return node

    def down(r: Run, d: int, seen: frozenset[str]) -> dict[str, Any]:
        node = _node(r)
        if d < depth:
            for child in sorted(r.downstream, key=lambda x: (x.step, x.started)):
                if child.run_id not in seen:
                    node["children"].append(down(child, d + 1, seen | {child.run_id}))
        return node

    store = run.store
    found = store.search(
        [tag.CHAINS_EXPERIMENT],
        f"tags.`{tag.chain_step(run.step)}` = {quote(run.run_id)}",
        limit=20,
    )
    chains = [e.info.run_id for e in found]
    return Lineage(run, up(run, 0), down(run, 0, frozenset({run.run_id})), chains)
