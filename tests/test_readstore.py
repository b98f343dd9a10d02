"""The read path without MLflow gives the same answers as MLflow's client.

A seeded random store (experiments of several projects, deleted experiments, runs of every
status, deleted runs, equal start times, tags, params, metrics logged at several steps, NaN,
dataset inputs, registered model versions with aliases) is built with MLflow's client on
SQLite, PostgreSQL and a tracking server; every query relayml makes is asked through both
paths and the answers are compared.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from relayml.config import Settings
from relayml.readstore import RunRecord
from relayml.store import Store

PROJECT = "p_j"  # '_' is a LIKE wildcard: 'pxj/...' experiments must stay out
STATUSES = ["FINISHED", "FINISHED", "FAILED", "KILLED", "RUNNING"]


def _build(uri: str, seed: int, n_runs: int = 45) -> dict[str, list[str]]:
    """Fill a store with random runs; returns the values worth querying for."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    rnd = random.Random(seed)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    steps = ["load", "processing", "training", "chains"]
    exps = [client.create_experiment(f"{PROJECT}/{s}") for s in steps]
    exps.append(client.create_experiment("pxj/load"))  # another project, LIKE-lookalike
    gone = client.create_experiment(f"{PROJECT}/gone")
    client.delete_experiment(gone)
    variants = ["plain", "rf", "it's", "a%b"]
    fingerprints = [f"f{i}" for i in range(4)]
    base = 1_550_000_000_000
    ids = []
    for n in range(n_runs):
        exp = rnd.choice(exps)
        start = base + rnd.choice([0, 1000, 1000, 5000]) * rnd.randint(0, 5)
        variant = rnd.choice(variants)
        key = f"{steps[exps.index(exp) % 4]}/{variant}@2019020{n % 9}000000"
        tags = {
            "relay.key": key,
            "relay.variant": variant,
            "relay.fingerprint": rnd.choice(fingerprints),
        }
        if rnd.random() < 0.3:
            tags["relay.upstream.load"] = rnd.choice(ids) if ids else "none"
        if rnd.random() < 0.2:
            holder = rnd.choice(["ab", "AB", "cd"])
            tags["relay.outputs"] = f'{{"x": "snapshot:{holder}"}}'
        run = client.create_run(exp, start_time=start, tags=tags, run_name=key)
        rid = run.info.run_id
        ids.append(rid)
        params = [Param("C", rnd.choice(["1", "10.0", "0.1"])), Param("seed", str(n % 3))]
        metrics = []
        for name in ("auc", "loss"):
            for step in range(rnd.randint(0, 3)):
                value = rnd.choice([rnd.random(), math.nan]) if name == "loss" else rnd.random()
                metrics.append(Metric(name, value, base + step, step))
        client.log_batch(rid, metrics=metrics, params=params, tags=[RunTag("extra", str(n))])
        if rnd.random() < 0.3:
            ds = Dataset(name=f"d{n % 2}", digest=f"{n:08x}", source_type="relay", source="s")
            ctx = [InputTag("mlflow.data.context", rnd.choice(["training", "eval"]))]
            client.log_inputs(rid, [DatasetInput(ds, tags=ctx)])
        status = rnd.choice(STATUSES)
        if status != "RUNNING":
            client.set_terminated(rid, status=status, end_time=start + 777)
        if rnd.random() < 0.2:
            client.delete_run(rid)
    model = f"{PROJECT}-model"
    client.create_registered_model(model)
    for rid in ids[:3]:
        mv = client.create_model_version(model, f"runs:/{rid}/model", run_id=rid)
        if rid == ids[0]:
            client.set_registered_model_alias(model, "champion", mv.version)
    return {"ids": ids, "variants": variants, "fingerprints": fingerprints}


def _queries(values: dict[str, list[str]]) -> list[tuple[list[str] | None, str, dict]]:
    q: list[tuple[list[str] | None, str, dict]] = [
        (None, "", {}),
        (None, "", {"limit": 1}),
        (None, "", {"limit": 7}),
        (None, "", {"deleted": True}),
        (["training"], "", {}),
        (["nope"], "", {}),
        (None, "attributes.status = 'FINISHED'", {}),
        (None, "attributes.status = 'RUNNING'", {"limit": 3}),
        (
            None,
            "attributes.start_time >= 1550000005000 AND attributes.start_time < 1550000020000",
            {},
        ),
        (None, "params.`C` = '10.0'", {}),
        (None, "params.`C` = '10.0' AND params.`seed` = '1'", {}),
        (None, "tags.`relay.outputs` LIKE '%snapshot:ab%'", {}),
        (None, "tags.`relay.variant` LIKE '%'", {"deleted": True}),
        (None, "tags.`relay.variant` != 'rf'", {}),
        (None, "metrics.auc > 0.5", {}),
    ]
    for v in values["variants"]:
        q.append((None, f"tags.`relay.variant` = '{v.replace(chr(39), chr(92) + chr(39))}'", {}))
    for f in values["fingerprints"]:
        q.append(
            (["load", "processing", "training"],
             f"tags.`relay.fingerprint` = '{f}' AND attributes.status = 'FINISHED'", {"limit": 5})
        )  # fmt: skip
    for rid in values["ids"][:5]:
        q.append((None, f"tags.`relay.upstream.load` = '{rid}'", {}))
    return q


def _stores(uri: str, root: Path) -> tuple[Store, Store]:
    settings = Settings(root=root, project=PROJECT, tracking_uri=uri)
    return Store(settings), Store(settings, read_path=False)


def _same(records: list, entities: list) -> None:
    def norm(x: object) -> tuple:
        return (x if isinstance(x, RunRecord) else RunRecord.from_mlflow(x)).comparable()

    assert [norm(r) for r in records] == [norm(e) for e in entities]


def _check(uri: str, root: Path, reader_type: str, seed: int) -> None:
    values = _build(uri, seed)
    fast, slow = _stores(uri, root)
    assert type(fast.reader).__name__ == reader_type
    assert fast.step_experiments() == slow.step_experiments()
    assert fast.experiment_id("nope", create=False) is None
    for steps, flt, kw in _queries(values):
        got, want = fast.search(steps, flt, **kw), slow.search(steps, flt, **kw)
        assert len(got) == len(want), (flt, kw)
        _same(got, want)
    for rid in [*values["ids"], "0" * 32]:
        got, want = fast.get_run(rid), slow.get_run(rid)
        assert (got is None) == (want is None)
        if got is not None:
            _same([got], [want])
        assert fast.model_versions(rid) == slow.model_versions(rid)
    assert not fast.has_client  # every query above was answered without MLflow's client
    # what the SQL reader does not understand, MLflow's client answers
    some = values["ids"][:3]
    for flt, kw in [
        (f"attributes.run_id IN ('{some[0]}', '{some[1]}')", {}),
        ("", {"order_by": ("attributes.end_time ASC",)}),
    ]:
        _same(fast.search(None, flt, **kw), slow.search(None, flt, **kw))


def test_sqlite_read_path_matches_mlflow(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, "SqlReader", seed=1)


@pytest.mark.slow
def test_postgres_read_path_matches_mlflow(pg_database: str, tmp_path: Path) -> None:
    _check(pg_database, tmp_path, "SqlReader", seed=2)


@pytest.mark.slow
def test_server_read_path_matches_mlflow(mlflow_server: str, tmp_path: Path) -> None:
    _check(mlflow_server, tmp_path, "RestReader", seed=3)


def test_unknown_schema_falls_back_to_mlflow(tmp_path: Path) -> None:
    import sqlalchemy as sa

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    values = _build(uri, seed=4, n_runs=5)
    engine = sa.create_engine(uri)
    with engine.begin() as con:
        con.execute(sa.text("UPDATE alembic_version SET version_num = 'future0000'"))
    engine.dispose()
    fast = _stores(uri, tmp_path)[0]
    assert fast.reader is None
    got = fast.get_run(values["ids"][0])
    assert got is not None and fast.has_client


def test_the_installed_mlflow_schema_is_known(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from relayml.readstore.sql import KNOWN_SCHEMAS, SqlReader

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    reader = SqlReader(uri)
    try:
        assert reader.schema_version() in KNOWN_SCHEMAS, "add the new head to KNOWN_SCHEMAS"
    finally:
        reader.close()


def test_the_sql_reader_cannot_write(tmp_path: Path) -> None:
    from relayml.readstore.sql import SqlReader

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _build(uri, seed=5, n_runs=2)
    reader = SqlReader(uri)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.rows("DELETE FROM runs")
        assert len(reader.rows("SELECT run_uuid FROM runs")) == 2
    finally:
        reader.close()


@pytest.mark.postgres
def test_the_sql_reader_cannot_write_on_postgresql(pg_database: str, tmp_path: Path) -> None:
    import psycopg

    from relayml.readstore.sql import SqlReader

    _build(pg_database, seed=7, n_runs=2)
    reader = SqlReader(pg_database)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            reader.rows("DELETE FROM runs")
        assert len(reader.rows("SELECT run_uuid FROM runs")) == 2
    finally:
        reader.close()


# -- the CLI's reads import no MLflow --------------------------------------------------------

_PROBE = """
import sys
from relayml.cli import main
sys.argv = ["relay", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
heavy = sorted(
    {m.split(".")[0] for m in sys.modules}
    & {"mlflow", "pandas", "sklearn", "sqlalchemy", "duckdb", "pyarrow"}
)
print("HEAVY", ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.slow
def test_reads_in_a_fresh_process_never_import_mlflow(project: Path, relay) -> None:
    assert relay("chain", "load=transactions", "processing=plain", "training=logreg").code == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    commands = [
        ["runs"], ["runs", "--json"], ["show", "training/logreg@latest"],
        ["show", "training/logreg@latest", "--json"], ["lineage", "training/logreg@latest"],
        ["steps"],
        ["compare", "training", "--metric", "test_roc_auc"],
        ["chain", "load=transactions@latest", "processing=plain", "training=logreg"],
    ]  # fmt: skip
    for args in commands:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, *args], cwd=project, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert "Error" not in done.stderr, (args, done.stderr)
        heavy = done.stderr.rsplit("HEAVY", 1)[1].strip()
        assert heavy == "", (args, heavy)
    assert "reused" in done.stdout and "new" not in done.stdout


def test_importing_relayml_and_the_cli_pulls_no_heavy_library() -> None:
    code = (
        "import sys, relayml, relayml.cli, relayml.runs, relayml.chain, relayml.store;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'mlflow', 'pandas', 'sklearn', 'sqlalchemy', 'httpx'}))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_mlflow_imported_after_a_read_follows_the_project_store(tmp_path: Path) -> None:
    """Reads do not import MLflow, yet whoever imports it next (loading a bundle, serving)
    finds MLflow's fluent API pointed at the store the read used."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _build(uri, seed=6, n_runs=2)
    code = (
        "import sys; from pathlib import Path\n"
        "from relayml.config import Settings\n"
        "from relayml.store import get_store\n"
        f"store = get_store(Settings(root=Path({str(tmp_path)!r}), project='p_j', "
        f"tracking_uri={uri!r}))\n"
        "assert store.step_experiments() and 'mlflow' not in sys.modules\n"
        "import mlflow\n"
        "print(mlflow.get_tracking_uri(), mlflow.get_registry_uri())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [uri, uri], out.stderr[-2000:]


def test_server_reads_use_the_credentials_of_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process acting for another user reads as that user (MLflow reads them per request)."""
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from relayml.readstore.rest import RestReader

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization", ""))
            body = json.dumps({"experiments": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = RestReader(f"http://127.0.0.1:{server.server_address[1]}")
        for user in ("bob", "alice"):
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", f"{user}-pw")
            assert reader.experiments("p/") == {}
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
        reader.experiments("p/")
        reader.close()
    finally:
        server.shutdown()
        server.server_close()
    users = [base64.b64decode(h.split()[1]).decode() for h in seen[:2]]
    assert users == ["bob:bob-pw", "alice:alice-pw"]
    assert seen[2] == "Bearer t0ken"
