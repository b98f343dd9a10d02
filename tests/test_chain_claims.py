"""Claims: a missing step asked for by several processes at once is computed once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_chain import extend

import relayml

from conftest import relay_process


def slow_runs(root: Path) -> relayml.RunList:
    return relayml.runs("processing", variant="slow", limit=None, project=root)


def run_both(root: Path, load_key: str, env: dict[str, str]) -> list[dict]:
    args = ("chain", f"load={load_key}", "processing=slow", "--json")
    procs = [relay_process(*args, cwd=root, env=env) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    return outs


def check_computed_once(root: Path, outs: list[dict]) -> None:
    [run] = slow_runs(root)  # one active run: the losers withdrew (deleted) before any work
    assert run.status == "FINISHED"
    ids = {o["steps"][1]["run_id"] for o in outs}
    assert ids == {run.run_id}
    assert sorted(o["steps"][1]["status"] for o in outs) == ["new", "reused"]


def test_two_processes_compute_once_sqlite(project: Path) -> None:
    root = extend(project)
    load = relayml.run("load", "transactions", project=root)
    outs = run_both(root, str(load.key), {"RELAY_TEST_SLOW": "6"})
    check_computed_once(root, outs)


@pytest.mark.postgres
def test_two_processes_compute_once_mlflow_server(
    project: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = extend(project)
    monkeypatch.setenv("RELAY_TRACKING_URI", mlflow_server)
    load = relayml.run("load", "transactions", project=root)
    outs = run_both(
        root, str(load.key), {"RELAY_TEST_SLOW": "6", "RELAY_TRACKING_URI": mlflow_server}
    )
    check_computed_once(root, outs)


def test_threads_claim_at_the_same_moment(project: Path) -> None:
    """Claimants created in the same instant: exactly one holds, the others reuse its run."""
    from relayml.chain import _Resolver, parse_links
    from relayml.claims import claim
    from relayml.codeinfo import code_state
    from relayml.runner import execute, pipeline_of
    from relayml.store import get_store

    root = extend(project)
    settings = relayml.open_project(root)
    load = relayml.run("load", "transactions", project=root)
    pipeline = pipeline_of(settings)
    links = parse_links([f"load={load.key}", "processing=slow"])
    res = _Resolver(settings, get_store(settings), pipeline, code_state(root), links,
                    {"load": {}, "processing": {"tag": "x"}}, set(), {"load": load})  # fmt: skip
    req = res.request(links[1], {"load": load})
    barrier = threading.Barrier(4)
    outcomes: list = []

    def worker() -> None:
        barrier.wait()
        c = claim(res.store, req, sleep=lambda s: time.sleep(min(s, 0.3)))
        if c.reused is None:
            time.sleep(1.0)
            done = execute(req, show_progress=False, created=(c.run_id, c.key))
            outcomes.append(("held", done.run_id))
        else:
            outcomes.append(("reused", c.reused.run_id))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(outcomes) == 4
    held = [rid for how, rid in outcomes if how == "held"]
    assert len(held) == 1
    assert {rid for _, rid in outcomes} == set(held)
    [run] = slow_runs(root)
    assert run.run_id == held[0]
    withdrawn = res.store.search(["processing"], "tags.`relay.withdrawn` != ''", deleted=True)
    assert withdrawn  # the losers' claims were withdrawn and deleted


def test_stale_claim_is_taken_over(project: Path) -> None:
    root = extend(project, stale_after=3)
    load = relayml.run("load", "transactions", project=root)
    args = ("chain", f"load={load.key}", "processing=slow")
    owner = relay_process(*args, cwd=root, env={"RELAY_TEST_SLOW": "300"})
    try:
        deadline = time.monotonic() + 120
        while not slow_runs(root):
            assert owner.poll() is None, owner.communicate()
            assert time.monotonic() < deadline, "the owner never claimed"
            time.sleep(0.3)
        [claimed] = slow_runs(root)
        assert claimed.status == "RUNNING"
        time.sleep(1.0)  # let the owner reach the step (its heartbeat is running)
        os.kill(owner.pid, signal.SIGKILL)  # dies without a word: the run stays RUNNING
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    os.environ.pop("RELAY_TEST_SLOW", None)
    c = relayml.chain(f"load={load.key}", "processing=slow", project=root)
    assert [p.status for p in c.steps] == ["reused", "new"]
    assert c["processing"].status == "FINISHED"
    dead = claimed.refresh()
    assert dead.status == "FAILED"
    assert dead.tags["relay.stale"] == "true"
    assert c["processing"].run_id != dead.run_id
