"""``relay promote``, ``relay delete`` and ``relay gc`` end to end on the fraud example."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import relayml as rl
from relayml.runs import open_project
from relayml.store import get_store

from conftest import relay_process


def _folder(run_id: str) -> Path | None:
    """The local artifact folder of a run (None when the run is gone from the store)."""
    store = get_store(open_project())
    entity = store.get_run(run_id)
    if entity is None:
        return None
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(entity.info.artifact_uri).path)).parent


def _gone(project: Path, run_id: str, folder: Path) -> None:
    store = get_store(open_project())
    assert store.get_run(run_id) is None, f"{run_id} still in the store"
    assert not folder.exists(), f"{folder} still on disk"
    assert not (project / ".relay" / "cache" / run_id).exists()


def _model_folder(model_uri: str) -> Path:
    store = get_store(open_project())
    model = store.client.get_logged_model(model_uri.removeprefix("models:/"))
    return Path(model.artifact_location.removeprefix("file://")).parent


def test_delete_refuses_cascades_and_keeps_shared_snapshots(project: Path, relay) -> None:
    load = rl.run("load", "transactions")
    plain = rl.run("processing", "plain", upstream=[load])
    robust = rl.run("processing", "robust", upstream=[load])
    plain.load("train")  # fill the cache

    missing = relay("delete", "processing/plain@20000101000000", "--yes")
    assert missing.code == 2 and "no run matches" in missing.err, missing

    refused = relay("delete", str(load.key), "--yes")
    assert refused.code == 2, refused
    assert str(plain.key) in refused.err and str(robust.key) in refused.err
    assert "--cascade" in refused.err

    no_tty = relay("delete", str(plain.key))
    assert no_tty.code == 2 and "--yes" in no_tty.err, no_tty

    dry = relay("delete", str(load.key), "--cascade", "--dry-run")
    assert dry.code == 0 and "frees" in dry.out and str(robust.key) in dry.out, dry
    assert rl.get(str(load.key)).status == "FINISHED"

    folder = _folder(plain.run_id)
    assert folder is not None and folder.exists()
    done = relay("delete", str(plain.key), "--yes")
    assert done.code == 0 and "freed" in done.out, done
    _gone(project, plain.run_id, folder)
    assert rl.get(str(robust.key)).load("train").shape[0] > 0  # the sibling is intact

    again = rl.run("load", "transactions")  # same data: shares the snapshot holder
    assert again.data_version == load.data_version
    holder = load.tags["relay.snapshot.fraud"]
    assert again.tags["relay.snapshot.fraud"] == holder
    folders = {r.run_id: _folder(r.run_id) for r in (load, robust)}
    cascade = relay("delete", str(load.key), "--cascade", "--yes")
    assert cascade.code == 0, cascade
    for run_id, f in folders.items():
        _gone(project, run_id, f)
    assert get_store(open_project()).get_run(holder) is not None  # still used by `again`
    assert rl.get(str(again.key)).load().shape[0] > 0

    folder = _folder(again.run_id)
    holder_folder = _folder(holder)
    last = relay("delete", again.run_id, "--yes")
    assert last.code == 0, last
    _gone(project, again.run_id, folder)
    _gone(project, holder, holder_folder)  # its last user is gone


def test_promote_and_delete_with_registry(project: Path, relay) -> None:
    load = rl.run("load", "transactions")
    proc = rl.run("processing", "plain", upstream=[load])
    train = rl.run("training", "logreg", {"cv": 2, "C": 1.0}, upstream=[proc])

    bad = relay("promote", str(proc.key))
    assert bad.code == 2 and "no bundle" in bad.err, bad
    done = relay("promote", str(train.key), "--json")
    assert done.code == 0 and '"uri": "models:/fraud@champion"' in done.out, done
    client = get_store(open_project()).client
    assert client.get_model_version_by_alias("fraud", "champion").run_id == train.run_id
    show = relay("show", str(train.key))
    assert "registered fraud version 1" in show.out, show  # aliases: see relay show

    refused = relay("delete", str(proc.key), "--cascade", "--yes")
    assert refused.code == 2 and "champion" in refused.err and "--force" in refused.err, refused
    direct = relay("delete", str(train.key), "--yes")
    assert direct.code == 2 and "champion" in direct.err, direct

    model_folder = _model_folder(train.model_uri)
    assert model_folder.exists()
    folders = {r.run_id: _folder(r.run_id) for r in (proc, train)}
    forced = relay("delete", str(proc.key), "--cascade", "--force", "--yes")
    assert forced.code == 0, forced
    for run_id, f in folders.items():
        _gone(project, run_id, f)
    assert not model_folder.exists()
    assert client.search_model_versions("name = 'fraud'") == []
    assert rl.get(str(load.key)).load().shape[0] > 0


def test_gc_purges_runs_deleted_through_mlflow(project: Path, relay) -> None:
    load = rl.run("load", "transactions")
    plain = rl.run("processing", "plain", upstream=[load])
    robust = rl.run("processing", "robust", upstream=[load])
    store = get_store(open_project())
    folder = _folder(plain.run_id)
    robust.load("processor")

    bad = relay("gc", "--older-than", "-1d")
    assert bad.code == 2 and "older-than" in bad.err, bad
    bad = relay("gc", "--older-than", "soon")
    assert bad.code == 2, bad

    store.client.delete_run(plain.run_id)  # plain MLflow, as the UI does
    recent = relay("gc", "--older-than", "30d")
    assert recent.code == 0 and store.get_run(plain.run_id) is not None, recent
    dry = relay("gc", "--dry-run")
    assert dry.code == 0 and str(plain.key) in dry.out and folder.exists(), dry

    done = relay("gc")
    assert done.code == 0 and "freed" in done.out, done
    _gone(project, plain.run_id, folder)
    assert rl.get(str(robust.key)).load("train").shape[0] > 0
    assert rl.get(str(load.key)).load().shape[0] > 0
    assert relay("gc").out.strip() == "nothing to purge"


# The process is SIGKILLed right after it purged its first run (files and row).
CRASH_AFTER_ONE_PURGE = """
import os, signal
from relayml.store import Store
purge = Store.hard_delete_run
def crash(self, run_id):
    purge(self, run_id)
    os.kill(os.getpid(), signal.SIGKILL)
Store.hard_delete_run = crash
"""


def test_interrupted_delete_is_finished_by_a_rerun(project: Path, relay) -> None:
    load = rl.run("load", "transactions")
    plain = rl.run("processing", "plain", upstream=[load])
    robust = rl.run("processing", "robust", upstream=[load])
    folders = {r.run_id: _folder(r.run_id) for r in (load, plain, robust)}
    proc = relay_process(
        "delete", str(load.key), "--cascade", "--yes", cwd=project, patch=CRASH_AFTER_ONE_PURGE
    )  # fmt: skip
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    store = get_store(open_project())
    states = [store.get_run(i) for i in folders]
    assert sum(s is None for s in states) == 1  # one purged, the others marked deleted
    assert all(s is None or s.info.lifecycle_stage == "deleted" for s in states)

    rerun = relay("delete", load.run_id, "--cascade", "--yes")
    assert rerun.code == 0, rerun
    for run_id, f in folders.items():
        _gone(project, run_id, f)
    assert relay("gc").out.strip() == "nothing to purge"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_interrupted_gc_is_finished_by_gc(project: Path, relay) -> None:
    load = rl.run("load", "transactions")
    plain = rl.run("processing", "plain", upstream=[load])
    robust = rl.run("processing", "robust", upstream=[load])
    store = get_store(open_project())
    folders = {r.run_id: _folder(r.run_id) for r in (plain, robust)}
    for run_id in folders:
        store.client.delete_run(run_id)
    proc = relay_process("gc", cwd=project, patch=CRASH_AFTER_ONE_PURGE)
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    assert relay("gc").code == 0
    for run_id, f in folders.items():
        _gone(project, run_id, f)
    assert rl.get(str(load.key)).load().shape[0] > 0
    assert os.path.exists(project / ".relay" / "mlflow.db")


@pytest.mark.postgres
def test_delete_on_a_tracking_server(
    project: Path,
    relay,
    mlflow_server: str,
    pg_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against a server: the same refusals and cascade; runs are marked deleted through the
    REST API, their artifact folders are removed from the server's disk through its artifact
    API, and the server's own `mlflow gc` then purges the rows."""
    import subprocess

    monkeypatch.setenv("RELAY_TRACKING_URI", mlflow_server)
    load = rl.run("load", "transactions")
    plain = rl.run("processing", "plain", upstream=[load])
    plain.load("train")  # fill the local cache
    assert (project / ".relay" / "cache" / plain.run_id).exists()
    on_disk = {}  # the server keeps a run's files in <artifacts>/<experiment>/<run id>
    for run in (load, plain):
        exp = get_store(open_project()).get_run(run.run_id).info.experiment_id
        on_disk[run.run_id] = tmp_path / "server-artifacts" / exp / run.run_id
        assert any(on_disk[run.run_id].rglob("*")), on_disk[run.run_id]

    refused = relay("delete", str(load.key), "--yes")
    assert refused.code == 2 and str(plain.key) in refused.err and "--cascade" in refused.err
    assert rl.get(str(load.key)).status == "FINISHED"

    done = relay("delete", str(load.key), "--cascade", "--yes")
    assert done.code == 0 and "freed" in done.out and "0 B" not in done.out, done
    store = get_store(open_project())
    for run in (load, plain):
        assert store.get_run(run.run_id).info.lifecycle_stage == "deleted"  # rows stay
        assert not on_disk[run.run_id].exists(), f"{on_disk[run.run_id]} still on the server"
    assert not (project / ".relay" / "cache" / plain.run_id).exists()
    assert rl.runs("processing") == []

    refused_gc = relay("gc")
    assert refused_gc.code == 2 and "mlflow gc" in refused_gc.err, refused_gc

    purge = subprocess.run(
        [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", pg_database],
        capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server},
    )  # fmt: skip
    assert purge.returncode == 0, purge.stderr[-2000:]
    assert store.get_run(plain.run_id) is None and store.get_run(load.run_id) is None
