"""Data you can trust: the summary of a data version, checks on a load, ``relay diff``, and
the pure parts of a drift-aware refresh (through the CLI and the public API)."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import relayml
from relayml.checks import Checker
from relayml.data_summary import Summarizer
from relayml.datadiff import diff_files, psi
from relayml.lifecycle import refresh_decision

from conftest import make_project


def add_code(root: Path, code: str) -> None:
    with open(root / "steps.py", "a") as f:
        f.write("\n\n" + textwrap.dedent(code))


def db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "data" / "fraud.db")


# -- the summary --------------------------------------------------------------------------


def test_summary_matches_pandas_whatever_the_batches() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "x": np.where(rng.random(5000) < 0.1, np.nan, rng.normal(3, 2, 5000)),
            "n": rng.integers(0, 50, 5000),
            "s": rng.choice(["a", "b", None], 5000),
        }
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    results = []
    for size in (5000, 777):
        s = Summarizer()
        for batch in table.to_batches(max_chunksize=size):
            s.update(batch)
        results.append(s.result())
    one, many = results
    assert one["columns"]["n"] == many["columns"]["n"] or one["rows"] == many["rows"]
    x = many["columns"]["x"]
    valid = frame["x"].dropna()
    assert many["rows"] == 5000 and x["nulls"] == frame["x"].isna().sum()
    assert x["min"] == valid.min() and x["max"] == valid.max()
    assert x["mean"] == pytest.approx(valid.mean()) and x["std"] == pytest.approx(valid.std())
    assert x["quantiles"]["0.5"] == pytest.approx(valid.median(), abs=0.1)
    assert many["columns"]["n"]["distinct"] == frame["n"].nunique()  # exact below the sketch
    assert many["columns"]["s"]["distinct"] == 2 and many["columns"]["s"]["nulls"] > 0


def test_a_load_run_carries_its_summary(project: Path, relay) -> None:
    assert relay("run", "load", "transactions").code == 0
    run = relayml.get("load@latest")
    summary = run.data_summary["fraud"]
    assert summary["rows"] == 4500 == run.rows and summary["bytes"] > 0
    amount = summary["columns"]["Amount"]
    assert amount["type"] == "double" and amount["nulls"] == 0 and amount["min"] > 0
    assert set(amount["quantiles"]) >= {"0.05", "0.5", "0.95"} and amount["distinct"] > 1000
    assert summary["columns"]["Class"]["distinct"] == 2
    assert summary["columns"]["ts"]["min"].startswith("2019-02-01")
    profile = json.loads(run.mlflow.inputs.dataset_inputs[0].dataset.profile)
    assert profile["num_rows"] == 4500 and profile["columns"]["Amount"]["mean"] > 0
    shown = relay("show", "load@latest")
    assert "data fraud: 4,500 rows" in shown.out and "Amount" in shown.out, shown
    listed = relay("runs", "load")
    assert "rows" in listed.out and "4,500" in listed.out, listed
    as_json = json.loads(relay("show", "load@latest", "--json").out)
    assert as_json["data_summary"]["fraud"]["rows"] == 4500 and as_json["checks"] == "passed"
    assert relay("run", "processing", "plain").code == 0
    assert relayml.get("processing@latest").data_summary == {}  # not a load


# -- checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_rows": -1}, "min_rows must be an integer >= 0"),
        ({"ranges": {"Amount": 0}}, r"ranges\['Amount'\] must be a pair"),
        ({"schema": {"id": "integerish"}}, "is not a type name"),
        ({"max_null_ratio": {"V1": 2}}, "must be in 0..1"),
    ],
)
def test_bad_check_declarations_name_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(relayml.ConfigError, match=message):
        relayml.checks(**kwargs)


def test_checks_and_key_belong_to_a_load_step() -> None:
    training = relayml.step("training", upstream="processing")
    with pytest.raises(relayml.ConfigError, match="declare them on a variant of a step without"):
        training.variant("x", key=["id"])


def test_checker_counts_rows_across_batches_and_keeps_examples() -> None:
    c = Checker(relayml.checks(not_null=["v"], ranges={"v": (0, 10)}), key=["id"])
    c.update(pa.record_batch({"id": [1, 2, 3], "v": [1.0, None, 11.0]}))
    c.update(pa.record_batch({"id": [4, 3, 6], "v": [-1.0, float("nan"), 5.0]}))
    report = c.finish({"rows": 6, "columns": {"v": {"nulls": 1}}})
    report.snapshot = "t"
    failed = {r.name: r for r in report.failures}
    assert failed["not_null"].failed_rows == 2 and failed["ranges"].failed_rows == 2
    assert failed["ranges"].examples == [{"id": 3, "v": 11.0}, {"id": 4, "v": -1.0}]
    assert failed["unique"].failed_rows == 1  # the declared key is unique too
    assert "FAILED ranges [v]: 2 row(s) outside [0, 10]" in report.text()


def test_failed_checks_stop_the_load_with_a_report(project: Path, relay) -> None:
    add_code(
        project,
        """
        @load.variant(
            "strict",
            checks=relay.checks(ranges={"Amount": (0, 50)}, unique=["id"],
                                schema={"id": "int", "missing": None}),
            key=["id"],
        )
        def strict(ctx):
            return ctx.query("fraud", "SELECT * FROM transactions UNION ALL "
                                      "SELECT * FROM transactions WHERE id < 2 ORDER BY id")
        """,
    )
    r = relay("run", "load", "strict")
    assert r.code == 1 and "ranges" in r.err and "schema" in r.err and "unique" in r.err, r
    run = relayml.runs("load", status="FAILED")[0]
    assert run.tags["relay.checks"] == "failed" and "relay.data" not in run.tags
    report = json.loads(
        run.store.download(run.run_id, "checks/fraud.json", project / ".relay" / "x").read_text()
    )
    by_name = {(c["check"], c["column"]): c for c in report["results"]}
    too_big = by_name[("ranges", "Amount")]
    amounts = pd.read_sql("SELECT Amount FROM transactions", db(project))["Amount"]
    assert too_big["failed_rows"] == (amounts > 50).sum() + sum(
        a > 50 for a in amounts[:2]
    )  # the duplicated rows count twice
    assert len(too_big["examples"]) == 5 and all(e["Amount"] > 50 for e in too_big["examples"])
    dup = by_name[("unique", "id")]
    assert dup["failed_rows"] == 2 and sorted(e["id"] for e in dup["examples"]) == [0, 1]
    assert not by_name[("schema", "missing")]["passed"]
    text = relay("show", str(run.key))
    assert "checks of fraud" in text.out and "FAILED unique [id]" in text.out, text
    assert run.data_summary["fraud"]["rows"] == 4502  # the summary is kept for a failed load
    # nothing builds on it: processing refuses without a finished load
    r = relay("run", "processing", "plain")
    assert r.code == 2 and "needs a finished run of 'load'" in r.err, r
    # a chain stops at the failed load, before any processing run
    r = relay("chain", "load=strict", "processing=plain", "training=logreg", "-P", "training.cv=2")
    assert r.code == 1, r
    assert not relayml.runs("processing")


def test_no_checks_is_recorded(project: Path, relay) -> None:
    add_code(
        project,
        """
        @load.variant("picky", checks=relay.checks(min_rows=10**9))
        def picky(ctx):
            return ctx.query("fraud", "SELECT * FROM transactions")
        """,
    )
    assert relay("run", "load", "picky").code == 1
    r = relay("run", "load", "picky", "--no-checks")
    assert r.code == 0 and "checks skipped" in r.out, r
    assert relayml.get("load/picky@latest").tags["relay.checks"] == "skipped"
    # the same emergency switch on a chain: a failed check stops it, --no-checks records it
    first = relayml.get("load/picky@latest").run_id
    assert relay("chain", "load=picky").code == 1
    r = relay("chain", "load=picky", "--no-checks")
    assert r.code == 0, r
    again = relayml.get("load/picky@latest")
    assert again.run_id != first and again.tags["relay.checks"] == "skipped"


# -- relay diff ---------------------------------------------------------------------------


def test_psi_of_alike_and_shifted_histograms() -> None:
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    assert psi([10, 20, 30], [30, 20, 10]) > 0.25
    assert psi([10, 0], [10, 0]) == 0.0  # empty bins stay finite


def test_diff_of_two_files_with_and_without_key(tmp_path: Path) -> None:
    from relayml.data import snapshot_frame

    rng = np.random.default_rng(0)
    a = pd.DataFrame({"id": range(1000), "x": rng.normal(size=1000), "c": ["u"] * 1000})
    b = a.iloc[10:].copy()
    b.loc[b.index[:5], "x"] += 1.0
    b = pd.concat([b, pd.DataFrame({"id": [5000, 5001], "x": [0.0, 1.0], "c": ["v", "v"]})])
    b["extra"] = 1
    snapshot_frame(a, tmp_path / "a.pq")
    snapshot_frame(b.reset_index(drop=True), tmp_path / "b.pq")
    d = diff_files(tmp_path / "a.pq", tmp_path / "b.pq", key=["id"])
    assert (d.rows, d.added, d.removed, d.changed) == ({"a": 1000, "b": 992}, 2, 10, 5)
    assert [e["id"] for e in d.examples["added"]] == [5000, 5001]
    assert [e["id"] for e in d.examples["removed"]] == [0, 1, 2, 3, 4]
    change = d.examples["changed"][0]
    assert change["key"] == {"id": 10} and list(change["changes"]) == ["x"]
    assert d.schema["added"] == {"extra": "BIGINT"} and not d.schema["removed"]
    assert d.drift["c"] == {"measure": "new_categories", "value": round(2 / 992, 6)}
    assert d.drift["x"]["measure"] == "psi" and d.drift["x"]["value"] < 0.1
    whole = diff_files(tmp_path / "a.pq", tmp_path / "b.pq")
    assert (whole.added, whole.removed, whole.changed) == (7, 15, None)
    with pytest.raises(relayml.UsageError, match=r"key column\(s\) \['nope'\]"):
        diff_files(tmp_path / "a.pq", tmp_path / "b.pq", key=["nope"])


def test_diff_reads_row_hash_sidecars_with_the_same_result(tmp_path: Path) -> None:
    import shutil

    from relayml.data import snapshot_file, snapshot_frame
    from relayml.data_rowhash import sidecar_for, sidecar_path

    rng = np.random.default_rng(1)
    n = 2000
    a = pd.DataFrame({
        "id": np.arange(n), "x": rng.normal(size=n), "s": rng.choice(["p", "q", None], n),
        "t": pd.date_range("2020-01-01", periods=n, freq="h"), "b": rng.random(n) > 0.5,
        "i": pd.array(rng.integers(0, 5, n), dtype="Int64"),
    })  # fmt: skip
    a.loc[3, "x"] = np.nan
    b = a[a["id"] % 50 != 0].copy()
    b.loc[b["id"] % 70 == 1, "s"] = "z"
    b.loc[b["id"] % 90 == 2, "i"] = pd.NA
    b = pd.concat([b, a.assign(id=a["id"] + 10_000).iloc[:7]], ignore_index=True)
    with_hash, plain = tmp_path / "hashed", tmp_path / "plain"
    b.to_parquet(tmp_path / "b-source.parquet")
    for name, frame in (("a", a), ("b", b)):
        if name == "a":  # one batch
            snap = snapshot_frame(frame, with_hash / "a.parquet", key=["id"])
        else:  # batches of 97 rows: some with nulls in a column, some without
            snap = snapshot_file(tmp_path / "b-source.parquet", with_hash / "b.parquet",
                                 batch_size=97, key=["id"])  # fmt: skip
        assert sidecar_for(snap.path, ["id"], ["x", "s", "t", "b", "i"]) == sidecar_path(snap.path)
        plain.mkdir(exist_ok=True)
        shutil.copy(snap.path, plain / f"{name}.parquet")  # a file from elsewhere: no sidecar
    labels = ("a", "b")
    fast = diff_files(with_hash / "a.parquet", with_hash / "b.parquet", key=["id"], labels=labels)
    slow = diff_files(plain / "a.parquet", plain / "b.parquet", key=["id"], labels=labels)
    assert (fast.added, fast.removed) == (7, 40)
    assert fast.changed > 0 and fast == slow
    # examples are read by position, across b's row groups of 97 rows
    assert [e["id"] for e in fast.examples["added"]] == [10_000, 10_001, 10_002, 10_003, 10_004]
    assert [e["x"] for e in fast.examples["added"][:3]] == a["x"].iloc[:3].tolist()
    assert [e["id"] for e in fast.examples["removed"]] == [0, 50, 100, 150, 200]
    removed = a["x"].iloc[[0, 50, 100, 150, 200]].tolist()
    assert [e["x"] for e in fast.examples["removed"]] == removed
    # a sidecar of another snapshot (a stale one, copied by hand) is ignored, not trusted
    shutil.copy(sidecar_path(with_hash / "a.parquet"), sidecar_path(plain / "b.parquet"))
    shutil.copy(sidecar_path(with_hash / "a.parquet"), sidecar_path(plain / "a.parquet"))
    assert diff_files(plain / "a.parquet", plain / "b.parquet", key=["id"], labels=labels) == slow
    # rewriting a snapshot without a key drops its old sidecar; a failed one leaves none
    snapshot_frame(a, with_hash / "a.parquet")
    assert not sidecar_path(with_hash / "a.parquet").exists()
    with pytest.raises(relayml.SourceError):
        snapshot_frame(pd.DataFrame({"id": [1], "o": [object()]}), tmp_path / "bad.parquet",
                       key=["id"])  # fmt: skip
    assert not list(tmp_path.glob("*bad*")) and not list(tmp_path.glob(".bad*"))


def test_relay_diff_between_two_loads(project: Path, relay) -> None:
    assert relay("run", "load", "transactions").code == 0
    first = relayml.get("load@latest")
    con = db(project)
    with con:
        con.execute("UPDATE transactions SET Amount = Amount + 1000 WHERE id IN (1, 2, 3)")
        con.execute("DELETE FROM transactions WHERE id IN (4, 5)")
    import generate

    generate.generate(f"sqlite:///{project / 'data' / 'fraud.db'}", days=3, append=1,
                      rows_per_day=1500)  # fmt: skip
    assert relay("run", "load", "transactions").code == 0
    second = relayml.get("load@latest")
    r = relay("diff", str(first.key), str(second.key), "--json")
    assert r.code == 0, r
    d = json.loads(r.out)
    assert d["rows"] == {"a": 4500, "b": 4500 - 2 + 1500}
    assert (d["added"], d["removed"], d["changed"]) == (1500, 2, 3) and d["key"] == ["id"]
    assert [e["key"]["id"] for e in d["examples"]["changed"]] == [1, 2, 3]
    assert list(d["examples"]["changed"][0]["changes"]) == ["Amount"]
    assert d["digests"] == {"a": first.data_version, "b": second.data_version}
    assert d["drift"]["Amount"]["measure"] == "psi"
    # each snapshot keeps its rows' hashes beside it; a diff of the bare files agrees
    from relayml.datadiff import snapshot_of

    versions = [snapshot_of(str(r.key), relayml.open_project()) for r in (first, second)]
    assert all(v.path.with_name("snapshot.rowhash.parquet").exists() for v in versions)
    bare = project / "bare"
    bare.mkdir()
    for name, v in zip("ab", versions, strict=True):
        (bare / f"{name}.parquet").write_bytes(v.path.read_bytes())
    again = diff_files(bare / "a.parquet", bare / "b.parquet", key=["id"],
                       labels=(str(first.key), str(second.key)))  # fmt: skip
    again.digests = d["digests"]
    assert again.to_dict() == d
    # digests (or an 8-digit prefix) work as references; the text output names the counts
    r = relay("diff", first.data_version[:8], second.data_version)
    assert r.code == 0 and "1,500 added, 2 removed, 3 changed" in r.out, r
    assert "drift per column" in r.out
    assert relayml.diff(str(first.key), str(second.key), key=["id", "ts"]).changed == 3
    r = relay("diff", "load@latest")  # against the load before it
    assert r.code == 0 and f"{first.key} → {second.key}" in r.out, r
    r = relay("diff", str(first.key))
    assert r.code == 2 and "no finished load of load/transactions before" in r.err, r


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["load/nope@latest", "load@latest"], "nope"),
        (["deadbeef", "load@latest"], "no load run has data version 'deadbeef'"),
        (["processing@latest", "load@latest"], "holds no snapshot"),
        (["load@latest", "load@latest", "--key", "nope"], r"key column\(s\) \['nope'\]"),
    ],
)
def test_relay_diff_bad_input(project: Path, relay, args: list[str], message: str) -> None:
    assert relay("run", "load", "transactions").code == 0
    assert relay("run", "processing", "plain").code == 0
    r = relay("diff", *args)
    assert r.code == 2 and r.err.startswith("Error:"), r
    assert pytest.importorskip("re").search(message, r.err), r


def test_checks_summary_and_diff_on_postgres(pg_database: str, tmp_path: Path, monkeypatch,
                                             relay) -> None:  # fmt: skip
    import generate
    import sqlalchemy as sa

    generate.generate(pg_database, days=2, rows_per_day=500)
    root = make_project(tmp_path / "fraud", days=1, rows_per_day=10)
    text = (root / "relay.toml").read_text()
    start, end = text.index("[sources.fraud]"), text.index("[execution]")
    block = f'[sources.fraud]\nurl = "{pg_database}"\n\n'
    (root / "relay.toml").write_text(text[:start] + block + text[end:])
    monkeypatch.chdir(root)
    assert relay("run", "load", "transactions").code == 0
    first = relayml.get("load@latest")
    assert first.data_summary["fraud"]["rows"] == 1000 == first.rows
    assert first.data_summary["fraud"]["columns"]["ts"]["type"] == "timestamp[us]"
    engine = sa.create_engine(pg_database)
    with engine.begin() as c:
        c.execute(sa.text('UPDATE transactions SET "Amount" = -1 WHERE id = 7'))
    engine.dispose()
    r = relay("run", "load", "transactions")
    assert r.code == 1 and "ranges" in r.err, r
    assert relay("run", "load", "transactions", "--no-checks").code == 0
    d = relayml.diff(str(first.key), "load@latest")
    assert (d.added, d.removed, d.changed) == (0, 0, 1)


# -- refresh: the pure decision -----------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "extra", "expected"),
    [
        # served, retrained champion, challengers
        ((0.90, 0.91, [("rf", 0.912)]), {"margin": 0.005}, ("refreshed", "champion")),
        ((0.90, 0.91, [("rf", 0.92)]), {"margin": 0.005}, ("promoted", "rf")),
        ((0.95, 0.91, [("rf", 0.952)]), {"margin": 0.005}, ("kept", None)),
        ((0.95, 0.91, [("rf", 0.96)]), {"margin": 0.005}, ("promoted", "rf")),
        ((0.91, 0.91, []), {"margin": 0.0}, ("refreshed", "champion")),  # at least as good
        ((None, 0.91, []), {"margin": 0.0}, ("refreshed", "champion")),  # fresher data
        ((None, 0.91, []), {"margin": 0.0, "fresher_data": False}, ("kept", None)),
        ((None, 0.91, [("rf", 0.95)]), {"margin": 0.0, "fresher_data": False}, ("promoted", "rf")),
        ((0.10, 0.20, [("rf", 0.12)]), {"margin": 0.0, "lower_is_better": True}, ("kept", None)),
        ((0.30, 0.20, [("rf", 0.1)]), {"margin": 0.0, "lower_is_better": True}, ("promoted", "rf")),
        ((0.90, 0.91, []), {"margin": 0.0, "drift": 0.4, "max_drift": 0.25}, ("held: drift", None)),
        (
            (0.90, 0.91, []),
            {"margin": 0.0, "drift": 0.1, "max_drift": 0.25},
            ("refreshed", "champion"),
        ),
        ((0.95, 0.91, []), {"margin": 0.0, "drift": 0.4, "max_drift": 0.25}, ("kept", None)),
    ],
)
def test_refresh_decision(scores: tuple, extra: dict, expected: tuple) -> None:
    served, champion, challengers = scores
    got = refresh_decision(served=served, champion=champion, challengers=challengers, **extra)
    assert got == expected


def test_checks_decide_from_the_summary_stats_as_from_the_rows() -> None:
    """Batches whose stats show no null and no value out of range skip the row-level work;
    the report is the same as without the stats, whatever the batches hold."""
    spec = relayml.checks(
        not_null=["v", "s"],
        ranges={"v": (0, 10), "t": ("2019-01-02", None), "s": ("b", None)},
        unique=["id"],
    )
    batches = [
        pa.record_batch({"id": [1, 2], "v": [1.0, 2.0], "s": ["b", "c"],
                         "t": pa.array(["20190102", "20190103"])}),
        pa.record_batch({"id": [3, 4], "v": [float("nan"), 12.0], "s": [None, "a"],
                         "t": pa.array(["20190101", "20190105"])}),
        pa.record_batch({"id": [5, 5], "v": [None, 3.0], "s": ["d", "e"],
                         "t": pa.array(["20190103", None])}),
    ]  # fmt: skip
    batches = [
        b.set_column(3, "t", pa.compute.strptime(b.column("t"), "%Y%m%d", "us")) for b in batches
    ]
    reports = []
    for with_stats in (False, True):
        s, c = Summarizer(), Checker(spec)
        for b in batches:
            stats = s.update(b)
            c.update(b, stats if with_stats else None)
        reports.append(c.finish(s.result()).to_dict())
    assert json.dumps(reports[0]) == json.dumps(reports[1])  # (NaN examples: != in a dict)
    failed = {(r["check"], r["column"]): r["failed_rows"] for r in reports[1]["results"]
              if not r["passed"]}  # fmt: skip
    assert failed == {
        ("not_null", "v"): 2,
        ("not_null", "s"): 1,
        ("ranges", "v"): 1,
        ("ranges", "t"): 1,
        ("ranges", "s"): 1,
        ("unique", "id"): 1,
    }
    with pytest.raises(relayml.ConfigError, match="does not compare"):  # checked up front
        Checker(relayml.checks(ranges={"v": ("x", None)})).update(batches[0], {})
