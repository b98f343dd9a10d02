"""``relay compare``: rankings only between runs on the same data version."""

from __future__ import annotations

import json
from pathlib import Path

import relayml as rl
from relayml.lifecycle import Ranking


def _two_data_versions(project: Path) -> tuple[rl.Run, rl.Run]:
    import generate

    first = rl.run("load", "transactions")
    rl.run("processing", "plain", upstream=[first])
    rl.run("processing", "robust", upstream=[first])
    generate.generate(f"sqlite:///{project / 'data' / 'fraud.db'}", days=3, append=1,
                      rows_per_day=1500)  # fmt: skip
    second = rl.run("load", "transactions")
    rl.run("processing", "plain", upstream=[second])
    assert first.data_version != second.data_version
    return first, second


def test_compare_refuses_mixed_data_and_ranks_by_data(project: Path, relay) -> None:
    first, second = _two_data_versions(project)

    mixed = relay("compare", "processing", "--metric", "train_rows")
    assert mixed.code == 2, mixed
    assert "2 data versions" in mixed.err
    assert first.data_version[:12] in mixed.err and second.data_version[:12] in mixed.err
    assert "(2 runs" in mixed.err and "(1 run" in mixed.err
    assert "--by-data" in mixed.err and "--data" in mixed.err

    refs = relay(
        "compare", "processing/plain@latest", "processing/robust@latest", "-m", "train_rows"
    )
    assert refs.code == 2 and "data versions" in refs.err, refs

    by = relay("compare", "processing", "--metric", "train_rows", "--by-data", "--json")
    assert by.code == 0, by
    rankings = json.loads(by.out)
    assert {r["data_version"] for r in rankings} == {first.data_version, second.data_version}
    assert sorted(len(r["runs"]) for r in rankings) == [1, 2]

    one = relay("compare", "processing", "-m", "train_rows", "--data", str(first.key), "--json")
    assert one.code == 0, one
    ranking = json.loads(one.out)
    assert ranking["data_version"] == first.data_version
    assert [r["rank"] for r in ranking["runs"]] == [1, 2]

    prefix = relay("compare", "processing", "-m", "train_rows", "--data", second.data_version[:10])
    assert prefix.code == 0 and "processing/plain" in prefix.out, prefix

    api = rl.compare("processing", metric="train_rows", by_data=True)
    assert len(api) == 2 and all(isinstance(r, Ranking) for r in api)
    best = rl.compare("processing", metric="train_rows", data=first.data_version)
    assert isinstance(best, Ranking) and best.best is not None

    unknown = relay("compare", "processing", "--metric", "nope", "--data", str(first.key))
    assert unknown.code == 2 and "train_rows" in unknown.err, unknown
