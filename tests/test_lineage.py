"""Lineage: the upstream and downstream trees of a run (multi-parent cases: test_chain.py)."""

from __future__ import annotations

import json
from pathlib import Path

import relayml


def test_lineage_linear_and_deleted_parent(project: Path, relay) -> None:
    c = relayml.chain("load=transactions", "processing=plain", project=project)
    other = relayml.run("processing", "robust", upstream=[c["load"]], project=project)

    lin = c["load"].lineage()
    assert lin.keys("upstream") == [str(c["load"].key)]
    assert sorted(lin.keys("downstream")[1:]) == sorted([str(c["processing"].key), str(other.key)])
    assert lin.chains == [c.record.info.run_id]

    r = relay("lineage", str(c["processing"].key), "--json")
    assert r.code == 0, r
    tree = json.loads(r.out)
    [parent] = tree["upstream"]["children"]
    assert parent["key"] == str(c["load"].key) and parent["status"] == "FINISHED"

    c["load"].store.delete_run(c["load"].run_id)
    lin = relayml.get(str(c["processing"].key), project=project).lineage()
    [parent] = lin.upstream["children"]
    assert parent["status"] == "DELETED" and parent["key"] == str(c["load"].key)

    r = relay("lineage", "processing/nope@latest")
    assert r.code == 2 and "Error:" in r.err
