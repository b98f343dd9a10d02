"""``relay refresh``: regular retraining with a champion, challengers and a safe claim."""

from __future__ import annotations

import json
from pathlib import Path

import relayml as rl
from relayml.runs import open_project
from relayml.store import get_store

from conftest import relay_process

FAST = ("-P", "cv=2", "-P", "n_estimators=10")


def _champion() -> tuple[int, str]:
    client = get_store(open_project()).client
    mv = client.get_model_version_by_alias("fraud", "champion")
    return int(mv.version), mv.run_id


def test_refresh_first_champion_then_kept(project: Path, relay) -> None:
    bad = relay("refresh", "--candidates", "lgreg", "--metric", "test_roc_auc")
    assert bad.code == 2 and "logreg" in bad.err, bad
    no_metric = relay("refresh", "--candidates", "logreg")
    assert no_metric.code == 2 and "--metric" in no_metric.err, no_metric

    first = relay("refresh", "--candidates", "logreg", "--metric", "test_roc_auc", *FAST, "--json")
    assert first.code == 0, first
    report = json.loads(first.out)
    assert report["decision"] == "first champion" and report["promoted"]["version"] == 1
    version, run_id = _champion()
    assert version == 1 and run_id == report["entries"][0]["run_id"]

    # the champion's recipe vs rf; nothing beats an AUC by a margin of 1.0
    second = relay("refresh", "--candidates", "rf", "--margin", "1.0", *FAST, "--json")
    assert second.code == 0, second
    report = json.loads(second.out)
    assert report["decision"] == "kept" and report["promoted"] is None
    assert report["metric"] == "test_roc_auc"  # remembered from the first refresh
    roles = sorted(e["role"] for e in report["entries"])
    assert roles == ["challenger", "champion"]
    assert _champion() == (1, run_id)
    trained = [rl.get(e["run_id"]) for e in report["entries"]]
    assert len({r.upstream_ids["processing"] for r in trained}) == 1  # same new test data
    assert trained[0].data_version == report["data_version"]
    champ = next(
        r for r, e in zip(trained, report["entries"], strict=True) if e["role"] == "champion"
    )
    assert champ.params == rl.get(run_id).params  # the champion's own params

    record = get_store(open_project()).get_run(report["record"])
    assert record.info.status == "FINISHED"
    tags = record.data.tags
    assert tags["relay.refresh.decision"] == "kept" and "relay.key" not in tags
    assert tags["relay.upstream.processing"] == champ.upstream_ids["processing"]
    assert "champion_test_roc_auc" in record.data.metrics


# Each refresh waits 4 s after creating its claim, so both claims exist before either looks.
HOLD_THE_CLAIM = """
import time
from relayml import tags
from relayml.store import Store
create = Store.create_run
def held(self, step, **kw):
    entity = create(self, step, **kw)
    if step == tags.REFRESH_EXPERIMENT:
        time.sleep(4)
    return entity
Store.create_run = held
"""


def test_overlapping_refreshes_do_not_both_promote(project: Path) -> None:
    args = ("refresh", "--candidates", "logreg", "--metric", "test_roc_auc", *FAST)
    procs = [relay_process(*args, cwd=project, patch=HOLD_THE_CLAIM) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], results
    loser = results[[p.returncode for p in procs].index(1)]
    assert "another refresh" in loser[1]
    client = get_store(open_project()).client
    assert len(client.search_model_versions("name = 'fraud'")) == 1
    store = get_store(open_project())
    records = store.search(["refresh"])
    assert sorted(r.info.status for r in records) == ["FINISHED", "KILLED"]


def test_a_better_challenger_is_promoted(project: Path, relay) -> None:
    """A champion that cannot rank (L1 with a tiny C: every weight is zero, AUC 0.5) loses to
    the default grid on the same new data; the alias moves to the challenger's bundle."""
    weak = ("-P", "C=0.0001", "-P", "penalty=l1", "-P", "cv=2")
    first = relay("refresh", "--candidates", "logreg", "--metric", "test_roc_auc", *weak)
    assert first.code == 0, first
    _, weak_run = _champion()
    assert rl.get(weak_run).metrics["test_roc_auc"] == 0.5

    second = relay("refresh", "--candidates", "logreg", "-P", "cv=2", "--json")
    assert second.code == 0, second
    report = json.loads(second.out)
    assert report["decision"] == "promoted"
    winner = next(e for e in report["entries"] if e["promoted"])
    assert winner["role"] == "challenger"
    version, run_id = _champion()
    assert (version, run_id) == (2, winner["run_id"]) == (2, report["promoted"]["run_id"])
    new = rl.get(run_id)
    assert new.metrics["test_roc_auc"] > 0.5 and new.params["C"] != "0.0001"
    retrained = next(e for e in report["entries"] if e["role"] == "champion")
    assert rl.get(retrained["run_id"]).upstream_ids == new.upstream_ids  # same new data


def test_refresh_scores_the_served_model_and_holds_on_drift(project: Path, relay) -> None:
    """After new days arrive the served model is scored on fresh rows it never saw, the diff
    since its data is recorded, and --max-drift holds the promotion; a new load failing its
    checks stops the refresh before any training."""
    import sqlite3

    import generate

    args = ("refresh", "--candidates", "logreg", "--metric", "test_roc_auc", "-P", "cv=2")
    assert relay(*args).code == 0
    generate.generate(f"sqlite:///{project / 'data' / 'fraud.db'}", days=3, append=1,
                      rows_per_day=1500)  # fmt: skip
    r = relay(*args, "--max-drift", "0.000001", "--json")
    assert r.code == 0, r
    report = json.loads(r.out)
    assert report["decision"] == "held: drift" and report["promoted"] is None
    assert _champion()[0] == 1
    served = report["served"]
    assert served["version"] == 1 and served["rows"] > 0 and 0 < served["value"] <= 1
    assert served["target"] == "Class"
    assert report["data_diff"]["added"] == 1500 and report["data_diff"]["removed"] == 0
    assert report["max_drift"]["psi"] > 0.000001 and report["max_drift"]["column"] != "id"
    record = get_store(open_project()).get_run(report["record"])
    assert json.loads(record.data.tags["relay.refresh.drift"]) == report["max_drift"]
    assert record.data.metrics["served_test_roc_auc"] == served["value"]
    text = relay(*args, "--max-drift", "0.000001")
    assert "held" in text.out and "served v1 on" in text.out, text

    trained = len(rl.runs("training"))
    with sqlite3.connect(project / "data" / "fraud.db") as con:
        con.execute("DELETE FROM transactions")
    r = relay(*args)
    assert r.code == 1 and "min_rows" in r.err, r
    assert len(rl.runs("training")) == trained and _champion()[0] == 1
    bad = relay(*args, "--max-drift", "-1")
    assert bad.code == 2 and "--max-drift" in bad.err
