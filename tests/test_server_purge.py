"""``relay server --purge-deleted-after``: rows of runs deleted long enough ago go by themselves."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import free_port, relay_process, wait_http


def test_purge_deleted_after_needs_an_age(relay, project: Path) -> None:
    bad = relay("server", "--purge-deleted-after", "soon")
    assert bad.code == 2 and "--purge-deleted-after" in bad.err and "1d" in bad.err


@pytest.mark.slow
def test_server_purges_runs_deleted_longer_ago(project: Path, tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    port = free_port()
    server = relay_process(
        "server", "--port", str(port), "--artifacts", str(tmp_path / "store"),
        "--purge-deleted-after", "2s", "--workers", "1",
        cwd=project, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, proc=server)
        client = MlflowClient(tracking_uri=url)
        exp = client.create_experiment("fraud/purge")
        kept, doomed = client.create_run(exp), client.create_run(exp)
        client.log_text(doomed.info.run_id, "x" * 1000, "file.txt")
        client.delete_run(doomed.info.run_id)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                client.get_run(doomed.info.run_id)
            except MlflowException:
                break  # purged: row and files
            time.sleep(1)
        else:
            pytest.fail("the deleted run was not purged within 90 s")
        assert client.get_run(kept.info.run_id).info.lifecycle_stage == "active"
        folder = tmp_path / "store" / exp / doomed.info.run_id  # MLflow's gc leaves it empty
        assert not any(p.is_file() for p in folder.rglob("*")), list(folder.rglob("*"))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        err = server.communicate(timeout=30)[1]
    assert "purges" in err and "failed" not in err, err[-2000:]
