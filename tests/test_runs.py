"""Finding runs (`relay runs`, `relay show`, `relay.runs`, `relay.get`) and `relay init`."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

import relayml

from conftest import make_project


@pytest.fixture(scope="module")
def filled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project shared by the read-only tests of this module: load → processing (robust,
    plain) → training (logreg C=10, logreg C=1)."""
    root = make_project(tmp_path_factory.mktemp("runs") / "fraud")
    with pytest.MonkeyPatch.context() as env:  # module fixtures run before _isolated_env
        for var in ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "RELAY_PROJECT"):
            env.delenv(var, raising=False)
        _fill(root)
    return root


def _fill(root: Path) -> None:
    for step, variant, params in (
        ("load", "transactions", {}),
        ("processing", "robust", {}),
        ("processing", "plain", {}),
        ("training", "logreg", {"C": "10", "cv": "2"}),
        ("training", "logreg", {"C": "1", "cv": "2"}),
    ):
        relayml.run(step, variant, params, project=root)


@pytest.fixture
def filled(filled_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(filled_root)
    return filled_root


def test_runs_newest_first_with_filters(filled: Path, relay) -> None:
    r = relay("runs", "--json")
    assert r.code == 0
    rows = json.loads(r.out)
    assert [row["step"] for row in rows] == ["training"] * 2 + ["processing"] * 2 + ["load"]
    assert set(rows[0]) >= {
        "key",
        "run_id",
        "step",
        "variant",
        "status",
        "params",
        "metrics",
        "upstream",
    }
    assert rows[0]["params"]["C"] == "1.0" and rows[1]["params"]["C"] == "10.0"
    assert rows[0]["upstream"] == {"processing": rows[3]["key"]} or rows[0]["upstream"] == {
        "processing": rows[2]["key"]
    }

    one = json.loads(relay("runs", "training", "--param", "C=10", "--json").out)
    assert [row["params"]["C"] for row in one] == ["10.0"]  # "10" is coerced like -P is
    robust = json.loads(relay("runs", "processing", "--variant", "robust", "--json").out)
    assert [row["variant"] for row in robust] == ["robust"]
    today = datetime.now(UTC).date().isoformat()
    assert len(json.loads(relay("runs", "--on", today, "--json").out)) == 5
    assert json.loads(relay("runs", "--on", "2019-02-09", "--json").out) == []
    assert len(json.loads(relay("runs", "--since", today, "--until", today, "--json").out)) == 5
    assert len(json.loads(relay("runs", "--limit", "2", "--json").out)) == 2
    assert len(json.loads(relay("runs", "--status", "finished", "--json").out)) == 5
    assert json.loads(relay("runs", "--status", "FAILED", "--json").out) == []


def test_runs_table(filled: Path, relay) -> None:
    r = relay("runs", "training")
    assert r.code == 0
    assert "training/logreg@" in r.out and "FINISHED" in r.out


def test_python_search_api(filled: Path) -> None:
    found = relayml.runs("training", variant="logreg", params={"C": 10})
    assert len(found) == 1 and found[0].params["C"] == "10.0"
    frame = relayml.runs("training").to_pandas()
    assert list(frame["params.C"]) == ["1.0", "10.0"]
    assert "metrics.test_roc_auc" in frame
    newest = relayml.get("training/logreg@latest")
    assert newest == relayml.runs("training")[0]
    assert relayml.get(newest.run_id) == newest
    assert relayml.get(f"training/logreg@{datetime.now(UTC).date()}") == newest
    assert relayml.get(str(newest.key)) == newest
    assert newest.upstream["processing"].variant == "plain"
    load = relayml.get("load@latest")
    assert {r.variant for r in load.downstream} == {"plain", "robust"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "--on", "09/02/2019"], "invalid date '09/02/2019': expected YYYY-MM-DD"),
        (["runs", "--on", "2019-02-09", "--since", "2019-02-01"], "either --on or --since"),
        (["runs", "--status", "DONE"], "unknown status 'DONE'"),
        (["runs", "--param", "C"], "expected name=value"),
        (["runs", "training", "--variant", "logreg", "--param", "C=x"], "expects float"),
        (["show", "training/logreg@tomorrow"], "malformed reference"),
        (["show", "traning@latest"], "no runs of step 'traning'; did you mean 'training'"),
        (["show", "training/logreg@20000101000000"], "nearest: training/logreg@"),
        (["show", "ffffffffffffffffffffffffffffffff"], "no relay run with id"),
        (["runs", "--data", "abc"], "too short to be a digest"),
    ],
)
def test_bad_search_input(filled: Path, relay, args: list[str], message: str) -> None:
    r = relay(*args)
    assert r.code == 2, r
    assert message in r.err


def test_show(filled: Path, relay) -> None:
    r = relay("show", "training/logreg@latest", "--json")
    assert r.code == 0
    info = json.loads(r.out)
    assert info["params"]["C"] == "1.0"
    assert info["upstream"] == [str(relayml.get("processing/plain@latest").key)]
    assert info["tags"]["relay.step"] == "training"
    assert "outputs/model.skops" in info["artifacts"]
    load = json.loads(relay("show", "load@latest", "--json").out)
    assert len(load["downstream"]) == 2
    assert any(a.startswith("snapshots/") for a in load["artifacts"])
    text = relay("show", "processing/plain@latest")
    assert text.code == 0 and "upstream" in text.out and "processor" in text.out


def test_steps_listing(project: Path, relay) -> None:
    r = relay("steps")
    assert r.code == 0
    for word in ("load", "transactions", "processing", "robust", "training", "logreg", "rf"):
        assert word in r.out


def test_init_makes_a_runnable_project(tmp_path: Path, relay, monkeypatch) -> None:
    target = tmp_path / "churn"
    r = relay("init", str(target))
    assert r.code == 0
    monkeypatch.chdir(target)
    for args in (
        ["run", "load", "synthetic"],
        ["run", "processing", "scaled"],
        ["run", "training", "logreg"],
    ):
        assert relay(*args).code == 0
    run = relayml.get("training/logreg@latest")
    assert run.metrics["test_roc_auc"] > 0.8
    assert run.settings.experiment("training") == "churn/training"
    again = relay("init", str(target))
    assert again.code == 2 and "already exists" in again.err


def test_no_project_is_a_clear_error(tmp_path: Path, relay, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = relay("runs")
    assert r.code == 2 and "no relay.toml" in r.err and "relay init" in r.err


def test_tracking_uri_from_environment(project: Path, relay, monkeypatch, tmp_path) -> None:
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("RELAY_TRACKING_URI", f"sqlite:///{other}")
    assert relay("run", "load", "transactions").code == 0
    assert other.exists()
    con = sqlite3.connect(project / ".relay" / "mlflow.db")
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
    con.close()


def test_two_projects_in_one_process_keep_their_own_stores(tmp_path: Path) -> None:
    """MLflow exports its tracking URI to the environment; relay must not take it for the
    user's override and send the second project's runs into the first one's store."""
    first = make_project(tmp_path / "a")
    second = make_project(tmp_path / "b")
    with sqlite3.connect(second / "data" / "fraud.db") as con:  # data of its own: 60 rows
        con.execute("DELETE FROM transactions WHERE rowid > 60")  # rowids 1..N
    a = relayml.run("load", "transactions", project=first)
    b = relayml.run("load", "transactions", project=second)
    assert relayml.get("load@latest", project=first) == a
    assert relayml.get("load@latest", project=second) == b
    assert (first / ".relay" / "mlflow.db").exists() and (second / ".relay" / "mlflow.db").exists()
    assert b.tags["relay.snapshot.fraud.rows"] == "60"


def test_usage_errors_are_one_clear_message(project: Path, relay) -> None:
    """Unknown options and wrong types exit 2 with the parser's message, not a traceback."""
    bogus = relay("gc", "--bogus")
    assert bogus.code == 2 and "No such option: --bogus" in bogus.err, bogus
    wrong = relay("runs", "--limit", "abc")
    assert wrong.code == 2 and "Invalid value for '--limit'" in wrong.err, wrong
    for r in (bogus, wrong):
        assert "Traceback" not in r.err and "relay" in r.err and "-h" in r.err
