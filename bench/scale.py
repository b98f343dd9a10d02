"""Scale-out benchmark: the example's grid search and 5,000,000-row batch scoring, local vs Dask.

1. ``training/logreg`` (GridSearchCV, 4 C values x 2 penalties x 3 folds = 24 fits) on a
   larger fraud table: locally with ``n_jobs=1`` (the anchor), then with ``n_jobs=-1`` through
   a 2-worker ``distributed.LocalCluster`` (``RELAY_EXECUTOR=dask://...``, as ``--executor``).
2. Batch scoring of a 5,000,000-row Parquet file of raw records with the trained bundle:
   ``relay predict`` locally (``serve.predict_file``, the anchor), then partition by partition
   on the same cluster (``executor.predict_partitions``).

Prints wall times, the ratio to the local anchor, and whether the results are identical.

Run (from the repository root):

    python bench/scale.py                 # ~3-5 minutes on 2 cores
    python bench/scale.py --rows 1000000  # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows to score")
    parser.add_argument("--days", type=int, default=8, help="days of training data")
    parser.add_argument("--rows-per-day", type=int, default=10_000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from distributed import LocalCluster

    import relayml as relay
    from relayml.executor import predict_partitions
    from relayml.serving.batch import predict_file

    from conftest import git, make_project

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-scale-"))
    root = make_project(tmp / "fraud", days=args.days, rows_per_day=args.rows_per_day)
    steps = root / "steps.py"  # liblinear must be seeded for two searches to compare exactly
    unseeded = 'LogisticRegression(solver="liblinear", max_iter=1000)'
    if unseeded in steps.read_text():
        steps.write_text(
            steps.read_text().replace(
                unseeded, unseeded.replace("1000)", "1000, random_state=seed)")
            )
        )
        git(root, "commit", "-qam", "seeded")
    os.chdir(root)
    os.environ.pop("RELAY_EXECUTOR", None)
    load = relay.run("load", "transactions", project=root)
    relay.run("processing", "plain", project=root)
    print(f"training table: {int(load.tags['relay.snapshot.fraud.rows']):,} rows")
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = "dask://" + cluster.scheduler_address.removeprefix("tcp://")

        t = time.perf_counter()
        local = relay.run("training", "logreg", {"n_jobs": 1}, project=root)
        t_local = time.perf_counter() - t
        os.environ["RELAY_EXECUTOR"] = address
        t = time.perf_counter()
        remote = relay.run("training", "logreg", {"n_jobs": -1}, project=root)
        t_dask = time.perf_counter() - t
        os.environ.pop("RELAY_EXECUTOR")
        same = local.metrics == remote.metrics
        print("\ngrid search (24 fits, whole step incl. bundle logging)")
        print(f"  local n_jobs=1        {t_local:8.1f} s   1.00")
        print(f"  dask 2 workers        {t_dask:8.1f} s   {t_dask / t_local:.2f}   "
              f"metrics identical: {same}")  # fmt: skip

        raw = pd.read_parquet(load.store.download(
            load.tags["relay.snapshot.fraud"], "snapshot.parquet", tmp / "snap"
        ))  # fmt: skip
        source = tmp / "raw.parquet"
        table = pa.Table.from_pandas(raw, preserve_index=False)
        with pq.ParquetWriter(source, table.schema) as writer:
            written = 0
            while written < args.rows:
                part = table.slice(0, min(len(raw), args.rows - written))
                writer.write_table(part)
                written += part.num_rows
        uri = remote.model_uri
        t = time.perf_counter()
        n_local = predict_file(uri, source, tmp / "local.parquet")
        t_local = time.perf_counter() - t
        t = time.perf_counter()
        n_dask = predict_partitions(
            uri, source, tmp / "dask.parquet", executor=address, partition_rows=250_000
        )
        t_dask = time.perf_counter() - t
        same = pq.read_table(tmp / "local.parquet").equals(pq.read_table(tmp / "dask.parquet"))
        print(f"\nbatch scoring {args.rows:,} rows (Parquet in, Parquet out)")
        print(f"  local predict_file    {t_local:8.1f} s   1.00   {n_local / t_local:,.0f} rows/s")
        print(f"  dask 2 workers        {t_dask:8.1f} s   {t_dask / t_local:.2f}   "
              f"{n_dask / t_dask:,.0f} rows/s   identical: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
