"""`relay run`: one step run with a human key, its upstream, code state, outputs and failures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import relayml

from conftest import git


def all_runs(root: Path) -> list:
    """Every MLflow run of the project's store, deleted ones included."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    db = root / ".relay" / "mlflow.db"
    if not db.exists():
        return []
    client = MlflowClient(f"sqlite:///{db}")
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, run_view_type=ViewType.ALL) if ids else []


def add_variants(root: Path, code: str) -> None:
    with open(root / "steps.py", "a") as f:
        f.write("\n\n" + textwrap.dedent(code))


def test_run_chain_of_steps(project: Path, relay) -> None:
    r = relay("run", "load", "transactions")
    assert r.code == 0, r
    assert "load/transactions@" in r.out
    r = relay("run", "processing", "plain", "-P", "test_size=0.3")
    assert r.code == 0, r
    load = relay_get("load/transactions@latest")
    assert f"using load: {load.key}" in r.err
    r = relay("run", "training", "logreg", "-P", "C=10", "-P", "cv=2")
    assert r.code == 0, r

    training = relay_get("training/logreg@latest")
    processing = training.upstream["processing"]
    assert processing.upstream["load"] == load
    assert training.params["C"] == "10.0" and processing.params["test_size"] == "0.3"
    assert processing.params["seed"] == "42"  # defaults are recorded too
    assert training.tags["relay.upstream.processing.key"] == str(processing.key)
    assert training.data_version == load.data_version and len(load.data_version) == 32
    assert {"cv_roc_auc", "test_roc_auc", "test_average_precision", "threshold"} <= set(
        training.metrics
    )
    assert [r.key for r in load.downstream] == [processing.key]
    # the bundle is a logged model of the training run's own experiment, under .relay/
    model = client_model(training)
    assert model.experiment_id == training.mlflow.info.experiment_id
    assert model.source_run_id == training.run_id
    assert not (project / "mlruns").exists()  # nothing is written into the work tree
    assert processing.load("processor").feature_names_in_[0] == "Time"
    assert set(processing.outputs) == {"processor", "train", "test", "test_rows"}
    # plain MLflow sees experiments by name and the relay tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(training.settings.tracking_uri)
    exp = client.get_experiment_by_name("fraud/training")
    mlrun = client.get_run(training.run_id)
    assert mlrun.info.experiment_id == exp.experiment_id
    assert mlrun.data.tags["relay.key"] == str(training.key)
    assert mlrun.info.run_name == str(training.key)
    assert mlrun.data.tags["mlflow.source.git.commit"] == git(project, "rev-parse", "HEAD").strip()
    assert mlrun.data.tags["relay.git.dirty"] == "false"


def client_model(run):
    from mlflow.tracking import MlflowClient

    model_id = run.model_uri.removeprefix("models:/")
    return MlflowClient(run.settings.tracking_uri).get_logged_model(model_id)


def relay_get(ref: str):
    return relayml.get(ref)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "lod", "transactions"], "unknown step 'lod'; did you mean 'load'?"),
        (
            ["run", "load", "transaction"],
            "unknown variant 'transaction' of step 'load'; did you mean",
        ),
        (
            ["run", "load", "transactions", "-P", "dayz=3"],
            "unknown parameter 'dayz'.*valid: days: int = 0",
        ),
        (
            ["run", "load", "transactions", "-P", "days=three"],
            "parameter 'days' expects int, got 'three'",
        ),
        (["run", "load", "transactions", "-P", "days"], "expected name=value"),
        (["run", "load", "transactions", "--as-of", "last tuesday"], "invalid --as-of"),
        (["run", "processing", "plain"], "needs a finished run of 'load'"),
        (["run", "processing", "plain", "--from", "load/transactions"], "malformed reference"),
        (
            ["run", "processing", "plain", "--from", "load/transactions@2019-02-09"],
            "no runs of step 'load'",
        ),
    ],
)
def test_bad_input_exits_2_and_creates_no_run(project: Path, relay, args, message) -> None:
    r = relay(*args)
    assert r.code == 2, r
    assert r.err.startswith("Error: ")
    assert len(r.err.strip().splitlines()) == 1, r.err
    import re

    assert re.search(message, r.err), r.err
    assert all_runs(project) == []


def test_bad_upstream_references(project: Path, relay) -> None:
    assert relay("run", "load", "transactions").code == 0
    load = relay_get("load@latest")
    before = len(all_runs(project))
    cases = [
        (["run", "training", "logreg", "--from", str(load.key)], "does not consume step 'load'"),
        (
            ["run", "processing", "plain", "--from", "load/transactions@20000101000000"],
            "no run matches 'load/transactions@20000101000000'; nearest: load/transactions@",
        ),
        (
            ["run", "processing", "plain", "--from", "load/transactions@1999-01-01"],
            "no finished run matches",
        ),
    ]
    for args, message in cases:
        r = relay(*args)
        assert r.code == 2 and message in r.err, r
    assert len(all_runs(project)) == before


def test_dirty_tree_saves_the_diff(project: Path, relay) -> None:
    assert relay("run", "load", "transactions").code == 0
    with open(project / "steps.py", "a") as f:
        f.write("\n# an uncommitted experiment\n")
    before = len(all_runs(project))
    r = relay("run", "processing", "plain", "--require-clean")
    assert r.code == 2 and "uncommitted changes" in r.err
    assert len(all_runs(project)) == before

    r = relay("run", "processing", "plain")
    assert r.code == 0
    assert "Warning: uncommitted changes" in r.err
    run = relay_get("processing@latest")
    assert run.tags["relay.git.dirty"] == "true"
    assert "code/uncommitted.diff" in run.artifacts
    local = run.store.download(run.run_id, "code/uncommitted.diff", project / ".relay" / "dl")
    assert "+# an uncommitted experiment" in local.read_text()


def test_failing_variant_is_failed_and_never_handed_down(project: Path, relay) -> None:
    add_variants(
        project,
        """
        @processing.variant("broken")
        def broken(load):
            raise ValueError("no such column: Amaunt")
        """,
    )
    assert relay("run", "load", "transactions").code == 0
    assert relay("run", "processing", "plain").code == 0
    good = relay_get("processing@latest")
    r = relay("run", "processing", "broken")
    assert r.code == 1, r
    assert "failed: ValueError: no such column: Amaunt" in r.err
    failed = relayml.runs("processing", variant="broken", status="FAILED")
    assert len(failed) == 1
    bad = failed[0]
    assert bad.status == "FAILED"
    assert "error/traceback.txt" in bad.artifacts
    assert "outputs" not in {a.split("/")[0] for a in bad.artifacts}
    # @latest skips it; an explicit --from is refused
    assert relay_get("processing@latest") == good
    r = relay("run", "training", "logreg", "-P", "cv=2", "--from", str(bad.key))
    assert r.code == 2 and "is FAILED, not FINISHED" in r.err
    r = relay("run", "training", "logreg", "-P", "cv=2")
    assert r.code == 0
    assert relay_get("training@latest").upstream["processing"] == good


def test_same_second_runs_get_distinct_keys(project: Path, monkeypatch) -> None:
    """Deterministic: the clock is frozen, so the second run collides and moves one second."""
    relayml.run("load", "transactions")
    frozen = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)
    a = relayml.run("processing", "plain")
    b = relayml.run("processing", "plain")
    assert a.key != b.key
    assert (b.key.moment - a.key.moment).total_seconds() == 1  # also across a minute
    keys = [r.key for r in relayml.runs("processing")]
    assert len(keys) == len(set(keys)) == 2


def test_a_collision_jumps_past_every_taken_second(project: Path, monkeypatch) -> None:
    """Keys that ran ahead of a frozen clock: the next run collides once, not once a second."""
    relayml.run("load", "transactions")
    frozen = time.time()
    monkeypatch.setattr(time, "time", lambda: frozen)
    made = [relayml.run("processing", "plain", params={"seed": n}) for n in range(4)]
    last = relayml.run("processing", "plain", params={"seed": 9})
    assert (last.key.moment - made[0].key.moment).total_seconds() == 4
    withdrawn = last.store.search(
        ["processing"], "tags.`relay.withdrawn` = 'key collision'", deleted=True
    )
    assert len(withdrawn) == 4  # one collision per run after the first, not 1 + 2 + 3 + 4
    keys = [r.key for r in relayml.runs("processing")]
    assert len(keys) == len(set(keys)) == 5


def test_latest_is_the_run_that_started_last(project: Path, monkeypatch) -> None:
    """A key moved ahead of the clock by a collision does not make its run the newest."""
    relayml.run("load", "transactions")
    frozen = int(time.time()) + 0.1  # early in a second: +0.5 stays in it
    monkeypatch.setattr(time, "time", lambda: frozen)
    relayml.run("processing", "plain")
    ahead = relayml.run("processing", "plain", params={"seed": 1})  # collides: key one second on
    monkeypatch.setattr(time, "time", lambda: frozen + 0.5)
    later = relayml.run("processing", "robust")
    assert ahead.key.moment > later.key.moment  # the key ran ahead ...
    assert relayml.get("processing@latest") == later  # ... the start time did not
    assert relayml.runs("processing")[0] == later


STARTER = """
import pathlib, sys, time
import relayml.runner
req = relayml.runner.prepare("processing", "plain")  # everything before the run is created
barrier = pathlib.Path(sys.argv[1])
(barrier / sys.argv[2]).touch()
while len(list(barrier.iterdir())) < 2:  # both ready: create the runs together
    time.sleep(0.005)
print(relayml.runner.execute(req).key)
"""


def test_two_processes_in_the_same_second(project: Path, tmp_path: Path) -> None:
    relayml.run("load", "transactions")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(barrier), str(i)],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    found = relayml.runs("processing", status="FINISHED")
    keys = [str(r.key) for r in found]
    assert len(keys) == 2 and len(set(keys)) == 2, keys
    assert sorted(keys) == sorted(out.strip().splitlines()[-1] for out, _ in outs)


def test_run_json_output(project: Path, relay) -> None:
    r = relay("run", "load", "transactions", "--json")
    assert r.code == 0
    data = json.loads(r.out)
    assert data["key"].startswith("load/transactions@") and data["status"] == "FINISHED"


def test_public_functions_survive_submodule_imports() -> None:
    import relayml.chain
    import relayml.runs
    import relayml.serving.api

    assert callable(relayml.runs) and relayml.runs.__module__ == "relayml.runs"
    assert callable(relayml.chain) and callable(relayml.serve)


def test_steps_edited_in_a_long_lived_process_run_as_edited(project: Path) -> None:
    """A notebook runs a step, the user edits steps.py and its helper module, runs again: the
    edited code runs (before, the module imported first ran under the new file's digest)."""
    load = relayml.run("load", "transactions")
    first = relayml.run("processing", "plain", upstream=[load])
    steps = project / "steps.py"
    old = 'ctx.log_metrics({"train_rows": len(train), "test_rows": len(test)})'
    assert old in steps.read_text()
    steps.write_text(steps.read_text().replace(old, old.replace("len(train)", "len(train) + 1")))
    second = relayml.run("processing", "plain", upstream=[load])
    assert second.metrics["train_rows"] == first.metrics["train_rows"] + 1
    assert second.tags["relay.code"] != first.tags["relay.code"]

    features = project / "features.py"
    features.write_text(features.read_text() + "\nEDITED = True\n")
    relayml.run("processing", "plain", upstream=[load])
    import features as imported  # the helper module this process holds now

    assert imported.EDITED is True
