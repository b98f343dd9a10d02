"""Team mode: a colleague's malicious output never runs on your machine.

Two users of one ``relay server --auth`` (PostgreSQL backend, proxied artifacts): bob, whose
project allows pickles, publishes a processing run whose output is a real malicious pickle
(unpickling it writes a marker file); alice, who allows pickles too but does not list bob in
``trusted_users``, trains on it: her run fails with a clear error and the marker is never
written. Once she trusts bob, the output loads.
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


def _relay(project: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = relay_process(*args, cwd=project, env=env)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.postgres
@pytest.mark.slow
def test_a_colleagues_malicious_pickle_never_runs(pg_database: str, tmp_path: Path) -> None:
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

        def as_user(user: str) -> dict[str, str]:
            return {
                "RELAY_TRACKING_URI": url,
                "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": f"{user}-Pw-123456",
            }

        for args in (("load", "rows"), ("processing", "evil", "-P", f"marker={marker}")):
            code, out, err = _relay(bob, as_user("bob"), "run", *args, "--json")
            assert code == 0, err
        assert json.loads(out)["status"] == "FINISHED"
        assert not marker.exists()

        code, out, err = _relay(alice, as_user("alice"), "run", "training", "use")
        assert code == 1, (out, err)
        assert "output 'box'" in err and "written by 'bob'" in err
        assert "[outputs] trusted_users" in err
        assert "Traceback" not in err
        assert not marker.exists()
        code, out, err = _relay(alice, as_user("alice"), "runs", "training", "--json")
        assert [r["status"] for r in json.loads(out)] == ["FAILED"], (out, err)

        set_outputs(alice, 'allow_pickle = true\ntrusted_users = ["bob"]')
        code, out, err = _relay(alice, as_user("alice"), "run", "training", "use")
        assert code == 0, err
        assert marker.read_text() == "pwned"  # trusted: bob's pickle was loaded (and ran)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)
