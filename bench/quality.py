"""Benchmark: the cost of a data version's summary and checks, and ``relay diff`` vs pandas.

1. **Snapshot with summary + checks vs without.** The fraud table shape (``id``, ``Time``,
   ``V1``..``V28``, ``Amount``, ``Class``, ``ts``) streamed from PostgreSQL into a Parquet
   snapshot with its digest (``relayml.data.snapshot_query``), once as before and once with
   the streaming :class:`~relayml.data_summary.Summarizer` and the example's checks
   (min_rows, not_null on every feature, unique id, ranges, schema) observing every batch
   (as the runner does: the checks read each batch's summary statistics; the observer runs
   one batch behind the writer in a worker thread).
   Targets: at most 15 % slower, peak memory within 10 %.
2. **relay diff vs pandas.** Two versions of the table that differ in 1 % of rows (a third
   removed, a third changed, a third added), compared by ``relayml.datadiff.diff_files``
   (DuckDB over the two Parquet files: counts, examples, schema and per-column drift)
   against pandas: ``read_parquet`` both, ``merge`` on the key, compare every column.
   Targets: at least 5x faster, at most a quarter of pandas' peak memory.

Each measurement runs in a fresh subprocess (its own peak RSS, ``VmHWM``); medians of
``--repeat`` runs. The PostgreSQL table is generated once (COPY) and cached by
``bench/snapshot.py``'s helpers; the Parquet versions are cached in ``--cache-dir``.

Usage:
    python bench/quality.py --rows 2000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from snapshot import _rss_mb, ensure_postgres

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]


def _query(table: str) -> str:
    # the bench table has no id: Time is 0, 1, 2, ... so its integer value is a unique key
    return f'SELECT CAST("Time" AS BIGINT) AS id, * FROM {table}'


def _checks():
    import relayml

    return relayml.checks(
        min_rows=1,
        not_null=[*FEATURES, "Class"],
        unique=["id"],
        ranges={"Amount": (0, None), "Class": (0, 1)},
        schema={"id": "int", "ts": "timestamp", "Amount": "float", "Class": "int"},
    )


def measure_snapshot(mode: str, url: str, table: str, out: Path) -> dict:
    import relayml.data as data
    from relayml.checks import Checker
    from relayml.data_summary import Summarizer

    start = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    observe = None
    if mode == "summary+checks":
        summarizer, checker = Summarizer(), Checker(_checks(), key=["id"])

        def observe(batch):
            checker.update(batch, summarizer.update(batch))

    snap = data.snapshot_query(url, _query(table), {}, out, observe=observe)
    ok = None
    if observe is not None:
        summary = summarizer.result()
        ok = checker.finish(summary, snap.path).ok
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "peak_rss_mb": _rss_mb(),
        "start_rss_mb": start,
        "rows": snap.rows,
        "checks_ok": ok,
    }


def measure_diff(mode: str, a: Path, b: Path) -> dict:
    import numpy as np
    import pandas as pd

    start = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "relay":
        from relayml.datadiff import diff_files

        d = diff_files(a, b, key=["id"])
        counts = (d.added, d.removed, d.changed)
    else:
        left, right = pd.read_parquet(a), pd.read_parquet(b)
        m = left.merge(right, on="id", how="outer", suffixes=("_a", "_b"), indicator=True)
        both = m[m["_merge"] == "both"]
        changed = np.zeros(len(both), bool)
        for c in left.columns:
            if c == "id":
                continue
            x, y = both[f"{c}_a"], both[f"{c}_b"]
            changed |= ~((x == y) | (x.isna() & y.isna())).to_numpy()
        counts = (
            int((m["_merge"] == "right_only").sum()),
            int((m["_merge"] == "left_only").sum()),
            int(changed.sum()),
        )
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "peak_rss_mb": _rss_mb(),
        "start_rss_mb": start,
        "counts": counts,
    }


def ensure_versions(snapshot: Path, cache: Path, rows: int) -> tuple[Path, Path]:
    """Version B: version A less 1/3 % of rows, 1/3 % changed, 1/3 % new (1 % in all)."""
    import duckdb

    b = cache / f"quality_b_{rows}.parquet"
    a = cache / f"quality_a_{rows}.parquet"
    if a.exists() and b.exists():
        return a, b
    cache.mkdir(parents=True, exist_ok=True)
    src = str(snapshot).replace("'", "''")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_parquet('{src}')) TO '{a}' (FORMAT parquet)")
    cols = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{src}')").fetchall()
    select = ", ".join(
        'CASE WHEN id % 300 = 1 THEN "Amount" + 1 ELSE "Amount" END AS "Amount"'
        if name == "Amount"
        else f'"{name}"'
        for name, *_ in cols
    )
    added = ", ".join("id + 100000000 AS id" if n == "id" else f'"{n}"' for n, *_ in cols)
    con.execute(
        f"""COPY (
            SELECT {select} FROM read_parquet('{src}') WHERE id % 300 <> 0
            UNION ALL SELECT {added} FROM read_parquet('{src}') WHERE id % 300 = 2
        ) TO '{b}' (FORMAT parquet)"""
    )
    con.close()
    return a, b


def child(args: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"{args} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RELAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "relay-bench")
    p.add_argument("--skip-diff", action="store_true", help="measure the snapshots only")
    p.add_argument("--snapshot", help=argparse.SUPPRESS)
    p.add_argument("--diff", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--a", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--b", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.snapshot:
        print(json.dumps(measure_snapshot(a.snapshot, a.pg_url, a.table, a.out)))
        return
    if a.diff:
        print(json.dumps(measure_diff(a.diff, a.a, a.b)))
        return

    table = ensure_postgres(a.pg_url, a.rows)
    snaps: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "snap.parquet"
        for i in range(a.repeat):
            for mode in ("plain", "summary+checks"):
                r = child(["--snapshot", mode, "--table", table, "--out", str(out),
                           "--pg-url", a.pg_url])  # fmt: skip
                snaps.setdefault(mode, []).append(r)
                print(f"  snapshot {i + 1}/{a.repeat} {mode:15} {r['seconds']:6.2f} s "
                      f"peak {r['peak_rss_mb']:6.0f} MB", file=sys.stderr)  # fmt: skip
        va, vb = ensure_versions(out, a.cache_dir, a.rows)
    diffs: dict[str, list[dict]] = {}
    for i in range(0 if a.skip_diff else a.repeat):
        for mode in ("relay", "pandas"):
            r = child(["--diff", mode, "--a", str(va), "--b", str(vb)])
            diffs.setdefault(mode, []).append(r)
            print(f"  diff {i + 1}/{a.repeat} {mode:7} {r['seconds']:6.2f} s "
                  f"peak {r['peak_rss_mb']:6.0f} MB {r['counts']}", file=sys.stderr)  # fmt: skip

    def med(results: dict[str, list[dict]], mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(f"\nrows: {a.rows:,}   repeat: {a.repeat} (medians)   source: PostgreSQL")
    print(f"{'snapshot':16} {'seconds':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for mode in snaps:
        secs, cpu = med(snaps, mode, "seconds"), med(snaps, mode, "cpu_seconds")
        print(f"{mode:16} {secs:8.2f} {cpu:8.2f} {med(snaps, mode, 'peak_rss_mb'):12.0f}")
    for what in ("seconds", "cpu_seconds"):
        ratio = med(snaps, "summary+checks", what) / med(snaps, "plain", what) - 1
        print(f"summary+checks: {ratio:+.1%} {what} (target <= +15%)")
    more = med(snaps, "summary+checks", "peak_rss_mb") / med(snaps, "plain", "peak_rss_mb") - 1
    print(f"summary+checks: {more:+.1%} peak memory (target within 10%)")
    if not diffs:
        return
    print(f"\n{'diff (1% of rows)':17} {'seconds':>8} {'CPU s':>8} {'peak RSS MB':>12}  "
          "added/removed/changed")  # fmt: skip
    for mode in diffs:
        secs, cpu = med(diffs, mode, "seconds"), med(diffs, mode, "cpu_seconds")
        print(f"{mode:17} {secs:8.2f} {cpu:8.2f} "
              f"{med(diffs, mode, 'peak_rss_mb'):12.0f}  {diffs[mode][0]['counts']}")  # fmt: skip
    for what in ("seconds", "cpu_seconds"):
        speed = med(diffs, "pandas", what) / med(diffs, "relay", what)
        print(f"relay diff: {speed:.1f}x faster than pandas in {what} (target >= 5x)")
    mem = med(diffs, "relay", "peak_rss_mb") / med(diffs, "pandas", "peak_rss_mb")
    print(f"relay diff: {mem:.2f} of pandas' peak memory (target <= 0.25)")


if __name__ == "__main__":
    main()
