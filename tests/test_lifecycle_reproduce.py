"""``relay reproduce``: re-running a chain from what was recorded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import relayml as rl
from relayml.runs import open_project
from relayml.store import get_store

from conftest import git


def _change_code(project: Path) -> None:
    """Commit a change to steps.py that alters the processing metrics."""
    steps = project / "steps.py"
    text = steps.read_text()
    old = 'ctx.log_metrics({"train_rows": len(train), "test_rows": len(test)})'
    assert old in text
    new = 'ctx.log_metrics({"train_rows": len(train) + 1, "test_rows": len(test)})'
    steps.write_text(text.replace(old, new, 1))
    git(project, "commit", "-qam", "count one more row")


def test_reproduce_agrees_at_the_recorded_commit(project: Path, relay) -> None:
    load = rl.run("load", "transactions")
    proc = rl.run("processing", "plain", upstream=[load])
    train = rl.run("training", "logreg", {"cv": 2, "C": 1.0}, upstream=[proc])
    _change_code(project)  # HEAD now differs: the reproduction must use a worktree

    # liblinear without random_state moves the chosen threshold by ~1e-6 from run to run
    done = relay("reproduce", str(train.key), "--tolerance", "1e-4")
    assert done.code == 0, done
    assert "every metric agrees" in done.out and "test_roc_auc" in done.out
    again = rl.runs("training", limit=1)[0]
    assert again.run_id != train.run_id
    assert again.tags["relay.reproduces"] == train.run_id
    assert abs(again.metrics["test_roc_auc"] - train.metrics["test_roc_auc"]) < 1e-6
    new_proc = again.upstream["processing"]
    assert new_proc.tags["relay.reproduces"] == proc.run_id
    assert new_proc.upstream_ids["load"] == load.run_id  # the recorded snapshot, no new load
    assert new_proc.metrics["train_rows"] == proc.metrics["train_rows"]
    assert "relay-reproduce" not in git(project, "worktree", "list")


def test_reproduce_missing_commit_head_and_refetch(project: Path, relay) -> None:
    load = rl.run("load", "transactions")
    proc = rl.run("processing", "plain", upstream=[load])
    _change_code(project)
    store = get_store(open_project())
    store.set_tag(proc.run_id, "relay.git.commit", "0" * 40)  # as if history was rewritten

    before = len(rl.runs("processing"))
    gone = relay("reproduce", str(proc.key))
    assert gone.code == 2 and "no longer exists" in gone.err and "--allow-head" in gone.err, gone
    assert len(rl.runs("processing")) == before  # nothing changed

    with sqlite3.connect(project / "data" / "fraud.db") as con:
        con.execute("UPDATE transactions SET Amount = Amount + 1 WHERE id = 5")
    head = relay("reproduce", str(proc.key), "--allow-head", "--refetch")
    assert head.code == 1, head
    assert "processing.train_rows" in head.err and "data digest" in head.err
    assert "DIFFERS" in head.out and "no longer exists" not in head.err
    refetched = rl.runs("load", limit=1)[0]
    assert refetched.tags["relay.reproduces"] == load.run_id
    assert refetched.data_version != load.data_version

    ok = relay("reproduce", str(proc.key), "--allow-head", "--tolerance", "1.0")
    assert ok.code == 0, ok  # train_rows differs by one row: within an absolute 1.0
