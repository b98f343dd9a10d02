"""Withdrawn claims (runs created, then given up before any work) are invisible."""

from __future__ import annotations

import json
from pathlib import Path

import relayml as rl
from relayml.runs import open_project
from relayml.store import get_store


def test_withdrawn_claims_stay_out_of_runs_delete_plans_and_lineage(project: Path, relay) -> None:
    from relayml.claims import claim
    from relayml.runner import prepare

    c = rl.chain("load=transactions", "processing=plain")
    load, plain = c["load"], c["processing"]
    store = get_store(open_project())
    req = prepare("processing", "plain", upstream=[load], project=open_project())
    outcome = claim(store, req)  # a FINISHED twin exists: our new run is withdrawn
    assert outcome.reused == plain
    # (a claim made in the chain's own second first withdraws from that key, then reuses)
    found = store.search(["processing"], "tags.`relay.withdrawn` LIKE '%'", deleted=True)
    assert found
    for withdrawn in found:
        assert "relay.key" not in withdrawn.data.tags  # no key equal to a live run's
        assert withdrawn.data.tags["relay.withdrawn.key"]
    # one withdrawn by an older relayml kept the live run's key
    tags = {**plain.tags, "relay.withdrawn": "reusing " + str(plain.key)}
    old = store.create_run("processing", start_ms=1, run_name=str(plain.key), tags=tags)
    store.finish(old.info.run_id, "KILLED")
    store.delete_run(old.info.run_id)
    hidden = {w.info.run_id for w in found} | {old.info.run_id}

    listed = json.loads(relay("runs", "--json").out)
    assert [r["key"] for r in listed] == [str(plain.key), str(load.key)]
    plan = relay("delete", str(load.key), "--cascade", "--dry-run", "--json")
    assert plan.code == 0, plan
    ids = [r["run_id"] for r in json.loads(plan.out)["runs"]]
    assert sorted(ids) == sorted([load.run_id, plain.run_id]) and not hidden & set(ids)
    lineage = relay("lineage", str(load.key), "--json")
    assert lineage.code == 0 and not any(h in lineage.out for h in hidden)
    assert relay("show", withdrawn.info.run_id).code == 2
