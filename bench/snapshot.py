"""Benchmark: streamed Parquet snapshot + strong digest vs pandas.read_sql + MLflow's digest.

Loads the credit-card-fraud table shape (``Time``, ``V1``..``V28``, ``Amount`` float64,
``Class`` int, ``ts`` timestamp) from PostgreSQL and from SQLite into a Parquet snapshot with
its digest (``relayml.data.snapshot_query``), against the anchor measured in the same run:
``pandas.read_sql`` then ``DataFrame.to_parquet`` then ``mlflow.data.from_pandas(df)``.

Each measurement runs in a fresh subprocess, so its peak RSS is its own; medians of
``--repeat`` runs are reported. The source tables are generated once and cached, keyed on the
row count (PostgreSQL table ``relay_bench_fraud_<rows>``, SQLite file in ``--cache-dir``).

Usage:
    python bench/snapshot.py --rows 2000000 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

COLUMNS = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount", "Class", "ts"]
QUERY = "SELECT * FROM {table} WHERE ts <= :retrieval_time"
QUERY_NO_PARAMS = "SELECT * FROM {table}"
RETRIEVAL_TIME = dt.datetime(2100, 1, 1)
PG_TYPES = {"Class": "BIGINT", "ts": "TIMESTAMP"}
BASE_TS = np.datetime64("2013-09-01T00:00:00", "us")


def fraud_chunk(start: int, n: int) -> pa.Table:
    rng = np.random.default_rng(start)
    cols: dict[str, pa.Array] = {"Time": pa.array(np.arange(start, start + n, dtype=np.float64))}
    for i in range(1, 29):
        cols[f"V{i}"] = pa.array(rng.normal(0, 1.5, n))
    cols["Amount"] = pa.array(np.round(rng.exponential(88.0, n), 2))
    cols["Class"] = pa.array((rng.random(n) < 0.0017).astype(np.int64))
    ts = BASE_TS + (np.arange(start, start + n) * 1_000_000).astype("timedelta64[us]")
    cols["ts"] = pa.array(ts, pa.timestamp("us"))
    return pa.table(cols)


def chunks(rows: int, size: int = 200_000):
    for start in range(0, rows, size):
        yield fraud_chunk(start, min(size, rows - start))


def ensure_postgres(url: str, rows: int) -> str:
    import sqlalchemy as sa

    table = f"relay_bench_fraud_{rows}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": table}).scalar()
        if exists and conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == rows:
            return table
        print(f"generating PostgreSQL table {table} ({rows:,} rows)...", file=sys.stderr)
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        cols = ", ".join(f'"{c}" {PG_TYPES.get(c, "DOUBLE PRECISION")}' for c in COLUMNS)
        conn.execute(sa.text(f"CREATE TABLE {table} ({cols})"))
        cur = conn.connection.driver_connection.cursor()
        with cur.copy(f"COPY {table} FROM STDIN (FORMAT csv)") as copy:
            for chunk in chunks(rows):
                buf = io.BytesIO()
                pacsv.write_csv(chunk, buf, pacsv.WriteOptions(include_header=False))
                copy.write(buf.getvalue())
        conn.execute(sa.text(f"ANALYZE {table}"))
    engine.dispose()
    return table


def ensure_sqlite(cache_dir: Path, rows: int) -> Path:
    path = cache_dir / f"fraud_{rows}.sqlite"
    if path.exists():
        return path
    print(f"generating SQLite table at {path} ({rows:,} rows)...", file=sys.stderr)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as c:
        cols = ", ".join(
            f'"{n}" {"INTEGER" if n == "Class" else "TIMESTAMP" if n == "ts" else "REAL"}'
            for n in COLUMNS
        )
        c.execute(f"CREATE TABLE fraud ({cols})")
        marks = ", ".join("?" * len(COLUMNS))
        for chunk in chunks(rows):
            arrays = [chunk[n].to_numpy().tolist() for n in COLUMNS[:-1]]
            ts = chunk["ts"].cast(pa.string()).to_pylist()  # "YYYY-MM-DD HH:MM:SS"
            c.executemany(f"INSERT INTO fraud VALUES ({marks})", zip(*arrays, ts, strict=True))
    tmp.rename(path)
    return path


# ------------------------------------------------------------------------------------------
# One measurement, run in a fresh subprocess
# ------------------------------------------------------------------------------------------


def measure(mode: str, url: str, table: str, out: Path, batch_size: int) -> dict:
    t0 = time.perf_counter()
    if mode.startswith("relay"):
        import relayml.data as data

        if mode.endswith("sqlalchemy"):
            data._adbc_available = lambda: False  # force the generic streaming-cursor path
        if mode.endswith("copy"):
            sql, params = QUERY_NO_PARAMS.format(table=table), {}
        else:
            sql, params = QUERY.format(table=table), {"retrieval_time": _param(url)}
        start_rss = _rss_mb()
        t0 = time.perf_counter()
        snap = data.snapshot_query(url, sql, params, out, batch_size=batch_size)
        rows, digest = snap.rows, snap.digest
    else:
        import mlflow.data
        import pandas as pd
        import sqlalchemy as sa

        start_rss = _rss_mb()
        t0 = time.perf_counter()
        engine = sa.create_engine(url)
        df = pd.read_sql(
            sa.text(QUERY.format(table=table)), engine, params={"retrieval_time": _param(url)}
        )
        df.to_parquet(out)
        digest = mlflow.data.from_pandas(df).digest
        rows = len(df)
        engine.dispose()
    seconds = time.perf_counter() - t0
    return {
        "mode": mode,
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mb": _rss_mb(),
        "start_rss_mb": start_rss,
        "digest": digest,
    }


def _param(url: str) -> object:
    return RETRIEVAL_TIME.isoformat(sep=" ") if url.startswith("sqlite") else RETRIEVAL_TIME


def _rss_mb() -> float:
    """Peak RSS of this process, in MB.

    ``VmHWM`` is per address space, so it starts afresh at exec; ``ru_maxrss`` would carry over
    the parent's peak (Linux keeps it across fork+exec).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(mode: str, url: str, table: str, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        cmd = [
            sys.executable, __file__, "--measure", mode, "--url", url, "--table", table,
            "--out", str(Path(d) / "snap.parquet"), "--batch-size", str(batch_size),
        ]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{res.stderr}")
        return json.loads(res.stdout.strip().splitlines()[-1])


def digest_throughput(rows: int, repeat: int) -> tuple[float, int]:
    from relayml.data import digest_table

    table = pa.concat_tables(chunks(rows))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        digest_table(table)
        times.append(time.perf_counter() - t0)
    return table.nbytes / statistics.median(times) / 1e9, table.nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=100_000)
    p.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RELAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "relay-bench")
    p.add_argument(
        "--fetch-paths",
        action="store_true",
        help="also time the other PostgreSQL fetch paths (COPY without params, SQLAlchemy)",
    )
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.url, a.table, a.out, a.batch_size)))
        return

    pg_table = ensure_postgres(a.pg_url, a.rows)
    sqlite_url = f"sqlite:///{ensure_sqlite(a.cache_dir, a.rows)}"
    plan = [
        ("postgres", "relay", a.pg_url, pg_table),
        ("postgres", "baseline", a.pg_url, pg_table),
        ("sqlite", "relay", sqlite_url, "fraud"),
        ("sqlite", "baseline", sqlite_url, "fraud"),
    ]
    if a.fetch_paths:
        plan += [
            ("postgres", "relay-copy", a.pg_url, pg_table),
            ("postgres", "relay-sqlalchemy", a.pg_url, pg_table),
        ]
    results: dict[tuple[str, str], list[dict]] = {}
    for i in range(a.repeat):
        for src, mode, url, table in plan:
            r = run_child(mode, url, table, a.batch_size)
            results.setdefault((src, mode), []).append(r)
            print(
                f"  run {i + 1}/{a.repeat} {src:8} {mode:17} {r['seconds']:6.2f} s "
                f"peak {r['peak_rss_mb']:7.0f} MB",
                file=sys.stderr,
            )

    def med(src: str, mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(src, mode)])

    print(f"\nrows: {a.rows:,}   repeat: {a.repeat} (medians)   batch_size: {a.batch_size:,}")
    print(
        f"{'source':9} {'method':18} {'rows/s':>12} {'seconds':>8} {'peak RSS MB':>12} "
        f"{'RSS after imports MB':>21}"
    )
    for src, mode in results:
        secs = med(src, mode, "seconds")
        print(
            f"{src:9} {mode:18} {a.rows / secs:12,.0f} {secs:8.2f} "
            f"{med(src, mode, 'peak_rss_mb'):12.0f} {med(src, mode, 'start_rss_mb'):21.0f}"
        )
    for src in ("postgres", "sqlite"):
        speed = med(src, "baseline", "seconds") / med(src, "relay", "seconds")
        mem = med(src, "relay", "peak_rss_mb") / med(src, "baseline", "peak_rss_mb")
        print(f"{src}: relay vs baseline: {speed:.2f}x throughput, {mem:.2f}x peak memory")
    gbps, nbytes = digest_throughput(a.rows, a.repeat)
    print(f"digest throughput over in-memory Arrow ({nbytes / 1e9:.2f} GB): {gbps:.2f} GB/s")
    digests = {r["digest"] for (src, mode), rs in results.items() if mode != "baseline" for r in rs}
    print(f"relay digests identical across sources and runs: {len(digests) == 1}")


if __name__ == "__main__":
    main()
