"""Nothing left RUNNING, nothing half-made: bad input is one ``Error:`` line and exit 2.

Each case checks the clear error and that nothing was created: no run where the check comes
before the run, no stray file or folder.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

STEPS = """
import sys

import pandas as pd

import relayml as relay

load = relay.step("load")


@load.variant("quits")
def quits(ctx):
    sys.exit(3)


@load.variant("numbers")
def numbers(ctx, C: float = 1.0, n: int = 1):
    return pd.DataFrame({"C": [C], "n": [n]})


@load.variant("table")
def table(ctx):
    return ctx.query("shop", "SELECT * FROM t")
"""


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-step project on the embedded store; its source is a SQLite file that is missing."""
    root = tmp_path / "tiny"
    root.mkdir()
    (root / "relay.toml").write_text(
        textwrap.dedent("""
        [project]
        name = "tiny"
        steps = "steps"
        [tracking]
        uri = "sqlite:///.relay/mlflow.db"
        [sources.shop]
        url = "sqlite:///data/shop.db"
        """)
    )
    (root / "steps.py").write_text(STEPS)
    monkeypatch.chdir(root)
    return root


def _runs(relay) -> list[dict]:
    result = relay("runs", "--json")
    assert result.code == 0, result
    return json.loads(result.out)


def _one_error_line(result) -> None:
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result
    assert "Traceback" not in result.err + result.out


def test_sys_exit_in_a_variant_fails_its_run_with_the_exit_code(relay, tiny: Path) -> None:
    """Before: the run stayed RUNNING until its heartbeat expired."""
    result = relay("run", "load", "quits")
    assert result.code == 1, result
    assert "sys.exit(3)" in result.err
    (run,) = _runs(relay)
    assert run["status"] == "FAILED"
    shown = json.loads(relay("show", run["key"], "--json").out)
    assert shown["tags"]["relay.exit_code"] == "3"
    assert "sys.exit(3)" in shown["tags"]["relay.error"]


@pytest.mark.parametrize(
    "param", ["C=1e999", "C=nan", "C=-inf", "n=9223372036854775808", "n=-99999999999999999999"]
)
def test_params_mlflow_cannot_store_are_refused_before_any_run(
    relay, tiny: Path, param: str
) -> None:
    result = relay("run", "load", "numbers", "-P", param)
    _one_error_line(result)
    assert param.split("=")[0] in result.err and ("finite" in result.err or "int64" in result.err)
    assert _runs(relay) == []


def test_params_at_the_limits_are_accepted(relay, tiny: Path) -> None:
    result = relay("run", "load", "numbers", "-P", "n=9223372036854775807", "-P", "C=1e308")
    assert result.code == 0, result
    assert _runs(relay)[0]["params"] == {"C": "1e+308", "n": "9223372036854775807"}


def test_predict_into_a_missing_folder_is_refused(relay, tiny: Path) -> None:
    (tiny / "in.csv").write_text("a\n1\n")
    result = relay("predict", "load/numbers@latest", "-i", "in.csv", "-o", "missing/out.csv")
    _one_error_line(result)
    assert "missing" in result.err and "does not exist" in result.err
    assert not (tiny / "missing").exists()


def test_a_steps_setting_that_is_not_a_module_name_is_refused(relay, tiny: Path) -> None:
    toml = tiny / "relay.toml"
    toml.write_text(toml.read_text().replace('steps = "steps"', "steps = 42"))
    for args in (("steps",), ("run", "load", "numbers")):
        result = relay(*args)
        _one_error_line(result)
        assert "[project] steps" in result.err and "42" in result.err
    assert not (tiny / ".relay").exists()


def test_a_tracking_uri_of_an_unknown_scheme_is_refused(relay, tiny: Path) -> None:
    toml = tiny / "relay.toml"
    toml.write_text(toml.read_text().replace("sqlite:///.relay/mlflow.db", "bogus://x"))
    for args in (("runs",), ("run", "load", "numbers")):
        result = relay(*args)
        _one_error_line(result)
        assert "bogus://x" in result.err and "[tracking] uri" in result.err
    assert not (tiny / "bogus:").exists() and not (tiny / "x").exists()


def test_a_missing_sqlite_source_file_fails_the_load_and_creates_nothing(relay, tiny: Path) -> None:
    """Before: SQLite created an empty data/shop.db and the query said 'no such table'."""
    (tiny / "data").mkdir()
    result = relay("run", "load", "table")
    assert result.code == 1, result
    assert "data/shop.db does not exist" in result.err
    assert not (tiny / "data" / "shop.db").exists()
    (run,) = _runs(relay)
    assert run["status"] == "FAILED"
    with sqlite3.connect(tiny / "data" / "shop.db") as con:  # once it exists, it loads
        con.execute("CREATE TABLE t (a INTEGER)")
        con.execute("INSERT INTO t VALUES (1)")
    assert relay("run", "load", "table").code == 0
