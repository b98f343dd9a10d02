"""Team mode: ``relay server`` and many data scientists at once, on PostgreSQL and on SQLite.

The concurrency tests start real client processes (the client of ``bench/team.py``) that for
``RELAY_STRESS_SECONDS`` (default 5 here; ``bench/team.py`` runs the long form) send overlapping
``relay chain`` and ``relay run`` requests, then check the store: no client saw an error, no
run reported to a client is lost, no two runs share a key, every chain record is coherent, and
each identical missing step was computed once. The counts are printed (``pytest -s``).

One ``relay server --auth`` on PostgreSQL serves the module's auth tests (``auth_server``): runs
as the admin, anonymous refusals, and two users of whom one publishes a malicious pickle that
the other's training never unpickles.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from outputs_project import set_outputs, write

from relayml.errors import UsageError

from conftest import (
    ROOT,
    free_port,
    fresh_database,
    login_role,
    make_project,
    relay_process,
    wait_http,
)

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


ADMIN = ("admin", "admin-Pw-123456")
SECRET = "s3cr3t-Pw"  # the database role's password, given to relay server in a variable


@pytest.fixture(scope="module")
def auth_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The real thing, shared by the module's team tests: ``relay server --auth`` on a
    PostgreSQL database of its own, logged in as a role whose password comes from an
    environment variable (``--password-env``), artifacts proxied into a folder.

    Yields ``{"url", "store", "project"}``. At the end the server's output must hold the
    role's URL with its password masked, and never the password itself.
    """
    project = make_project(tmp_path_factory.mktemp("team-auth") / "fraud")
    store = project.parent / "store"
    for database in fresh_database(postgres_url, template=None):
        with login_role(database, "relay_team_test", SECRET) as backend:
            port = free_port()
            env = {"RELAY_DB_PASSWORD": SECRET, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1]}
            server = relay_process(
                "server", "--backend", backend, "--password-env", "RELAY_DB_PASSWORD",
                "--artifacts", str(store), "--port", str(port), "--auth", "--workers", "1",
                cwd=project, env=env, start_new_session=True,
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                wait_http(f"{url}/health", timeout=300, proc=server)  # a busy machine: slow start
                yield {"url": url, "store": store, "project": project}
            finally:
                if server.poll() is None:
                    os.killpg(server.pid, signal.SIGTERM)
                out, err = server.communicate(timeout=30)
        assert SECRET not in out + err
        assert "relay_team_test:***@" in err


@pytest.mark.postgres
@pytest.mark.slow
def test_relay_server_on_postgres_with_auth(
    auth_server: dict, relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs go through the server as its admin; anonymous requests are refused clearly."""
    import httpx

    url = auth_server["url"]
    assert httpx.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    monkeypatch.chdir(auth_server["project"])
    monkeypatch.setenv("RELAY_TRACKING_URI", url)  # the client: the CLI in this process
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN[1])
    run = relay("run", "load", "transactions", "--json")
    assert run.code == 0, run
    assert json.loads(run.out)["status"] == "FINISHED"
    assert ADMIN[1] not in run.out + run.err
    # the artifacts went through the server into its store
    assert any(auth_server["store"].rglob("*.parquet"))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")  # anonymous from now on
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    anonymous = relay("runs")
    assert anonymous.code == 1, anonymous
    assert "HTTP 401" in anonymous.err and "MLFLOW_TRACKING_USERNAME" in anonymous.err
    assert "Traceback" not in anonymous.err


def _as(monkeypatch: pytest.MonkeyPatch, project: Path, url: str, user: str) -> None:
    """Work in ``project`` as ``user`` of the server (the CLI runs in this process)."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("RELAY_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", f"{user}-Pw-123456")


@pytest.mark.postgres
@pytest.mark.slow
def test_a_colleagues_malicious_pickle_never_runs(
    auth_server: dict, tmp_path: Path, relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two users of the server (the CLI runs in the test's process, as each user in turn):
    bob, whose project allows pickles, publishes a processing run whose output is a real
    malicious pickle (unpickling it writes a marker file); alice, who allows pickles too but
    does not list bob in ``trusted_users``, trains on it: her run fails with a clear error and
    the marker is never written. Once she trusts bob, the output loads."""
    import httpx

    url = auth_server["url"]
    bob = write(tmp_path / "bob" / "tiny", "allow_pickle = true")
    alice = write(tmp_path / "alice" / "tiny", "allow_pickle = true")
    marker = tmp_path / "pwned"
    for user in ("alice", "bob"):
        made = httpx.post(
            f"{url}/api/2.0/mlflow/users/create",
            json={"username": user, "password": f"{user}-Pw-123456"},
            auth=ADMIN,
        )
        assert made.status_code == 200, made.text

    _as(monkeypatch, bob, url, "bob")
    for args in (("load", "rows"), ("processing", "evil", "-P", f"marker={marker}")):
        done = relay("run", *args, "--json")
        assert done.code == 0, done
    assert json.loads(done.out)["status"] == "FINISHED"
    assert not marker.exists()

    _as(monkeypatch, alice, url, "alice")
    used = relay("run", "training", "use")
    assert used.code == 1, used
    assert "output 'box'" in used.err and "written by 'bob'" in used.err
    assert "[outputs] trusted_users" in used.err
    assert "Traceback" not in used.err
    assert not marker.exists()
    listed = relay("runs", "training", "--json")
    assert [r["status"] for r in json.loads(listed.out)] == ["FAILED"], listed

    set_outputs(alice, 'allow_pickle = true\ntrusted_users = ["bob"]')
    used = relay("run", "training", "use")
    assert used.code == 0, used
    assert marker.read_text() == "pwned"  # trusted: bob's pickle was loaded (and ran)


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
