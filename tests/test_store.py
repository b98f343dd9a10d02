"""The tracking store: relay's lookup indexes on SQLite and PostgreSQL backends."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

import relayml


def _indexes(uri: str) -> set[str]:
    engine = sa.create_engine(uri)
    try:
        inspector = sa.inspect(engine)
        return {i["name"] for table in ("tags", "runs") for i in inspector.get_indexes(table)}
    finally:
        engine.dispose()


def test_a_project_store_gets_relay_indexes(project: Path) -> None:
    relayml.run("load", "transactions")
    names = _indexes(f"sqlite:///{project / '.relay' / 'mlflow.db'}")
    assert {"relay_tags_key_value", "relay_runs_experiment_start"} <= names


def test_postgres_backend_gets_hash_index(pg_database: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from relayml.store import ensure_indexes

    MlflowClient(pg_database).search_experiments()  # MLflow creates its schema
    ensure_indexes(pg_database)
    ensure_indexes(pg_database)  # idempotent
    assert {"relay_tags_value_hash", "relay_runs_experiment_start"} <= _indexes(pg_database)
    # long tag values still fit (a btree index would refuse rows over ~2.7 kB)
    client = MlflowClient(pg_database)
    exp = client.create_experiment("long-tags")
    run = client.create_run(exp)
    client.set_tag(run.info.run_id, "relay.error", "x" * 7000)
    assert len(client.get_run(run.info.run_id).data.tags["relay.error"]) == 7000
