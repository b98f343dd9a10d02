"""Benchmark: the cost of a data version's summary and checks, and ``relay diff`` vs pandas.

1. **Snapshot with summary + checks vs without.** The fraud table shape (``id``, ``Time``,
   ``V1``..``V28``, ``Amount``, ``Class``, ``ts``) streamed from PostgreSQL into a Parquet
   snapshot with its digest (``relayml.data.snapshot_query``), once as before and once with
   the streaming :class:`~relayml.data_summary.Summarizer` and the example's checks
   (min_rows, not_null on every feature, unique id, ranges, schema) observing every batch
   (as the runner does: the checks read each batch's summary statistics; the observer runs
   one batch behind the writer in a worker thread), plus the row-hash sidecar on the key
   ``id`` (hashed in that same worker thread; :mod:`relayml.data_rowhash`).
   Targets: at most 15 % slower, peak memory within 10 %.
2. **relay diff vs pandas.** Two versions of the table that differ in 1 % of rows (a third
   removed, a third changed, a third added), each written by relay's snapshot writer with the
   key (``relayml.data.snapshot_file(..., key=["id"])``, so each has its row-hash sidecar),
   compared by ``relayml.datadiff.diff_files`` (counts from the two sidecars; examples,
   schema and per-column drift from the snapshots) against pandas on the same Parquet files:
   ``read_parquet`` both, ``merge`` on the key, compare every column. ``relay-bare`` is the
   same diff of the same files seen without their sidecars (symlinks in another folder: an
   old snapshot, a file from elsewhere), for reference.
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
    observe, key = None, ()
    if mode.startswith("summary+checks"):
        key = ("id",) if mode == "summary+checks+hash" else ()
        summarizer, checker = Summarizer(), Checker(_checks(), key=["id"])

        def observe(batch):
            checker.update(batch, summarizer.update(batch))

    snap = data.snapshot_query(url, _query(table), {}, out, observe=observe, key=key)
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
    if mode in ("relay", "relay-bare"):
        from relayml.datadiff import diff_files

        if mode == "relay-bare":
            a, b = a.parent / "bare" / a.name, b.parent / "bare" / b.name

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
    """Version B: version A less 1/3 % of rows, 1/3 % changed, 1/3 % new (1 % in all).

    Both written by relay's snapshot writer with the key, so each has its row-hash sidecar;
    ``cache/bare`` holds symlinks to them without sidecars.
    """
    import duckdb

    from relayml.data import snapshot_file
    from relayml.data_rowhash import sidecar_path

    folder = cache / f"quality_{rows}"
    a, b = folder / "a.parquet", folder / "b.parquet"
    if all(
        p.exists() for p in (a, b, sidecar_path(a), sidecar_path(b), folder / "bare" / "b.parquet")
    ):
        return a, b
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bare").mkdir(exist_ok=True)
    raw_a, raw_b = folder / "raw_a.parquet", folder / "raw_b.parquet"
    src = str(snapshot).replace("'", "''")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_parquet('{src}')) TO '{raw_a}' (FORMAT parquet)")
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
        ) TO '{raw_b}' (FORMAT parquet)"""
    )
    con.close()
    for raw, out in ((raw_a, a), (raw_b, b)):
        snapshot_file(raw, out, key=["id"])
        raw.unlink()
        bare = folder / "bare" / out.name
        bare.unlink(missing_ok=True)
        bare.symlink_to(out)
    return a, b


def child(args: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"{args} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_snapshots(a: argparse.Namespace, snaps: dict[str, list[dict]]) -> tuple[Path, Path]:
    """Snapshot the PostgreSQL table in each mode (into ``snaps``); returns the two versions."""
    table = ensure_postgres(a.pg_url, a.rows)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "snap.parquet"
        for i in range(a.repeat):
            for mode in ("plain", "summary+checks", "summary+checks+hash"):
                r = child(["--snapshot", mode, "--table", table, "--out", str(out),
                           "--pg-url", a.pg_url])  # fmt: skip
                snaps.setdefault(mode, []).append(r)
                print(f"  snapshot {i + 1}/{a.repeat} {mode:19} {r['seconds']:6.2f} s "
                      f"peak {r['peak_rss_mb']:6.0f} MB", file=sys.stderr)  # fmt: skip
        return ensure_versions(out, a.cache_dir, a.rows)


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
    p.add_argument(
        "--skip-snapshots", action="store_true",
        help="measure the diffs only, on the versions an earlier run left in --cache-dir",
    )  # fmt: skip
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

    snaps: dict[str, list[dict]] = {}
    if a.skip_snapshots:
        folder = a.cache_dir / f"quality_{a.rows}"
        va, vb = folder / "a.parquet", folder / "b.parquet"
        if not (va.exists() and vb.exists()):
            raise SystemExit(f"no versions in {folder}: run once without --skip-snapshots")
    else:
        va, vb = measure_snapshots(a, snaps)
    diffs: dict[str, list[dict]] = {}
    for i in range(0 if a.skip_diff else a.repeat):
        for mode in ("relay", "pandas", "relay-bare"):
            r = child(["--diff", mode, "--a", str(va), "--b", str(vb)])
            diffs.setdefault(mode, []).append(r)
            print(f"  diff {i + 1}/{a.repeat} {mode:7} {r['seconds']:6.2f} s "
                  f"peak {r['peak_rss_mb']:6.0f} MB {r['counts']}", file=sys.stderr)  # fmt: skip

    def med(results: dict[str, list[dict]], mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(f"\nrows: {a.rows:,}   repeat: {a.repeat} (medians)   source: PostgreSQL")
    if snaps:
        print(f"{'snapshot':20} {'seconds':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for mode in snaps:
        secs, cpu = med(snaps, mode, "seconds"), med(snaps, mode, "cpu_seconds")
        print(f"{mode:20} {secs:8.2f} {cpu:8.2f} {med(snaps, mode, 'peak_rss_mb'):12.0f}")
    for mode in ("summary+checks", "summary+checks+hash") if snaps else ():
        for what in ("seconds", "cpu_seconds", "peak_rss_mb"):
            ratio = med(snaps, mode, what) / med(snaps, "plain", what) - 1
            target = "within 10%" if what == "peak_rss_mb" else "<= +15%"
            print(f"{mode}: {ratio:+.1%} {what} (target {target})")
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
        bare = med(diffs, "pandas", what) / med(diffs, "relay-bare", what)
        print(f"relay diff without sidecars: {bare:.1f}x faster than pandas in {what}")
    mem = med(diffs, "relay", "peak_rss_mb") / med(diffs, "pandas", "peak_rss_mb")
    print(f"relay diff: {mem:.2f} of pandas' peak memory (target <= 0.25)")


if __name__ == "__main__":
    main()
