"""Data versions end to end: snapshots, digests, datasets, dedup, --as-of, several sources,
redaction, and failing sources — through `relay run` on the fraud example."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

import relayml

from conftest import make_project


def add_code(root: Path, code: str) -> None:
    with open(root / "steps.py", "a") as f:
        f.write("\n\n" + textwrap.dedent(code))


def set_source(root: Path, url: str, password_env: str | None = None) -> None:
    text = (root / "relay.toml").read_text()
    start = text.index("[sources.fraud]")
    end = text.index("[execution]")
    block = f'[sources.fraud]\nurl = "{url}"\n'
    if password_env:
        block += f'password_env = "{password_env}"\n'
    (root / "relay.toml").write_text(text[:start] + block + "\n" + text[end:])


def test_load_is_a_data_version_seen_by_mlflow(project: Path, relay) -> None:
    assert relay("run", "load", "transactions").code == 0
    assert relay("run", "processing", "plain").code == 0
    load = relayml.get("load@latest")
    processing = relayml.get("processing@latest")
    digest = load.data_version
    assert len(digest) == 32 and processing.data_version == digest
    assert processing.data_keys == [str(load.key)]
    info = json.loads(
        load.store.download(
            load.run_id, "snapshots/fraud.json", project / ".relay" / "x"
        ).read_text()
    )
    assert info["rows"] == 4500 and info["digest"] == digest
    assert "ts <= :retrieval_time" in info["query"] and info["schema"]["Amount"] == "double"
    # plain MLflow: the dataset is an input of both runs, and datasets.digest filters work
    from mlflow.tracking import MlflowClient

    client = MlflowClient(load.settings.tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(exps, f"datasets.digest = '{digest}'")
    assert {r.info.run_id for r in found} >= {load.run_id, processing.run_id}
    assert load.mlflow.inputs.dataset_inputs[0].dataset.digest == digest


def test_identical_data_is_stored_once_and_shown_unchanged(project: Path, relay) -> None:
    for _ in range(2):
        assert relay("run", "load", "transactions").code == 0
    first, second = relayml.runs("load")[::-1]
    assert first.data_version == second.data_version
    assert first.outputs == second.outputs  # both point to the same snapshot holder
    holders = relayml.get("load@latest").store.search(["snapshots"])
    assert len(holders) == 1
    table = relay("runs", "load")
    assert "(unchanged)" in table.out


def test_as_of_repeats_an_old_data_version_of_a_growing_table(project: Path, relay) -> None:
    import generate

    assert relay("run", "load", "transactions", "--as-of", "2019-02-02T12:00:00").code == 0
    old = relayml.get("load@latest")
    generate.generate(f"sqlite:///{project / 'data' / 'fraud.db'}", append=2, rows_per_day=1500)
    assert relay("run", "load", "transactions").code == 0
    grown = relayml.get("load@latest")
    assert grown.data_version != old.data_version
    assert relay("run", "load", "transactions", "--as-of", "2019-02-02T12:00:00").code == 0
    again = relayml.get("load@latest")
    assert again.data_version == old.data_version
    assert again.params["as_of"].startswith("2019-02-02T12:00:00")
    assert again.tags["relay.retrieval_time"].startswith("2019-02-02T12:00:00")


def test_two_load_steps_combine_into_one_data_version(project: Path, relay) -> None:
    (project / "data" / "customers.csv").write_text("id,segment\n1,retail\n2,corporate\n")
    text = (project / "relay.toml").read_text()
    (project / "relay.toml").write_text(
        text.replace(
            "[execution]", '[sources.customers]\npath = "data/customers.csv"\n\n[execution]'
        )
    )
    add_code(
        project,
        """
        customers = relay.step("customers")
        enriched = relay.step("enriched", upstream=[load, customers])

        @customers.variant("csv")
        def customers_csv(ctx):
            return ctx.read("customers")

        @enriched.variant("join")
        def join(load, customers):
            return {"rows": len(load) + len(customers)}
        """,
    )
    assert relay("run", "load", "transactions").code == 0
    assert relay("run", "customers", "csv").code == 0
    assert relay("run", "enriched", "join").code == 0, relay
    load, cust, both = (
        relayml.get(r) for r in ("load@latest", "customers@latest", "enriched@latest")
    )
    assert both.data_version not in (load.data_version, cust.data_version)
    assert sorted(both.data_keys) == sorted([str(load.key), str(cust.key)])
    assert set(both.upstream) == {"load", "customers"}
    assert {d.dataset.name for d in both.mlflow.inputs.dataset_inputs} == {"fraud", "customers"}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC * FROM transactions", "syntax error"),
        ("SELECT * FROM no_such_table", "no such table"),
    ],
)
def test_failing_query_leaves_a_failed_run_and_no_snapshot(project: Path, relay, sql, message):
    add_code(
        project,
        f"""
        @load.variant("broken")
        def broken(ctx):
            return ctx.query("fraud", {sql!r})
        """,
    )
    r = relay("run", "load", "broken")
    assert r.code == 1, r
    assert message in r.err
    run = relayml.runs("load", status="FAILED")[0]
    assert message in run.tags["relay.error"]
    assert not run.mlflow.inputs.dataset_inputs
    assert not [a for a in run.artifacts if a.endswith(".parquet")]
    assert not run.store.search(["snapshots"])


def test_empty_result_fails_its_checks_unless_skipped(project: Path, relay) -> None:
    """An empty load stops at the default check (min_rows=1); --no-checks records it."""
    r = relay("run", "load", "transactions", "--as-of", "2000-01-01T00:00:00")
    assert r.code == 1 and "min_rows" in r.err and "--no-checks" in r.err, r
    failed = relayml.runs("load", status="FAILED")[0]
    assert failed.tags["relay.checks"] == "failed"
    assert not relayml.runs("load", status="FINISHED")
    r = relay("run", "load", "transactions", "--as-of", "2000-01-01T00:00:00", "--no-checks")
    assert r.code == 0, r
    assert "0 rows" in r.err
    run = relayml.get("load@latest")
    assert run.tags["relay.snapshot.fraud.rows"] == "0"
    assert run.tags["relay.checks"] == "skipped"


def test_unreachable_database_fails_clearly(project: Path, relay) -> None:
    set_source(project, "postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    r = relay("run", "load", "transactions")
    assert r.code == 1 and "load/transactions@" in r.err, r
    assert relayml.runs("load", status="FAILED")


def test_password_never_reaches_the_store(pg_database: str, tmp_path: Path, monkeypatch, relay):
    """A PostgreSQL source with a password: grep the tracking store and every artifact."""
    import generate
    import sqlalchemy as sa

    generate.generate(pg_database, days=2, rows_per_day=500)
    secret = "S3cret-Pa55word-xyz"
    root = make_project(tmp_path / "fraud", days=1, rows_per_day=10)
    url = sa.engine.make_url(pg_database)
    set_source(root, url.set(password=None).render_as_string(), password_env="FRAUD_DB_PASSWORD")
    monkeypatch.setenv("FRAUD_DB_PASSWORD", secret)  # trust auth ignores it; relay must hide it
    monkeypatch.chdir(root)
    add_code(
        root,
        """
        @load.variant("broken")
        def broken(ctx):
            return ctx.query("fraud", "SELECT * FROM missing_table")
        """,
    )
    assert relay("run", "load", "transactions").code == 0
    assert relay("run", "processing", "plain").code == 0
    r = relay("run", "load", "broken")
    assert r.code == 1 and secret not in r.err + r.out
    assert relayml.get("load/transactions@latest").tags["relay.snapshot.fraud.rows"] == "1000"
    leaks = [
        p for p in (root / ".relay").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert leaks == []
    con = sqlite3.connect(root / ".relay" / "mlflow.db")
    for table in ("params", "tags", "datasets", "latest_metrics"):
        dump = "\n".join(map(str, con.execute(f"SELECT * FROM {table}").fetchall()))
        assert secret not in dump, table
