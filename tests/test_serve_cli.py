"""End-to-end tests of ``relay serve`` and ``relay predict`` on the fraud example.

One fraud project is run once for the module (load → processing → training, then promote):
``relay serve`` runs as real subprocesses (a run reference with a token and a body limit, and
the registry alias ``models:/fraud@champion``), bound to 127.0.0.1 and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from conftest import free_port, make_project, relay_process, wait_http

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
TOKEN = "s3cret-token"
_ENV = ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "RELAY_PROJECT", "RELAY_EXECUTOR")


def _cli(*args: str) -> tuple[int, str, str]:
    """The CLI in-process (for the module-scoped setup, where the ``relay`` fixture is not)."""
    from relayml.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        mp.setattr(sys, "argv", ["relay", *args])
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fraud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fraud project with load/processing/training run and the model promoted."""
    root = make_project(tmp_path_factory.mktemp("serve-cli") / "fraud")
    with pytest.MonkeyPatch.context() as mp:
        for var in _ENV:
            mp.delenv(var, raising=False)
        mp.chdir(root)
        for args in (
            ("run", "load", "transactions"),
            ("run", "processing", "plain"),
            ("run", "training", "logreg", "-P", "cv=2"),
            ("promote", "training/logreg@latest"),
        ):
            code, out, err = _cli(*args)
            assert code == 0, (args, out, err)
        yield root


@pytest.fixture
def here(fraud: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(fraud)
    return fraud


def _records(root: Path, n: int) -> pd.DataFrame:
    """``n`` raw transactions (all columns, rounded so that one record fits in 1 KiB)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{root / 'data' / 'fraud.db'}")
    with engine.connect() as con:
        frame = pd.read_sql(f"SELECT * FROM transactions ORDER BY id DESC LIMIT {n}", con)
    engine.dispose()
    frame[FEATURES] = frame[FEATURES].round(6)
    return frame


def _expected(root: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The in-process predictions of training/logreg@latest's bundle."""
    import relayml as relay
    from relayml.bundle import load_bundle
    from relayml.runs import open_project

    run = relay.get("training/logreg@latest", project=open_project(root))
    return load_bundle(run.model_uri).predict(frame)


@contextlib.contextmanager
def _serving(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    proc = relay_process(
        "serve", *args, "--host", "127.0.0.1", "--port", str(port), cwd=root,
        env={**(env or {}), "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.fixture(scope="module")
def servers(fraud: Path) -> Iterator[dict[str, str]]:
    """Two servers started side by side: a run reference (token, 1 KiB limit) and the registry
    alias with 2 worker processes (which must find the project's store on their own)."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV}
    with (
        _serving(
            fraud, "training/logreg@latest", "--token-env", "SCORING_TOKEN", "--max-body", "1KiB",
            env={**env, "SCORING_TOKEN": TOKEN},
        ) as (run_url, run_proc),
        _serving(
            fraud, "models:/fraud@champion", "--workers", "2", "--token-env", "ALIAS_TOKEN",
            env={**env, "ALIAS_TOKEN": TOKEN},
        ) as (alias_url, alias_proc),
    ):  # fmt: skip
        wait_http(f"{run_url}/ping", timeout=90, proc=run_proc)
        wait_http(f"{alias_url}/ping", timeout=90, proc=alias_proc)
        yield {"run": run_url, "alias": alias_url, "alias_pid": alias_proc.pid}


AUTH = {"authorization": f"Bearer {TOKEN}"}


def _score(url: str, frame: pd.DataFrame, headers: dict[str, str] | None = None) -> httpx.Response:
    body = orjson.dumps({"dataframe_records": frame[["id", *FEATURES]].to_dict(orient="records")})
    return httpx.post(
        f"{url}/invocations",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def _assert_same(predictions: list[dict], expected: pd.DataFrame) -> None:
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert [p["score"] for p in predictions] == expected["score"].tolist()  # bit for bit


def test_version_tells_provenance(servers, here):
    import relayml as relay

    run = relay.get("training/logreg@latest")
    got = httpx.get(f"{servers['run']}/version", headers=AUTH).json()
    prov = got["provenance"]
    assert prov["training"] == str(run.key)
    assert prov["processing"] == str(run.upstream["processing"].key)
    assert prov["load"] == str(run.upstream["processing"].upstream["load"].key)
    assert prov["data_version"] == run.data_version and len(run.data_version) == 32
    assert prov["commit"] == run.tags["relay.git.commit"] and len(prov["commit"]) == 40
    assert prov["model_uri"] == got["model_uri"] == run.model_uri
    alias = httpx.get(f"{servers['alias']}/version", headers=AUTH).json()
    assert alias["model_uri"] == "models:/fraud@champion"


def test_openapi_lists_the_raw_columns(servers):
    doc = httpx.get(f"{servers['alias']}/openapi.json", headers=AUTH).json()
    record = doc["components"]["schemas"]["Record"]
    assert list(record["properties"]) == FEATURES == record["required"]
    assert all(v == {"type": "number"} for v in record["properties"].values())
    assert "/invocations" in doc["paths"]


def test_predictions_equal_the_bundle_in_process(servers, here):
    frame = _records(here, 1)
    expected = _expected(here, frame)
    for url in (servers["run"], servers["alias"]):
        answer = _score(url, frame, AUTH)
        assert answer.status_code == 200, answer.text
        _assert_same(answer.json()["predictions"], expected)


def test_token_guards_all_but_ping(servers, here):
    url, frame = servers["run"], _records(here, 1)
    assert httpx.get(f"{url}/ping").status_code == 200
    denied = _score(url, frame)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert _score(url, frame, {"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/version").status_code == 401
    assert _score(url, frame, AUTH).status_code == 200


def test_max_body_answers_413(servers, here):
    frame = _records(here, 5)  # ~3 KiB of JSON, over the 1 KiB limit
    answer = _score(servers["run"], frame, AUTH)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert _score(servers["run"], frame.head(1), AUTH).status_code == 200  # still serving


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("processing/plain@latest", "logged no model"),
        ("training/logreg@@x", "malformed reference"),
        ("models:/nope@x", "no model at 'models:/nope@x'"),
    ],
)
def test_bad_ref_exits_2_with_one_line(here, relay, ref, match):
    result = relay("serve", ref, "--port", str(free_port()))
    assert result.code == 2, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result
    assert match in " ".join(result.err.split()), result


def test_predict_writes_keys_and_predictions(here, relay, tmp_path):
    frame = _records(here, 300)
    src, dst = tmp_path / "new.csv", tmp_path / "out.parquet"
    frame.to_csv(src, index=False)
    result = relay("predict", "training/logreg@latest", "--input", str(src), "--output", str(dst))
    assert result.code == 0, result
    assert "300 predictions written" in result.out
    out = pd.read_parquet(dst)
    assert list(out.columns) == ["id", "label", "score"]
    assert out["id"].tolist() == frame["id"].tolist()
    expected = _expected(here, frame)
    assert np.array_equal(out["score"].to_numpy(), expected["score"].to_numpy())
    assert np.array_equal(out["label"].to_numpy(), expected["label"].to_numpy())


def test_predict_broken_input_leaves_no_output(here, relay, tmp_path):
    frame = _records(here, 20).astype({"Amount": object})
    frame.loc[7, "Amount"] = "twelve"
    src, dst = tmp_path / "broken.csv", tmp_path / "out.parquet"
    frame.to_csv(src, index=False)
    result = relay("predict", "models:/fraud@champion", "-i", str(src), "-o", str(dst))
    assert result.code == 2, result
    assert "Error:" in result.err and "'Amount'" in result.err, result
    assert "Traceback" not in result.err
    assert not dst.exists() and not list(tmp_path.glob(".out.parquet*"))
    missing = tmp_path / "missing.csv"
    _records(here, 20).drop(columns=["V3"]).to_csv(missing, index=False)
    result = relay("predict", "models:/fraud@champion", "-i", str(missing), "-o", str(dst))
    assert result.code == 2 and "missing column 'V3'" in result.err, result
    assert not dst.exists()


def test_worker_processes_get_the_token_through_its_own_variable_only(servers):
    """No token on any command line, nor copied into another environment variable."""
    import psutil

    parent = psutil.Process(servers["alias_pid"])
    processes = [parent, *parent.children(recursive=True)]
    assert len(processes) >= 3  # the server and its two workers
    assert httpx.get(f"{servers['alias']}/version", headers=AUTH).status_code == 200
    for proc in processes:
        assert not any(TOKEN in part for part in proc.cmdline()), proc.cmdline()
        holding = sorted(k for k, v in proc.environ().items() if TOKEN in v)
        assert holding == ["ALIAS_TOKEN"], holding


@pytest.mark.parametrize("port", ["70000", "0", "-5"])
def test_port_out_of_range_exits_2(here, relay, port):
    result = relay("serve", "training/logreg@latest", "--port", port)
    assert result.code == 2, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "out of range" in lines[0], result


def test_predict_with_pickle_forbidden_loads_the_skops_bundle(here, relay, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    frame = _records(here, 50)
    src, dst = tmp_path / "new.csv", tmp_path / "out.parquet"
    frame.to_csv(src, index=False)
    result = relay("predict", "models:/fraud@champion", "-i", str(src), "-o", str(dst))
    assert result.code == 0, result
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    expected = _expected(here, frame)
    assert np.array_equal(pd.read_parquet(dst)["score"].to_numpy(), expected["score"].to_numpy())
