"""The tracking store: relay's lookup indexes on SQLite and PostgreSQL backends."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_a_new_store_is_a_copy_of_the_cached_migrated_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's migration chain runs once per MLflow version; a tampered cache is not used."""
    import os
    import sqlite3

    import mlflow
    from outputs_project import write

    from relayml.config import load_settings
    from relayml.store import get_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "relayml" / f"mlflow-{mlflow.__version__}-sqlite-schema.db"

    def new_store(name: str) -> tuple[Path, list]:
        root = write(tmp_path / name)
        client = get_store(load_settings(root)).client
        return root, client.search_experiments()

    _, experiments = new_store("first")
    assert cached.is_file() and oct(cached.stat().st_mode & 0o777) == "0o600"
    assert [e.name for e in experiments] == ["Default"]  # MLflow's own, made for this store
    made = cached.stat().st_mtime_ns
    second, experiments = new_store("second")
    assert cached.stat().st_mtime_ns == made  # copied, not migrated again
    assert [e.name for e in experiments] == ["Default"]
    run = relayml.run("load", "rows", project=second)  # a working store
    assert relayml.get("load@latest", project=second) == run

    with sqlite3.connect(cached) as con:  # something in it that a new store must not carry
        con.execute(
            "INSERT INTO experiments (experiment_id, name, lifecycle_stage, creation_time, "
            "last_update_time, workspace) VALUES (7, 'planted', 'active', 0, 0, 'default')"
        )
    _, experiments = new_store("third")
    assert [e.name for e in experiments] == ["Default"]  # not the planted one
    assert cached.stat().st_mtime_ns != made  # rebuilt by MLflow's migrations

    os.chmod(cached, 0o666)  # others may write it: not used, and written again privately
    _, experiments = new_store("fourth")
    assert oct(cached.stat().st_mode & 0o777) == "0o600"
