"""Server-side time of relay ui's pages, and the nodes they draw, on stores of growing size.

Stores of 1,000, 10,000 and 100,000 relay-shaped runs are bulk-written by storefill.py into
SQLite, in a "hub" shape: few load runs, each consumed by hundreds of processing runs (the
worst case for a lineage drawing). For each store it renders, in this process and through
the same functions the web app calls:

- the project page;
- the lineage page of the load run with the most consumers, and of its data version;
- the compare page of two training chains;

20 times each after one warm-up, and prints the median and p95 in ms and the SVG nodes
drawn. The anchor, measured in the same run on the same run: ``relay lineage``'s full
upstream/downstream trees (``relayml.chain.lineage``), i.e. what an uncapped drawing would
have to show, with its size in runs and its time.

Example:
    python bench/ui.py --sizes 1000,10000,100000 --repeat 20
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import storefill

HUB = {
    "load": ([], ["transactions", "customers"], 0.002),
    "processing": (["load"], ["plain", "robust", "pca"], 0.3),
    "training": (["processing"], ["logreg", "rf", "hgb"], 0.698),
}


def _times(fn, repeat: int) -> tuple[float, float, str]:
    out = fn()  # warm-up (imports, templates, MLflow's first queries)
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    p95 = samples[min(len(samples), math.ceil(0.95 * len(samples))) - 1]
    return statistics.median(samples), p95, out


def _tree_size(node: dict) -> int:
    return 1 + sum(_tree_size(c) for c in node["children"])


def _inherit_data_versions(uri: str) -> None:
    """storefill gives every run a random data version; relay's later steps carry their load
    run's. Copy it down the chain, so a data version's page has the runs it would have."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    with engine.begin() as con:
        for step in ("load", "processing"):
            con.execute(
                sa.text(
                    "UPDATE tags SET value = (SELECT d.value FROM tags up JOIN tags d"
                    " ON d.run_uuid = up.value AND d.key = 'relay.data'"
                    " WHERE up.run_uuid = tags.run_uuid AND up.key = :up)"
                    " WHERE key = 'relay.data' AND run_uuid IN"
                    " (SELECT run_uuid FROM tags WHERE key = :up)"
                ),
                {"up": f"relay.upstream.{step}"},
            )
    engine.dispose()


def measure(size: int, repeat: int, folder: Path, anchor_up_to: int) -> list[tuple]:
    from relayml.chain import lineage
    from relayml.config import Settings
    from relayml.store import get_store
    from relayml.ui.pages import Pages
    from relayml.ui.queries import Queries

    uri = f"sqlite:///{folder / f'ui-{size}.db'}"
    settings = Settings.from_dict(
        {"project": {"name": "bench"}, "tracking": {"uri": uri}}, root=folder
    )
    _ = get_store(settings).client  # MLflow's schema and relay's indexes (the client is lazy)
    storefill.STEPS = HUB
    t = time.perf_counter()
    filled = storefill.fill(uri, size)
    _inherit_data_versions(uri)
    built = time.perf_counter() - t
    q = Queries(settings)
    pages = Pages(q)
    store = get_store(settings)
    found = store.tagged(
        ["processing"], "relay.upstream.load", filled.runs["load"][:50], limit=1, cap=100_000
    )
    consumers = {load_id: total for load_id, (_, total) in found.items()}
    hub = q.by_id(max(consumers, key=consumers.get))
    trains = [q.by_id(i) for i in filled.runs["training"][-2:]]
    rows = []
    cases = {
        "project": pages.project,
        "lineage (run)": lambda: pages.lineage(str(hub.key)),
        "lineage (data version)": lambda: pages.data(hub.data_version),
        "compare (two chains)": lambda: pages.compare(str(trains[0].key), str(trains[1].key)),
    }
    for name, fn in cases.items():
        med, p95, html = _times(fn, repeat)
        nodes = len(re.findall(r'<g class="node ', html))
        rows.append((size, name, med, p95, nodes))
    if size <= anchor_up_to:  # once: it takes seconds to minutes
        t = time.perf_counter()
        tree = lineage(hub, depth=20)
        anchor = (time.perf_counter() - t) * 1000
        full = _tree_size(tree.upstream) + _tree_size(tree.downstream) - 1
        name = "anchor: relay lineage trees of the run (uncapped, 1 call)"
        rows.append((size, name, anchor, anchor, full))
    print(f"  store of {size:,} runs built in {built:.1f} s; hub load run has "
          f"{consumers[hub.run_id]} consumers", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--anchor-up-to", type=int, default=10_000, help="largest store to time the anchor on"
    )
    args = parser.parse_args()
    print("| runs | page | median ms | p95 ms | SVG nodes |")
    print("|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="relay-bench-ui-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for runs, name, med, p95, nodes in measure(
                size, args.repeat, Path(tmp), args.anchor_up_to
            ):
                print(f"| {runs:,} | {name} | {med:.1f} | {p95:.1f} | {nodes} |", flush=True)


if __name__ == "__main__":
    main()
