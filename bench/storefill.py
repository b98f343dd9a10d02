"""Bulk-fill an MLflow tracking store with relay-shaped step runs, for benchmarks.

Writing 100,000 runs through the tracking API takes hours; this writes the rows that
relayml would have written (same tables, same tags, params and metrics) straight into the
store's database in large batches. Experiments are created through MLflow itself, so the
schema and its migrations are MLflow's own.

Example:
    python bench/storefill.py sqlite:////tmp/store.db --runs 10000
"""

from __future__ import annotations

import argparse
import bisect
import random
import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa

STEPS = {
    "load": ([], ["transactions", "customers"], 0.1),
    "processing": (["load"], ["plain", "robust", "pca"], 0.3),
    "training": (["processing"], ["logreg", "rf", "hgb"], 0.6),
}
DAY_MS = 86_400_000


@dataclass
class Filled:
    """What was written: run ids by step, and the newest FINISHED run per (step, variant)."""

    project: str
    experiments: dict[str, str]
    runs: dict[str, list[str]] = field(default_factory=dict)
    newest: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)


def fill(uri: str, runs: int, *, project: str = "bench", seed: int = 0, days: int = 60) -> Filled:
    """Create ``runs`` relay-shaped runs in the store at ``uri`` (SQLite or PostgreSQL URL).

    Runs are inserted in random order of their start times, so "newest" and "listing order"
    differ, as they do in a real store. About 5 % of runs are FAILED.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = {}
    for step in STEPS:
        name = f"{project}/{step}"
        exp = client.get_experiment_by_name(name)
        exps[step] = exp.experiment_id if exp else client.create_experiment(name)
    rng = random.Random(seed)
    start = int(time.mktime((2019, 1, 1, 0, 0, 0, 0, 0, 0))) * 1000
    filled = Filled(project, exps)
    rows: dict[str, list[dict]] = {
        "runs": [],
        "tags": [],
        "params": [],
        "latest_metrics": [],
        "metrics": [],
    }
    made: dict[str, list[tuple[str, str, int]]] = {s: [] for s in STEPS}  # (id, key, start)
    starts: dict[str, list[int]] = {s: [] for s in STEPS}
    for step, (ups, variants, share) in STEPS.items():
        count = max(1, int(runs * share))
        times = sorted(rng.sample(range(start, start + days * DAY_MS, 1000), count))
        for t in times:
            t += rng.randrange(1000)
            variant = rng.choice(variants)
            run_id = uuid.uuid4().hex
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(t // 1000))
            key = f"{step}/{variant}@{stamp}"
            status = "FAILED" if rng.random() < 0.05 else "FINISHED"
            tags = {
                "relay.project": project,
                "relay.step": step,
                "relay.variant": variant,
                "relay.key": key,
                "relay.time": stamp,
                "relay.heartbeat": str(t / 1000),
                "relay.code": uuid.uuid4().hex,
                "relay.params": uuid.uuid4().hex,
                "relay.fingerprint": uuid.uuid4().hex,
                "relay.git.commit": "0" * 40,
                "relay.git.dirty": "false",
                "mlflow.runName": key,
                "mlflow.user": "bench",
                "relay.outputs": '{"output":"pickle"}',
                "relay.data": uuid.uuid4().hex,
            }
            for up in ups:
                # made[up] is in time order: the runs before t are a prefix (bisect, not a scan)
                cut = bisect.bisect_left(starts[up], t)
                earlier = made[up][:cut] or made[up]
                up_id, up_key, _ = rng.choice(earlier[-50:])  # recent upstream: realistic fan-out
                tags[f"relay.upstream.{up}"] = up_id
                tags[f"relay.upstream.{up}.key"] = up_key
            params = {"seed": str(rng.randrange(5)), "alpha": str(rng.choice([0.1, 1.0, 10.0]))}
            rows["runs"].append(
                {
                    "run_uuid": run_id,
                    "name": key,
                    "source_type": "LOCAL",
                    "source_name": "steps.py",
                    "entry_point_name": "",
                    "user_id": "bench",
                    "status": status,
                    "start_time": t,
                    "end_time": t + 5000,
                    "deleted_time": None,
                    "source_version": "0" * 40,
                    "lifecycle_stage": "active",
                    "artifact_uri": f"/tmp/bench/{run_id}/artifacts",
                    "experiment_id": int(exps[step]),
                }
            )
            rows["tags"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()]
            rows["params"] += [
                {"key": k, "value": v, "run_uuid": run_id} for k, v in params.items()
            ]
            if step == "training":
                for m in ("test_roc_auc", "cv_roc_auc"):
                    row = {
                        "key": m,
                        "value": rng.random(),
                        "timestamp": t,
                        "step": 0,
                        "is_nan": False,
                        "run_uuid": run_id,
                    }
                    rows["metrics"].append(row)
                    rows["latest_metrics"].append(dict(row))
            made[step].append((run_id, key, t))
            starts[step].append(t)
            if status == "FINISHED":
                best = filled.newest.get((step, variant))
                if best is None or t > best[0]:
                    filled.newest[(step, variant)] = (t, key)
    order = list(range(len(rows["runs"])))
    rng.shuffle(order)  # insertion (listing) order differs from time order
    rows["runs"] = [rows["runs"][i] for i in order]
    engine = sa.create_engine(uri)
    with engine.begin() as con:
        for table, data in rows.items():
            if not data:
                continue
            cols = list(data[0])
            names, binds = ", ".join(cols), ", ".join(":" + c for c in cols)
            stmt = sa.text(f"INSERT INTO {table} ({names}) VALUES ({binds})")
            for i in range(0, len(data), 20_000):
                con.execute(stmt, data[i : i + 20_000])
    engine.dispose()
    filled.runs = {s: [r[0] for r in v] for s, v in made.items()}
    filled.days = sorted(
        {time.strftime("%Y-%m-%d", time.gmtime(r[2] // 1000)) for r in made["processing"]}
    )
    return filled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("uri")
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    f = fill(args.uri, args.runs)
    print({s: len(r) for s, r in f.runs.items()})


if __name__ == "__main__":
    main()
