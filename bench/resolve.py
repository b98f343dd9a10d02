"""Benchmark: resolving the newest coherent chain, relayml versus the seed's algorithm.

Builds tracking stores holding N step runs (3 steps, 3 variants each, realistic fan-out: each
load feeds ~5 processing runs, each processing run ~9 training runs; ~3 % FAILED; ~5 %
duplicate reruns), bulk-written with SQL into MLflow's own tables. Every row looks exactly like
a run relay writes (the same tags, params, metrics; ``relay.fingerprint`` computed as
``runner.Request.fingerprint`` does, checked on a sample).

Measured (median ms, warm process):

* ``relay``: ``relay.chain(..., dry_run=True)``: the plan (resolution only) for
  ``load=transactions@latest processing=plain training=logreg -P training.C=1``, and the
  same with the load pinned to an older key;
* ``seed``: the seed's PoC: list every run of each experiment, fetch each run, compare params
  and upstream in Python, keep the last match (only at the smaller scales: it is slow).

``--cli`` measures instead the wall time of a fully cached ``relay chain`` from the shell
(issue 4's < 3 s target): the fraud example in a temporary git repository, the chain made once,
then ``relay chain load=transactions@latest processing=plain training=logreg -P training.cv=2``
timed as a subprocess (median of ``--cli-repeat``), with the pipeline cache and without it
(``RELAY_NO_PIPELINE_CACHE=1``: the steps module, hence scikit-learn, imported).

``--fingerprint`` measures the code fingerprints (``relayml.fingerprint.code_parts``) of every
variant of a project whose steps module imports ``--modules`` local modules, in a fresh
process, beside the git call that the old key needed.

Usage:
    python bench/resolve.py                                   # sqlite + postgresql, 1k/10k/100k
    python bench/resolve.py --backends sqlite --scales 1000   # quick
    python bench/resolve.py --baseline       # also without relay's indexes (MLflow schema)
    python bench/resolve.py --cli            # relay chain from the shell, fully cached
    python bench/resolve.py --cli --src /path/to/other/checkout/src   # another version of relay
    python bench/resolve.py --cli --before /tmp/fp-base/src   # this checkout beside another
    python bench/resolve.py --fingerprint    # code fingerprints of a project of 20 local modules

PostgreSQL comes from RELAY_TEST_POSTGRES_URL (a fresh database per scale, dropped after).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS_PY = '''"""Bench project: three steps, three variants each (never executed here)."""
import relayml as relay

load = relay.step("load")
processing = relay.step("processing", upstream=load)
training = relay.step("training", upstream=processing)


@load.variant("transactions")
def transactions(ctx, days: int = 0):
    return ctx.query("fraud", "SELECT * FROM transactions")


@load.variant("customers")
def customers(ctx, region: str = "all"):
    return ctx.read("customers.csv")


@load.variant("events")
def events(ctx, hours: int = 24):
    return ctx.query("fraud", "SELECT * FROM events")


@processing.variant("plain")
def plain(load, test_size: float = 0.25, seed: int = 42):
    return {"train": load, "test": load}


@processing.variant("robust")
def robust(load, test_size: float = 0.25, seed: int = 42):
    return {"train": load, "test": load}


@processing.variant("pca")
def pca(load, components: int = 10, test_size: float = 0.25, seed: int = 42):
    return {"train": load, "test": load}


@training.variant("logreg")
def logreg(processing, C: float | None = None, penalty: str = "both", cv: int = 3, seed: int = 0):
    return {"model": None}


@training.variant("rf")
def rf(processing, n_estimators: int = 100, max_depth: int | None = 8, cv: int = 3, seed: int = 0):
    return {"model": None}


@training.variant("gbm")
def gbm(processing, learning_rate: float = 0.1, depth: int = 3, cv: int = 3, seed: int = 0):
    return {"model": None}
'''

RELAY_TOML = """[project]
name = "bench"
steps = "steps"

[tracking]
uri = "sqlite:///.relay/mlflow.db"
"""

PARAM_CHOICES: dict[tuple[str, str], dict[str, list[Any]]] = {
    ("load", "transactions"): {"days": [0, 30]},
    ("load", "customers"): {"region": ["all", "eu"]},
    ("load", "events"): {"hours": [24, 48]},
    ("processing", "plain"): {"test_size": [0.25, 0.2, 0.3], "seed": [42, 1]},
    ("processing", "robust"): {"test_size": [0.25, 0.2]},
    ("processing", "pca"): {"components": [5, 10, 20]},
    ("training", "logreg"): {"C": [None, 0.1, 1.0, 10.0], "penalty": ["both", "l1", "l2"]},
    ("training", "rf"): {"n_estimators": [100, 300], "max_depth": [8, None]},
    ("training", "gbm"): {"learning_rate": [0.1, 0.05], "depth": [3, 5]},
}
METRICS = ["cv_roc_auc", "test_roc_auc", "test_average_precision", "test_f1", "threshold"]
WANTED = {"training.C": 1.0}  # the chain the benchmark asks for
PROC_PER_LOAD, TRAIN_PER_PROC = 5, 9  # fan-out per load: 1 load, 5 processing, 9 trainings each
RUNS_PER_LOAD = 48.6  # measured with that fan-out (3 % failed processing runs have no training)


class _Up:
    """What Request.fingerprint reads of an upstream run: its id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.tags: dict[str, str] = {}


def make_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "steps.py").write_text(STEPS_PY)
    (root / "relay.toml").write_text(RELAY_TOML)
    (root / ".gitignore").write_text(".relay/\nmlruns/\n__pycache__/\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@relay.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@relay.invalid"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)
    return root


# -- generating relay-shaped rows ------------------------------------------------------------


SCHEME = "exact-1"  # relayml.fingerprint.SCHEME (not imported: --src may run another relay)


class Generator:
    """Builds runs, tags, params and metrics rows exactly as relay writes them."""

    def __init__(self, settings: Any, store: Any, rng: random.Random) -> None:
        from relayml.codeinfo import canonical, code_state, digest
        from relayml.runner import Request, pipeline_of

        self.settings, self.store, self.rng = settings, store, rng
        self.canonical, self.digest, self.Request = canonical, digest, Request
        self.pipeline = pipeline_of(settings)
        self.code = code_state(settings.root)
        self.exp = {s: store.experiment_id(s) for s in ("load", "processing", "training")}
        self.code_fp: dict[tuple[str, str], str] = {}
        self.runs: list[tuple] = []
        self.tags: list[tuple] = []
        self.params: list[tuple] = []
        self.metrics: list[tuple] = []
        self.latest: list[tuple] = []
        self.used: set[tuple[str, str, int]] = set()
        self.samples: list[tuple[Any, dict[str, _Up], str]] = []

    def request(self, step: str, variant: str, params: dict, ups: dict[str, _Up]) -> Any:
        var = self.pipeline.variant(step, variant)
        return self.Request(self.settings, self.pipeline, var, var.bind(params), ups, self.code)

    def fingerprint(self, step: str, variant: str, bound: dict, ups: dict[str, _Up]) -> str:
        """Request.fingerprint, with the per-variant code fingerprint cached."""
        if (step, variant) not in self.code_fp:
            self.code_fp[(step, variant)] = self.request(step, variant, {}, ups).code_fingerprint
        params_digest = self.digest(self.canonical(bound))
        ids = {s: r.run_id for s, r in sorted(ups.items())}
        return self.digest(
            step, variant, params_digest, self.canonical(ids), self.code_fp[(step, variant)], ""
        )

    def add(
        self,
        step: str,
        variant: str,
        params: dict,
        ups: dict[str, tuple[_Up, str, str, dict[str, str]]],
        second: int,
        status: str = "FINISHED",
    ) -> tuple[_Up, str, str, dict[str, str]]:
        """One run; returns (handle, key, data version, data parts) for its children."""
        from relayml.keys import RunKey
        from relayml.request import logged_params as _logged_params
        from relayml.runstart import data_tags as _data_tags
        from relayml.store import param_value as _param_value

        while (step, variant, second) in self.used:
            second += 1
        self.used.add((step, variant, second))
        run_id = uuid.uuid4().hex
        key = RunKey(step, variant, time.strftime("%Y%m%d%H%M%S", time.gmtime(second)))
        start = second * 1000 + self.rng.randrange(1000)
        end = start + self.rng.randrange(1_000, 600_000)
        var = self.pipeline.variant(step, variant)
        bound = var.bind(params)
        up_handles = {s: u[0] for s, u in ups.items()}
        fp = self.fingerprint(step, variant, bound, up_handles)
        if len(self.samples) < 60 and self.rng.random() < 0.01:
            self.samples.append((self.request(step, variant, params, up_handles), {}, fp))
        code_fp = self.code_fp[(step, variant)]
        s = self.settings
        tags = {
            "relay.project": s.project,
            "relay.step": step,
            "relay.variant": variant,
            "relay.key": str(key),
            "relay.time": key.time,
            "relay.heartbeat": f"{start / 1000:.3f}",
            "relay.code": code_fp,
            "relay.code.scheme": SCHEME,
            "relay.params": self.digest(self.canonical(bound)),
            "relay.fingerprint": fp,
            "mlflow.user": "bench",
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": str(s.root / "steps.py"),
            "relay.git.commit": self.code.commit,
            "mlflow.source.git.commit": self.code.commit,
            "relay.git.dirty": "false",
            "mlflow.runName": str(key),
        }
        for up_step, (handle, up_key, _, _) in ups.items():
            tags[f"relay.upstream.{up_step}"] = handle.run_id
            tags[f"relay.upstream.{up_step}.key"] = up_key
        if ups:
            parts = {}
            for u in ups.values():
                parts.update(u[3])
            tags.update(_data_tags(parts))  # recorded at creation, from the upstream runs
            data = tags["relay.data"]
        else:
            data = self.digest(run_id)
            parts = {str(key): data}
            tags["relay.retrieval_time"] = time.strftime(
                "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(second)
            )
            holder = uuid.uuid4().hex
            tags.update({
                "relay.snapshot.fraud": holder, "relay.snapshot.fraud.digest": data,
                "relay.snapshot.fraud.rows": "40000", "relay.snapshot.fraud.bytes": "9123456",
                "relay.snapshot.fraud.source": "postgresql+psycopg://db/fraud",
            })  # fmt: skip
        if status == "FINISHED":
            if not ups:
                tags.update(_data_tags(parts))
            outputs = {
                "load": {"output": f"snapshot:{uuid.uuid4().hex}"},
                "processing": {"processor": "pickle", "test": "parquet", "train": "parquet"},
                "training": {"model": "pickle", "threshold": "pickle"},
            }[step]
            tags["relay.outputs"] = self.canonical(outputs)
            if step == "training":
                tags["relay.model"] = f"models:/m-{uuid.uuid4().hex}"
        else:
            tags["relay.error"] = "RuntimeError: boom"
        exp_id = self.exp[step]
        art = f"{s.artifact_location}/{s.project}/{step}/{run_id}/artifacts"
        self.runs.append((run_id, str(key), "UNKNOWN", "", "", "bench", status, start, end, "",
                          "active", art, int(exp_id), None))  # fmt: skip
        self.tags.extend((k, str(v), run_id) for k, v in tags.items())
        req_like = type("R", (), {"params": bound, "as_of": None})()
        self.params.extend(
            (k, _param_value(v), run_id) for k, v in _logged_params(req_like).items()
        )
        if step == "training" and status == "FINISHED":
            for m in METRICS:
                v = self.rng.random()
                self.metrics.append((m, v, end, run_id, 0, False))
                self.latest.append((m, v, end, 0, False, run_id))
        return _Up(run_id), str(key), data, parts

    def choose(self, step: str, variant: str) -> dict[str, Any]:
        return {k: self.rng.choice(v) for k, v in PARAM_CHOICES[(step, variant)].items()}

    def build(self, total: int, start_second: int) -> None:
        """About ``total`` runs with realistic fan-out, plus the planted wanted chain."""
        loads = max(1, round(total / RUNS_PER_LOAD))
        second = start_second
        spacing = 3 * 86400 * 365 // max(1, total)
        for i in range(loads):
            lv = "transactions" if i % 3 != 1 else self.rng.choice(["customers", "events"])
            second += spacing * 50
            load = self.add("load", lv, self.choose("load", lv), {}, second)
            psec = second
            for _ in range(PROC_PER_LOAD):
                pv = self.rng.choice(["plain", "plain", "robust", "pca"])
                psec += self.rng.randrange(60, 86400)
                status = "FAILED" if self.rng.random() < 0.03 else "FINISHED"
                pparams = self.choose("processing", pv)
                proc = self.add("processing", pv, pparams, {"load": load}, psec, status)
                if self.rng.random() < 0.05:  # a duplicate rerun (--force)
                    self.add("processing", pv, pparams, {"load": load}, psec + 30)
                if status != "FINISHED":
                    continue
                tsec = psec
                for _ in range(TRAIN_PER_PROC):
                    tv = self.rng.choice(["logreg", "logreg", "rf", "gbm"])
                    tsec += self.rng.randrange(60, 3600)
                    st = "FAILED" if self.rng.random() < 0.03 else "FINISHED"
                    self.add("training", tv, self.choose("training", tv), {"processing": proc},
                             tsec, st)  # fmt: skip
        # the wanted chain on the newest transactions load (and on an older one)
        self.newest_second = second + spacing * 60
        self.plant(self.newest_second)

    def plant(self, second: int) -> None:
        load = self.add("load", "transactions", {}, {}, second)
        proc = self.add("processing", "plain", {}, {"load": load}, second + 100)
        self.add("training", "logreg", {"C": 1.0}, {"processing": proc}, second + 200)
        self.planted_load = load[1]

    def check_samples(self) -> None:
        for req, _, fp in self.samples:
            assert req.fingerprint == fp, "bench fingerprint differs from Request.fingerprint"


# -- writing ---------------------------------------------------------------------------------


def write_rows(uri: str, gen: Generator) -> None:
    tables = {
        "runs": ("run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                 "start_time, end_time, source_version, lifecycle_stage, artifact_uri, "
                 "experiment_id, deleted_time", gen.runs),
        "tags": ("key, value, run_uuid", gen.tags),
        "params": ("key, value, run_uuid", gen.params),
        "metrics": ("key, value, timestamp, run_uuid, step, is_nan", gen.metrics),
        "latest_metrics": ("key, value, timestamp, step, is_nan, run_uuid", gen.latest),
    }  # fmt: skip
    if uri.startswith("sqlite:///"):
        import sqlite3

        con = sqlite3.connect(uri.removeprefix("sqlite:///"))
        with con:
            for table, (cols, rows) in tables.items():
                cols_q = ", ".join(f'"{c.strip()}"' for c in cols.split(","))
                marks = ", ".join("?" * len(cols.split(",")))
                con.executemany(f"INSERT INTO {table} ({cols_q}) VALUES ({marks})", rows)
        con.close()
        return
    import psycopg

    with psycopg.connect(_libpq(uri)) as con, con.cursor() as cur:
        for table, (cols, rows) in tables.items():
            cols_q = ", ".join(f'"{c.strip()}"' for c in cols.split(","))
            with cur.copy(f"COPY {table} ({cols_q}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        cur.execute("ANALYZE")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def drop_relay_indexes(uri: str) -> list[str]:
    """Drop the indexes relay adds at store init (``relay_*``): MLflow's own schema only."""
    if uri.startswith("sqlite:///"):
        import sqlite3

        con = sqlite3.connect(uri.removeprefix("sqlite:///"))
        names = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'relay_%'"
            )
        ]
        for name in names:
            con.execute(f"DROP INDEX {name}")
        con.execute("ANALYZE")
        con.commit()
        con.close()
        return names
    import psycopg

    with psycopg.connect(_libpq(uri), autocommit=True) as con:
        names = [
            r[0]
            for r in con.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'relay_%'")
        ]
        for name in names:
            con.execute(f"DROP INDEX {name}")
        con.execute("ANALYZE")
    return names


# -- measuring -------------------------------------------------------------------------------


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def seed_resolve(client: Any, exps: dict[str, str], load_id: str, wanted: dict[str, Any]) -> str:
    """The seed's PoC: list every run of each experiment, fetch each one, filter in Python.

    Given the load run (as the seed's ``main`` was), so only processing and training are
    listed: a comparison in the seed's favour.
    """

    def every_run(exp_id: str) -> list[Any]:
        out, token = [], None
        while True:
            page = client.search_runs([exp_id], max_results=1000, page_token=token)
            out.extend(client.get_run(r.info.run_id) for r in page)  # fetch each, as the seed
            token = page.token
            if not token:
                return out

    match: Any = client.get_run(load_id)
    for step, up in (("processing", "load"), ("training", "processing")):
        if match is None:
            return ""
        prev, match = match, None
        for r in every_run(exps[step]):
            ok = (r.data.tags.get("relay.variant") == wanted[step]["variant"]
                  and r.data.params == wanted[step]["params"]
                  and r.data.tags.get(f"relay.upstream.{up}") == prev.info.run_id)  # fmt: skip
            if ok:
                match = r  # the last match in listing order wins (not the newest)
    return match.info.run_id if match else ""


def bench_store(backend: str, total: int, args: argparse.Namespace, base: Path) -> dict:
    import relayml
    from relayml.store import get_store

    root = make_project(base / f"{backend}-{total}")
    # MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI, which relay's settings would then
    # prefer over the next project's relay.toml: forget the previous store's URI
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    pg_name = None
    if backend == "postgresql":
        import sqlalchemy as sa

        pg = os.environ.get("RELAY_TEST_POSTGRES_URL")
        if not pg:
            sys.exit(
                "set RELAY_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1/test)"
            )
        pg_name = f"relay_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as con:
            con.execute(sa.text(f'CREATE DATABASE "{pg_name}"'))
        uri = sa.engine.make_url(pg).set(database=pg_name).render_as_string(hide_password=False)
        os.environ["RELAY_TRACKING_URI"] = uri
    else:
        os.environ.pop("RELAY_TRACKING_URI", None)
    try:
        settings = relayml.open_project(root)
        uri = settings.tracking_uri
        store = get_store(settings)
        gen = Generator(settings, store, random.Random(total))
        t = time.perf_counter()
        gen.build(total, start_second=1_600_000_000)
        gen.check_samples()
        write_rows(uri, gen)
        built = time.perf_counter() - t
        n = len(gen.runs)
        links = ["load=transactions@latest", "processing=plain", "training=logreg"]

        def resolve() -> Any:
            return relayml.chain(*links, params=WANTED, dry_run=True, project=settings)

        plan = resolve()
        assert [p.status for p in plan.steps] == ["reused"] * 3, plan.to_dict()
        assert str(plan["load"].key) == gen.planted_load
        older = next(r for r in gen.runs if r[1].startswith("load/transactions@"))[1]

        def resolve_pinned() -> Any:
            return relayml.chain(f"load={older}", *links[1:], params=WANTED, dry_run=True,
                                 project=settings)  # fmt: skip

        row: dict[str, Any] = {"backend": backend, "runs": n, "build_s": round(built, 1)}
        row["relay_ms"] = median_ms(resolve, args.repeat)
        row["relay_pinned_ms"] = median_ms(resolve_pinned, args.repeat)
        if args.baseline:
            row["dropped"] = drop_relay_indexes(uri)
            row["mlflow_schema_ms"] = median_ms(resolve, max(3, args.repeat // 3))
        if total in args.seed_scales:
            client = store.client
            exps = {s: store.experiment_id(s) for s in ("load", "processing", "training")}
            wanted = {
                "processing": {"variant": "plain", "params": {"test_size": "0.25", "seed": "42"}},
                "training": {"variant": "logreg", "params": {
                    "C": "1.0", "penalty": "both", "cv": "3", "seed": "0"}},
            }  # fmt: skip
            reps = 3 if total <= 1000 else 1
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                found = seed_resolve(client, exps, plan["load"].run_id, wanted)
                assert found, "the seed's algorithm found no chain"
                times.append((time.perf_counter() - t) * 1000)
            row["seed_ms"] = statistics.median(times)
        return row
    finally:
        from relayml import store as store_mod

        for s in list(store_mod._STORES.values()):
            with contextlib.suppress(Exception):
                s.client._tracking_client.store.engine.dispose()
        store_mod._STORES.clear()
        if pg_name:
            import sqlalchemy as sa

            with admin.connect() as con:
                con.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ), {"n": pg_name})  # fmt: skip
                con.execute(sa.text(f'DROP DATABASE IF EXISTS "{pg_name}"'))


# -- relay chain from the shell -----------------------------------------------------------------

CLI_CHAIN = ["load=transactions@latest", "processing=plain", "training=logreg", "-P",
             "training.cv=2"]  # fmt: skip


def make_fraud(
    root: Path, env: dict[str, str], relay: list[str], example: Path | None = None
) -> None:
    """The fraud example in a git repository, its chain made once (by the relay of ``env``);
    ``example``: the example folder of that relayml's own tree (its steps use its API)."""
    example = example or Path(__file__).resolve().parents[1] / "examples" / "fraud"
    sys.path.insert(0, str(example))
    import generate

    root.mkdir(parents=True)
    for name in ("relay.toml", "steps.py", "generate.py", "features.py"):
        if (example / name).exists():  # features.py: the example's helper module (issue 12)
            shutil.copy(example / name, root / name)
    (root / ".gitignore").write_text(".relay/\ndata/\nmlruns/\n__pycache__/\n")
    (root / "data").mkdir()
    generate.generate(f"sqlite:///{root / 'data' / 'fraud.db'}", days=3, rows_per_day=1500)
    for git in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "fraud"]):
        subprocess.run(["git", *git], cwd=root, check=True, env=env, capture_output=True)
    first = ["load=transactions", *CLI_CHAIN[1:]]
    subprocess.run([*relay, "chain", *first], cwd=root, env=env, check=True, capture_output=True)


def bench_cli(args: argparse.Namespace, base: Path) -> list[dict]:
    """Wall time of a fully cached ``relay chain`` subprocess on the fraud example.

    With ``--before SRC``, the relayml in SRC is measured in the same run on its own copy of
    the project (its runs carry its own keys), the calls of both alternating.
    """
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@relay.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@relay.invalid"}  # fmt: skip
    for pop in ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "RELAY_PROJECT",
                "RELAY_NO_PIPELINE_CACHE"):  # fmt: skip
        env.pop(pop, None)
    relay = [str(Path(sys.executable).with_name("relay"))]
    if not Path(relay[0]).exists():
        relay = [sys.executable, "-m", "relayml"]

    def with_src(src: str | None) -> dict[str, str]:
        if not src:
            return dict(env)
        return {**env, "PYTHONPATH": os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(":")}

    now = with_src(args.src)
    make_fraud(base / "fraud", now, relay)
    modes = [("pipeline cache", base / "fraud", now),
             ("no cache", base / "fraud", {**now, "RELAY_NO_PIPELINE_CACHE": "1"})]  # fmt: skip
    if args.before:
        before = with_src(args.before)
        own = Path(args.before).resolve().parent / "examples" / "fraud"
        make_fraud(base / "fraud-before", before, relay, own if own.exists() else None)
        modes.insert(0, ("before (cache)", base / "fraud-before", before))
    import resource

    times: dict[str, list[float]] = {label: [] for label, _, _ in modes}
    cpu: dict[str, list[float]] = {label: [] for label, _, _ in modes}
    for i in range(args.cli_repeat + 1):  # the first call (warm-up) is not counted
        for label, root, mode_env in modes:
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            done = subprocess.run([*relay, "chain", *CLI_CHAIN], cwd=root, env=mode_env,
                                  capture_output=True, text=True)  # fmt: skip
            took = time.perf_counter() - t
            if done.returncode != 0:
                sys.exit(f"relay chain failed: {done.stderr}")
            rows_out = [line for line in done.stdout.splitlines() if "@" in line]
            assert len(rows_out) == 3 and all(" reused " in r for r in rows_out), done.stdout
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i:  # CPU time of the process: less sensitive than wall time to a busy machine
                times[label].append(took)
                cpu[label].append(now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime)
    rows = []
    for label, got in times.items():
        row = {"mode": label, "median_s": round(statistics.median(got), 2),
               "min_s": round(min(got), 2), "max_s": round(max(got), 2),
               "cpu_s": round(statistics.median(cpu[label]), 2),
               "load_average": round(os.getloadavg()[0], 1)}  # fmt: skip
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


# -- the code fingerprint of a project of many local modules ------------------------------------

MODULE_PY = '''"""Local helper module {i} (generated)."""
import json
import math

import numpy as np
import pandas as pd
{imports}

FACTOR_{i} = {i}


{functions}
'''

FUNCTION_PY = '''def helper_{i}_{j}(frame: pd.DataFrame, k: int = {j}) -> pd.DataFrame:
    """Scale the column x by a factor and log it."""
    out = frame.copy()
    out["x"] = out["x"] * FACTOR_{i} * k + math.sqrt(k)
    if np.isnan(out["x"]).any():
        raise ValueError(json.dumps({{"module": {i}, "function": {j}}}))
    return out
'''


def make_modular(root: Path, modules: int) -> None:
    """The bench project plus ``modules`` local modules (a package and flat files) it imports."""
    make_project(root)
    (root / "lib").mkdir()
    (root / "lib" / "__init__.py").write_text("")
    names = [f"lib.m{i}" if i % 2 else f"m{i}" for i in range(modules)]
    for i, name in enumerate(names):
        path = root / (name.replace(".", "/") + ".py")
        later = names[i + 1 : i + 3]  # each imports the next two: a transitive graph
        imports = "\n".join(f"import {n}" for n in later)
        functions = "\n\n".join(FUNCTION_PY.format(i=i, j=j) for j in range(12))
        path.write_text(MODULE_PY.format(i=i, imports=imports, functions=functions))
    steps = (root / "steps.py").read_text()
    (root / "steps.py").write_text(f"import {names[0]}\nimport {names[1]}\n" + steps)


FINGERPRINT_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
from relayml.config import load_settings
from relayml.pipeline import load_pipeline
from relayml.fingerprint import code_parts
settings = load_settings()
pipeline = load_pipeline(settings.root, settings.module)
t1 = time.perf_counter()
n = 0
for step in pipeline.steps.values():
    for v in step.variants.values():
        parts = code_parts(settings, step.name, v.source, pipeline.module_file)
        n = max(n, sum(k.startswith("module:") for k in parts))
t2 = time.perf_counter()
from relayml.codeinfo import code_state
t3 = time.perf_counter()
code_state(settings.root)
t4 = time.perf_counter()
print(json.dumps({"modules": n, "variants": sum(len(s.variants) for s in pipeline.steps.values()),
                  "fingerprints_ms": (t2 - t1) * 1000, "git_ms": (t4 - t3) * 1000,
                  "steps_imported": "steps" in sys.modules}))
"""


def bench_fingerprint(args: argparse.Namespace, base: Path) -> dict:
    """Computing every variant's code parts in a fresh process, beside the old key's git call."""
    root = base / "modular"
    make_modular(root, args.modules)
    env = {k: v for k, v in os.environ.items() if k != "RELAY_NO_PIPELINE_CACHE"}
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join([args.src, env.get("PYTHONPATH", "")]).rstrip(":")
    got: list[dict] = []
    for i in range(args.cli_repeat + 2):  # 1st: imports steps, writes the caches; 2nd: warm-up
        done = subprocess.run([sys.executable, "-c", FINGERPRINT_SNIPPET], cwd=root, env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        row = json.loads(done.stdout)
        if i >= 2:
            assert not row["steps_imported"], "the pipeline cache was not used"
            assert row["modules"] >= args.modules, row  # (+ lib/__init__.py)
            got.append(row)
    fp = statistics.median(r["fingerprints_ms"] for r in got)
    git = statistics.median(r["git_ms"] for r in got)
    variants = got[0]["variants"]
    out = {"modules": got[0]["modules"], "variants": variants, "fingerprints_ms": round(fp, 1),
           "per_variant_ms": round(fp / variants, 2), "git_code_state_ms": round(git, 1),
           "load_average": round(os.getloadavg()[0], 1)}  # fmt: skip
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--scales", default="1000,10000,100000")
    p.add_argument("--seed-scales", default="1000,10000")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also measure with relay's indexes dropped (MLflow's schema only)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--cli", action="store_true", help="time relay chain from the shell instead")
    p.add_argument("--cli-repeat", type=int, default=5)
    p.add_argument("--src", help="with --cli: run the relayml found in this src folder")
    p.add_argument("--before", help="with --cli: also time the relayml in this src folder")
    p.add_argument(
        "--fingerprint",
        action="store_true",
        help="time the code fingerprints of a project of --modules local modules",
    )
    p.add_argument("--modules", type=int, default=20)
    args = p.parse_args()
    args.seed_scales = {int(x) for x in args.seed_scales.split(",") if x}
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    base = Path(tempfile.mkdtemp(prefix="relay-bench-resolve-"))
    if args.fingerprint:
        try:
            r = bench_fingerprint(args, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(f"\ncode fingerprints of {r['variants']} variants, {r['modules']} local modules "
              f"(fresh process, pipeline cache): median {r['fingerprints_ms']:.1f} ms "
              f"({r['per_variant_ms']:.2f} ms per variant; target <= 50 ms); the old key's "
              f"git code state: {r['git_code_state_ms']:.1f} ms "
              f"(load average {r['load_average']})")  # fmt: skip
        return
    if args.cli:
        try:
            rows = bench_cli(args, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        cmd = "relay chain " + " ".join(CLI_CHAIN)
        print(f"\n{cmd}   (fully cached; wall time of the subprocess, s)")
        for r in rows:
            print(f"{r['mode']:<16} median {r['median_s']:.2f}  min {r['min_s']:.2f}  "
                  f"max {r['max_s']:.2f}  cpu {r['cpu_s']:.2f}  "
                  f"(load average {r['load_average']})")  # fmt: skip
        return
    rows = []
    try:
        for backend in args.backends.split(","):
            for total in (int(x) for x in args.scales.split(",")):
                row = bench_store(backend, total, args, base)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"\n{'backend':<11}{'runs':>8}{'relay ms':>10}{'pinned':>9}{'no index':>10}"
          f"{'seed ms':>11}{'seed/relay':>12}")  # fmt: skip
    for r in rows:
        seed = r.get("seed_ms")
        ratio = f"{seed / r['relay_ms']:.0f}x" if seed else "-"
        idx = f"{r['mlflow_schema_ms']:.1f}" if "mlflow_schema_ms" in r else "-"
        print(f"{r['backend']:<11}{r['runs']:>8}{r['relay_ms']:>10.1f}{r['relay_pinned_ms']:>9.1f}"
              f"{idx:>10}{(f'{seed:.0f}' if seed else '-'):>11}{ratio:>12}")  # fmt: skip


if __name__ == "__main__":
    main()
