"""Coherent chains: resolution, the reuse rule, records, failure and resume, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import relayml

from conftest import git

EXTRA_STEPS = '''

# -- test-only steps -------------------------------------------------------------------------
import os as _os
import time as _time


@processing.variant("slow")
def slow(load: pd.DataFrame, tag: str = "x"):
    """Sleeps RELAY_TEST_SLOW seconds (not a param: every process asks for the same run)."""
    _time.sleep(float(_os.environ.get("RELAY_TEST_SLOW", "0")))
    return {"rows": pd.DataFrame({"n": [len(load)]})}


report = relay.step("report", upstream=processing)


@report.variant("flaky")
def flaky(processing):
    """Fails while RELAY_TEST_FAIL is set."""
    if _os.environ.get("RELAY_TEST_FAIL"):
        raise RuntimeError("asked to fail")
    return {"summary": pd.DataFrame({"ok": [1]})}


customers = relay.step("customers")


@customers.variant("static")
def static_customers(n: int = 5):
    return pd.DataFrame({"cid": list(range(n))})


enriched = relay.step("enriched", upstream=[load, customers])


@enriched.variant("join")
def join(load, customers):
    return pd.DataFrame({"rows": [len(load)], "customers": [len(customers)]})
'''


def extend(root: Path, *, stale_after: float | None = None) -> Path:
    """Add the test-only steps (and ignore MLflow's stray mlruns/), commit."""
    with (root / "steps.py").open("a") as f:
        f.write(EXTRA_STEPS)
    with (root / ".gitignore").open("a") as f:
        f.write("mlruns/\n")
    if stale_after is not None:
        toml = (root / "relay.toml").read_text()
        toml = toml.replace("[tracking]\n", f"[tracking]\nstale_after = {stale_after}\n", 1)
        (root / "relay.toml").write_text(toml)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "test steps")
    return root


@pytest.fixture
def proj(project: Path) -> Path:
    return extend(project)


def step_runs(root: Path, step: str, **kw) -> relayml.RunList:
    return relayml.runs(step, limit=None, project=root, **kw)


def statuses(result: relayml.Chain) -> list[str]:
    return [p.status for p in result.steps]


def test_reuse_whole_chain_and_record(proj: Path, relay) -> None:

    first = relayml.chain("load=transactions", "processing=plain", project=proj)
    assert statuses(first) == ["new", "new"]
    assert first["processing"].upstream_ids == {"load": first["load"].run_id}
    assert first.data_version == first["load"].data_version

    r = relay("chain", "load=transactions@latest", "processing=plain", "--json")
    assert r.code == 0, r
    data = json.loads(r.out)
    assert [s["status"] for s in data["steps"]] == ["reused", "reused"]
    assert [s["run_id"] for s in data["steps"]] == [
        first["load"].run_id,
        first["processing"].run_id,
    ]
    assert data["record"] == first.record.info.run_id  # the same chain: the same record

    # the date form: the day the load run was made, in the project's time zone
    day = first["load"].started.astimezone(proj_zone(proj)).date().isoformat()
    again = relayml.chain(f"load=transactions@{day}", "processing=plain", project=proj)
    assert statuses(again) == ["reused", "reused"]
    assert len(step_runs(proj, "processing")) == 1

    # the chain record, through plain MLflow
    from mlflow.tracking import MlflowClient

    settings = relayml.open_project(proj)
    client = MlflowClient(settings.tracking_uri)
    exp = client.get_experiment_by_name("fraud/chains")
    assert exp is not None
    recs = client.search_runs([exp.experiment_id])
    assert len(recs) == 1
    tags = recs[0].data.tags
    assert tags["relay.chain.load"] == first["load"].run_id
    assert tags["relay.chain.processing"] == first["processing"].run_id
    assert tags["relay.chain.processing.key"] == str(first["processing"].key)
    assert tags["relay.data"] == first.data_version
    assert "relay.key" not in tags
    assert recs[0].data.metrics["train_rows"] == first["processing"].metrics["train_rows"]
    assert recs[0].data.params["processing.variant"] == "plain"
    # chain records are not step runs
    assert all(r.step != "chains" for r in relayml.runs(project=proj, limit=None))


def test_a_cached_chain_costs_one_request_per_step(proj: Path, monkeypatch) -> None:
    """A fully reused chain writes nothing and asks MLflow's client nothing: it reads the
    pinned load and searches once per later step through the read path; its record id comes
    from the final run's ``relay.chain.record`` tag."""
    from mlflow.tracking import MlflowClient

    first = relayml.chain("load=transactions", "processing=plain", project=proj)
    assert first["processing"].tags.get("relay.chain.record") is None  # as first returned
    assert (
        relayml.get(first["processing"].run_id, project=proj).tags["relay.chain.record"]
        == first.record_id
    )
    calls: list[str] = []

    def counted(name: str):
        real = getattr(MlflowClient, name)

        def call(self, *args, **kwargs):
            calls.append(name)
            return real(self, *args, **kwargs)

        return call

    for name in ("get_run", "search_runs", "create_run", "set_tag", "log_batch"):
        monkeypatch.setattr(MlflowClient, name, counted(name))
    again = relayml.chain(f"load={first['load'].run_id}", "processing=plain", project=proj)
    assert statuses(again) == ["reused", "reused"]
    assert again.record_id == first.record_id
    assert calls == []
    assert again.record is not None and again.record.info.run_id == first.record_id


def proj_zone(root: Path):
    return relayml.open_project(root).zone


def test_training_chain_has_model_and_metrics(proj: Path, relay) -> None:
    r = relay(
        "chain", "load=transactions", "processing=plain", "training=logreg",
        "-P", "training.cv=2", "-P", "training.C=1",
    )  # fmt: skip
    assert r.code == 0, r
    assert "new" in r.out and "model: models:/" in r.out
    c = relay_chain_dry(proj, "training=logreg", params={"training.cv": 2, "training.C": 1.0})
    assert statuses(c) == ["reused", "reused", "reused"]
    rec = relay_chain_run(proj, params={"training.cv": "2", "training.C": "1"}).record
    assert rec.data.tags["relay.model"].startswith("models:/")
    assert rec.data.metrics["test_roc_auc"] > 0.5
    assert rec.data.params["training.C"] == "1.0"


def relay_chain_dry(root: Path, last: str, params: dict) -> relayml.Chain:
    return relayml.chain(
        "load=transactions@latest", "processing=plain", last,
        params=params, dry_run=True, project=root,
    )  # fmt: skip


def relay_chain_run(root: Path, params: dict) -> relayml.Chain:
    return relayml.chain(
        "load=transactions@latest", "processing=plain", "training=logreg",
        params=params, project=root,
    )  # fmt: skip


def test_reuse_rule_each_part(proj: Path, relay, monkeypatch: pytest.MonkeyPatch) -> None:
    base = relayml.chain("load=transactions", "processing=plain", project=proj)
    load_key = str(base["load"].key)

    def plan(*links: str, **params) -> relayml.Chain:
        return relayml.chain(*links, params=params, dry_run=True, explain=True, project=proj)

    # defaults included, canonically encoded: an explicit default is the same request
    same = plan(f"load={load_key}", "processing=plain", **{"processing.test_size": "0.25"})
    assert statuses(same) == ["reused", "reused"]
    assert same["processing"] == base["processing"]

    # params
    other = plan(f"load={load_key}", "processing=plain", **{"processing.test_size": 0.3})
    assert statuses(other) == ["reused", "new"]
    [(key, why)] = other.steps[1].passed_over
    assert key == str(base["processing"].key)
    assert why == "param test_size: 0.25 → 0.3"

    # variant
    assert statuses(plan(f"load={load_key}", "processing=robust")) == ["reused", "new"]

    # upstream run ids
    newer = relayml.run("load", "transactions", project=proj)
    moved = plan("load=transactions@latest", "processing=plain")
    assert moved["load"] == newer
    assert statuses(moved) == ["reused", "new"]
    assert "upstream load is " + load_key in moved.steps[1].passed_over[0][1]

    # code: the steps module changes outside the variants (uncommitted, then committed: the
    # same code either way)
    with (proj / "steps.py").open("a") as f:
        f.write("\nA_CONSTANT = 1\n")
    dirty = plan(f"load={load_key}", "processing=plain")
    assert statuses(dirty) == ["reused", "new"]
    assert dirty.steps[1].passed_over[0][1] == "steps.py changed (outside the variant functions)"
    git(proj, "commit", "-qam", "a change")
    committed = plan(f"load={load_key}", "processing=plain")
    assert statuses(committed) == ["reused", "new"]
    assert committed.steps[1].passed_over == dirty.steps[1].passed_over

    # the CLI says the same
    r = relay("chain", f"load={load_key}", "processing=plain", "--dry-run", "--explain")
    assert r.code == 0, r
    assert "passed over" in r.out and "dry run" in r.out
    assert len(step_runs(proj, "processing")) == 1  # nothing ran


def test_newest_not_listing_order(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load = relayml.run("load", "transactions", project=proj)
    newest = relayml.run("processing", "plain", upstream=[load], project=proj)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # created last, started earlier
    older = relayml.run("processing", "plain", upstream=[load], project=proj)
    monkeypatch.setattr(time, "time", real)
    assert older.started < newest.started
    assert older.tags["relay.fingerprint"] == newest.tags["relay.fingerprint"]
    c = relayml.chain(f"load={load.key}", "processing=plain", dry_run=True, project=proj)
    assert c["processing"] == newest


def test_incoherent_candidates_skipped(proj: Path) -> None:
    a = relayml.chain("load=transactions", "processing=plain", project=proj)
    b = relayml.chain("load=transactions", "processing=plain", project=proj)
    assert b["processing"].started >= a["processing"].started
    c = relayml.chain(f"load={a['load'].key}", "processing=plain", explain=True, project=proj)
    assert statuses(c) == ["reused", "reused"]
    assert c["processing"] == a["processing"]  # not the newer one, which is on another load
    pinned = f"load={a['load'].run_id}"  # a run id pins too
    by_id = relayml.chain(pinned, "processing=plain", dry_run=True, project=proj)
    assert by_id.runs == c.runs
    passed = dict(c.steps[1].passed_over)
    assert str(b["processing"].key) in passed
    assert "upstream load is " + str(b["load"].key) in passed[str(b["processing"].key)]


def test_force_reruns_step_and_after(proj: Path) -> None:
    first = relayml.chain("load=transactions", "processing=plain", "report=flaky", project=proj)
    forced = relayml.chain(
        f"load={first['load'].key}", "processing=plain", "report=flaky",
        force="processing", project=proj,
    )  # fmt: skip
    assert statuses(forced) == ["reused", "new", "new"]
    assert forced["processing"] != first["processing"]
    assert forced["report"].upstream_ids["processing"] == forced["processing"].run_id


def test_failure_then_resume(proj: Path, relay, monkeypatch: pytest.MonkeyPatch) -> None:
    load = relayml.run("load", "transactions", project=proj)
    monkeypatch.setenv("RELAY_TEST_FAIL", "1")
    r = relay("chain", f"load={load.key}", "processing=plain", "report=flaky")
    assert r.code == 1, r
    assert "asked to fail" in r.err and "resume with: relay chain load=transactions@" in r.err
    [failed] = step_runs(proj, "report")
    assert failed.status == "FAILED"
    [proc] = step_runs(proj, "processing")
    assert proc.status == "FINISHED"
    monkeypatch.delenv("RELAY_TEST_FAIL")
    resumed = relayml.chain(f"load={load.key}", "processing=plain", "report=flaky", project=proj)
    assert statuses(resumed) == ["reused", "reused", "new"]
    assert resumed["processing"] == proc
    assert resumed["report"].status == "FINISHED"
    assert {r.status for r in step_runs(proj, "report")} == {"FAILED", "FINISHED"}


def test_multi_parent_chain_and_lineage(proj: Path, relay) -> None:
    c = relayml.chain("load=transactions", "customers=static", "enriched=join", project=proj)
    assert [p.step for p in c.steps] == ["load", "customers", "enriched"]
    assert statuses(c) == ["new", "new", "new"]
    assert c["enriched"].upstream_ids == {
        "load": c["load"].run_id,
        "customers": c["customers"].run_id,
    }
    again = relayml.chain(
        "load=transactions@latest", "customers=static@latest", "enriched=join", project=proj
    )
    assert statuses(again) == ["reused", "reused", "reused"]
    assert again["enriched"] == c["enriched"]
    assert set(c["enriched"].data_keys) == {str(c["load"].key), str(c["customers"].key)}

    lin = c["enriched"].lineage()
    assert sorted(n["key"] for n in lin.upstream["children"]) == sorted(
        [str(c["customers"].key), str(c["load"].key)]
    )
    assert relayml.get(str(c["customers"].key), project=proj).lineage().keys("downstream") == [
        str(c["customers"].key),
        str(c["enriched"].key),
    ]
    r = relay("lineage", str(c["enriched"].key))
    assert r.code == 0, r
    assert str(c["customers"].key) in r.out and str(c["load"].key) in r.out
    r = relay("lineage", str(c["load"].key), "--json")
    tree = json.loads(r.out)
    assert [n["key"] for n in tree["downstream"]["children"]] == [str(c["enriched"].key)]
    assert tree["chains"]


BAD = [
    (["load=transactions@latest", "processing=plian"], "unknown variant 'plian'"),
    (["load=transactions@latest", "processing=plain", "processing=robust"], "named twice"),
    (["load=transactions@2001-01-01", "processing=plain"], "no runs of step 'load'"),
    (["load=transactions", "processing=plain", "-P", "training.C=1"], "not in the chain"),
    (["load=transactions", "training=logreg"], "does not connect"),
    (["load=transactions", "customers=static"], "does not connect"),
    (["load=transactions", "processing=plain", "-P", "processing.nope=1"], "unknown parameter"),
    (["load=transactions", "processing=plain", "-P", "test_size=1"], "name the step"),
    (["load=transactions", "processing"], "expected STEP=VARIANT"),
    (["load=transactions", "processing=plain@latest"], "only load steps"),
    (["load=transactions", "processing=plain", "--force", "training"], "not in the chain"),
    (["lod=transactions"], "unknown step 'lod'; did you mean 'load'"),
]


def test_bad_input_exits_2_runs_nothing(proj: Path, relay) -> None:
    from relayml.store import get_store

    for args, message in BAD:
        r = relay("chain", *args)
        assert r.code == 2, (args, r)
        assert message in r.err, (args, r)
        assert len(r.err.strip().splitlines()) == 1, (args, r)
    assert relayml.runs(project=proj, limit=None) == []
    assert get_store(relayml.open_project(proj)).search(["chains"]) == []


def test_date_matching_no_run_with_runs(proj: Path, relay) -> None:
    relayml.run("load", "transactions", project=proj)
    r = relay("chain", "load=transactions@2001-01-01", "processing=plain")
    assert r.code == 2, r
    assert "no finished run matches 'load/transactions@2001-01-01'" in r.err
    assert len(relayml.runs(project=proj, limit=None)) == 1
