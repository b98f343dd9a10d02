"""Team mode: a colleague's malicious output never runs on your machine.

Two users of one ``relay server --auth`` (PostgreSQL backend, proxied artifacts; the CLI runs
in the test's process, as each user in turn): bob, whose project allows pickles, publishes a
processing run whose output is a real malicious pickle (unpickling it writes a marker file);
alice, who allows pickles too but does not list bob in ``trusted_users``, trains on it: her run
fails with a clear error and the marker is never written. Once she trusts bob, the output
loads.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from outputs_project import set_outputs, write

from conftest import free_port, relay_process, wait_http

ADMIN = ("admin", "admin-Pw-123456")


def _as(monkeypatch: pytest.MonkeyPatch, project: Path, url: str, user: str) -> None:
    """Work in ``project`` as ``user`` of the server (the CLI runs in this process)."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("RELAY_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", f"{user}-Pw-123456")


@pytest.mark.postgres
@pytest.mark.slow
def test_a_colleagues_malicious_pickle_never_runs(
    pg_database: str, tmp_path: Path, relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    bob = write(tmp_path / "bob" / "tiny", "allow_pickle = true")
    alice = write(tmp_path / "alice" / "tiny", "allow_pickle = true")
    marker = tmp_path / "pwned"
    port = free_port()
    server = relay_process(
        "server", "--backend", pg_database, "--artifacts", str(tmp_path / "store"),
        "--port", str(port), "--auth", "--workers", "1",
        cwd=bob, env={"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1]}, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=300, proc=server)  # a busy machine: slow start
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
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)
