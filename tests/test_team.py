"""Team mode: ``relay server`` and many data scientists at once, on PostgreSQL and on SQLite.

The concurrency tests start real client processes (the client of ``bench/team.py``) that for
``RELAY_STRESS_SECONDS`` (default 5 here; ``bench/team.py`` runs the long form) send overlapping
``relay chain`` and ``relay run`` requests, then check the store: no client saw an error, no
run reported to a client is lost, no two runs share a key, every chain record is coherent, and
each identical missing step was computed once. The counts are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from relayml.errors import UsageError

from conftest import ROOT, free_port, relay_process, wait_http

sys.path.insert(0, str(ROOT / "bench"))
import team

SECONDS = float(os.environ.get("RELAY_STRESS_SECONDS", "5"))


def _report(title: str, counts: dict) -> None:
    shown = {k: v for k, v in counts.items() if k != "problems"}
    print(f"\n{title}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    for p in counts["problems"]:
        print(f"  problem: {p}")


def _stress(project: Path, clients: int, env: dict[str, str], work: Path, title: str) -> dict:
    load_id = team.seed_load(project, env)
    results, _ = team.run_clients(project, load_id, clients, SECONDS, env, work)
    counts = team.verify(project, results)
    _report(title, counts)
    assert counts["problems"] == []
    assert counts["errors"] == 0
    assert counts["requests"] >= clients
    assert counts["chain_records"] >= 1
    assert counts["lost_runs"] == counts["shared_keys"] == counts["incoherent_chains"] == 0
    assert counts["computed_twice"] == 0
    return counts


@pytest.mark.postgres
@pytest.mark.slow
def test_eight_clients_on_a_postgres_server(
    project: Path, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TRACKING_URI", mlflow_server)
    _stress(
        project, 8, {"RELAY_TRACKING_URI": mlflow_server}, tmp_path / "work",
        f"8 clients, MLflow server on PostgreSQL, {SECONDS:.0f}s",
    )  # fmt: skip


@pytest.mark.slow
def test_four_clients_on_the_embedded_sqlite_store(project: Path, tmp_path: Path) -> None:
    counts = _stress(
        project, 4, {}, tmp_path / "work",
        f"4 clients, embedded SQLite store, {SECONDS:.0f}s",
    )  # fmt: skip
    assert "locked" not in json.dumps(counts)


# -- relay server ----------------------------------------------------------------------------


def test_server_command_line(project: Path) -> None:
    from relayml.cli.team import server_command
    from relayml.config import load_settings

    s = load_settings(project)
    argv, env = server_command(s, port=5123, workers=3)
    assert "--backend-store-uri" not in argv  # in the environment: ps shows argv to everyone
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{project}/.relay/mlflow.db"
    assert argv[argv.index("--artifacts-destination") + 1] == str(project / ".relay/artifacts")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--app-name" not in argv and argv[argv.index("--workers") + 1] == "3"
    argv, env = server_command(s, backend="postgresql+psycopg://u@h/db", artifacts="s3://b/m")
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://u@h/db" and "s3://b/m" in argv


def test_server_auth_needs_an_admin_password(relay, project: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    result = relay("server", "--auth")
    assert result.code == 2
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in result.err


def test_server_auth_caches_checked_passwords_for_a_minute(project: Path, monkeypatch) -> None:
    """MLflow hashes the password of every request; its credential cache is on (60 s)."""
    from relayml.cli.team import server_command
    from relayml.config import load_settings

    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-Pw-123456")
    s = load_settings(project)
    _, env = server_command(s, auth=True)
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    assert "auth_cache_ttl_seconds = 60\n" in ini and "admin-Pw" not in ini
    monkeypatch.setenv("RELAY_AUTH_CACHE_SECONDS", "0")
    _, env = server_command(s, auth=True)
    assert "auth_cache_ttl_seconds = 0\n" in Path(env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()
    monkeypatch.setenv("RELAY_AUTH_CACHE_SECONDS", "a minute")
    with pytest.raises(UsageError, match="RELAY_AUTH_CACHE_SECONDS='a minute'"):
        server_command(s, auth=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_relay_server_on_postgres_with_auth(
    project: Path, pg_empty_database: str, tmp_path: Path, relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real thing: PG backend (password from an env var), proxied artifacts, basic auth."""
    import httpx
    import sqlalchemy as sa

    secret = "s3cr3t-Pw"
    with sa.create_engine(pg_empty_database).connect() as con:  # a role with a password
        con.execute(sa.text("DROP ROLE IF EXISTS relay_team_test"))
        con.execute(sa.text(f"CREATE ROLE relay_team_test LOGIN PASSWORD '{secret}'"))
        db = sa.engine.make_url(pg_empty_database).database
        con.execute(sa.text(f'GRANT ALL ON DATABASE "{db}" TO relay_team_test'))
        con.execute(sa.text("GRANT ALL ON SCHEMA public TO relay_team_test"))
        con.commit()
    backend = (
        sa.engine.make_url(pg_empty_database)
        .set(username="relay_team_test", password=None)
        .render_as_string(hide_password=False)
    )
    port = free_port()
    env = {"RELAY_DB_PASSWORD": secret, "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-Pw-123456"}
    server = relay_process(
        "server", "--backend", backend, "--password-env", "RELAY_DB_PASSWORD",
        "--artifacts", str(tmp_path / "store"), "--port", str(port), "--auth", "--workers", "1",
        cwd=project, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, proc=server)
        assert (
            httpx.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
        )
        monkeypatch.setenv("RELAY_TRACKING_URI", url)  # the client: the CLI in this process
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-Pw-123456")
        run = relay("run", "load", "transactions", "--json")
        assert run.code == 0, run
        assert json.loads(run.out)["status"] == "FINISHED"
        assert "admin-Pw-123456" not in run.out + run.err
        # the artifacts went through the server into its store
        assert any((tmp_path / "store").rglob("*.parquet"))
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")  # anonymous from now on
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        anonymous = relay("runs")
        assert anonymous.code == 1, anonymous
        assert "HTTP 401" in anonymous.err and "MLFLOW_TRACKING_USERNAME" in anonymous.err
        assert "Traceback" not in anonymous.err
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert secret not in out + err
    assert "relay_team_test:***@" in err
    with sa.create_engine(pg_empty_database).connect() as con:  # the role must go before the db
        con.execute(sa.text(f'REASSIGN OWNED BY relay_team_test TO "{con.engine.url.username}"'))
        con.execute(sa.text("DROP OWNED BY relay_team_test"))
        con.execute(sa.text("DROP ROLE relay_team_test"))
        con.commit()


def test_ui_points_at_the_server_of_a_team_project(project: Path) -> None:
    import httpx

    port, server = free_port(), "http://127.0.0.1:59999"
    env = {"RELAY_TRACKING_URI": server}
    proc = relay_process("ui", "--port", str(port), cwd=project, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/relay/static/relay.css", timeout=60, proc=proc)
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)  # MLflow's UI: the server's
        assert answer.status_code == 502 and server in answer.text  # (nothing listens there)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert server in err
