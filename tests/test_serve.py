"""Tests of relayml.serve: the scoring app (vs. `mlflow models serve`), errors, batch scoring."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import warnings

import httpx
import mlflow
import numpy as np
import orjson
import pandas as pd
import pytest
from test_bundle import FEATURES, fit_fraud, fit_fraud_example, make_fraud_table

from relayml import __version__
from relayml.bundle import load_bundle, log_bundle
from relayml.errors import UsageError
from relayml.serve import create_app, predict_file

with warnings.catch_warnings():  # "use httpx2": the test client still works with httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow")
    tracking = f"sqlite:///{root}/mlflow.db"
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment("training")
    df = make_fraud_table(8_000)
    processor, model = fit_fraud(df.iloc[:6000])
    with mlflow.start_run() as run:
        mlflow.set_tag("relay.key", "training/logreg@20190209101500")
        plain = log_bundle(processor, model, raw_example=df.head(5), run_id=run.info.run_id)
        thr = log_bundle(
            processor,
            model,
            raw_example=df.head(5),
            run_id=run.info.run_id,
            threshold=0.05,
            name="model_thr",
        )
        example_proc, example_model = fit_fraud_example(df.iloc[:6000])
        example = log_bundle(  # the fraud example's structure: pandas output, liblinear
            example_proc,
            example_model,
            raw_example=df.head(5),
            run_id=run.info.run_id,
            threshold=0.05,
            name="model_example",
        )
    yield {
        "example": load_bundle(example),
        "tracking": tracking,
        "plain": load_bundle(plain),
        "threshold": load_bundle(thr),
        "test": df.iloc[6000:].reset_index(drop=True),
    }
    mlflow.set_tracking_uri(old)


def payloads(rows: pd.DataFrame) -> dict[str, tuple[str, bytes]]:
    """The same rows in MLflow's four JSON formats and CSV (with an extra column, id)."""
    frame = rows[["id", *FEATURES]]
    records = frame.to_dict(orient="records")
    split = frame.to_dict(orient="split")
    del split["index"]
    columnar = {c: frame[c].tolist() for c in frame.columns}
    js = "application/json"
    return {
        "dataframe_split": (js, orjson.dumps({"dataframe_split": split})),
        "dataframe_records": (js, orjson.dumps({"dataframe_records": records})),
        "instances": (js, orjson.dumps({"instances": records})),
        "inputs": (js, orjson.dumps({"inputs": columnar})),
        "csv": ("text/csv", frame.to_csv(index=False).encode()),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(uri: str, tracking: str):
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    proc = subprocess.Popen(
        [*cmd, "-p", str(port), "-h", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"mlflow models serve exited: {proc.stderr.read()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "mlflow models serve did not start"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "threshold", "example"])
def test_answers_equal_mlflow_models_serve(served, kind):
    bundle = served[kind]
    assert bundle.numeric  # the compiled numpy path is what is compared
    client = TestClient(create_app(bundle))
    rows = served["test"].head(100)
    with mlflow_server(bundle.uri, served["tracking"]) as url:
        for fmt, (ctype, body) in payloads(rows).items():
            for sample in (body, payloads(rows.head(1))[fmt][1]):
                ours = client.post("/invocations", content=sample, headers={"content-type": ctype})
                theirs = httpx.post(
                    f"{url}/invocations", content=sample, headers={"content-type": ctype}
                )
                assert theirs.status_code == 200, theirs.text
                assert ours.status_code == 200, ours.text
                assert ours.json() == theirs.json(), fmt


def test_predictions_are_the_bundles(served):
    bundle = served["threshold"]
    rows = served["test"].head(50)
    got = TestClient(create_app(bundle)).post(
        "/invocations", json={"dataframe_records": rows[FEATURES].to_dict(orient="records")}
    )
    expected = bundle.predict(rows)
    assert [p["score"] for p in got.json()["predictions"]] == expected["score"].tolist()
    assert [p["label"] for p in got.json()["predictions"]] == expected["label"].tolist()


def _good(rows: pd.DataFrame) -> dict:
    return {"dataframe_records": rows[FEATURES].to_dict(orient="records")}


def _bad_requests(rows: pd.DataFrame) -> list:
    record = rows[FEATURES].iloc[0].to_dict()
    js = {"content-type": "application/json"}
    return [
        ("malformed", b'{"dataframe_records": [', js, 400, "malformed_json", None),
        ("not-object", b"[1, 2]", js, 400, "bad_input", None),
        ("no-format", b'{"data": []}', js, 400, "bad_input", None),
        (
            "missing",
            orjson.dumps({"dataframe_records": [{k: v for k, v in record.items() if k != "V7"}]}),
            js,
            400,
            "missing_column",
            "V7",
        ),
        (
            "wrong-type",
            orjson.dumps({"dataframe_records": [{**record, "Amount": "12.5"}]}),
            js,
            400,
            "wrong_type",
            "Amount",
        ),
        (
            "null",
            orjson.dumps({"dataframe_records": [{**record, "V2": None}]}),
            js,
            400,
            "missing_value",
            "V2",
        ),
        (
            "split-missing",
            orjson.dumps({"dataframe_split": {"columns": ["Time"], "data": [[1.0]]}}),
            js,
            400,
            "missing_column",
            "V1",
        ),
        ("empty", b'{"dataframe_records": []}', js, 400, "empty_input", "dataframe_records"),
        ("empty-csv", b"", {"content-type": "text/csv"}, 400, "empty_input", None),
        (
            "csv-type",
            (",".join(FEATURES) + "\n" + ",".join(["x"] * len(FEATURES)) + "\n").encode(),
            {"content-type": "text/csv"},
            400,
            "wrong_type",
            "Time",
        ),
        (
            "type",
            b"a=1",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
            "content-type",
        ),
        ("no-type", b"{}", {}, 415, "unsupported_media_type", "content-type"),
        ("too-big", b"x" * 20_000, js, 413, "payload_too_large", None),
    ]


@pytest.mark.parametrize("case", range(13))
def test_bad_requests_get_json_errors_and_server_keeps_serving(served, case):
    rows = served["test"].head(3)
    name, body, headers, status, code, field = _bad_requests(rows)[case]
    app = create_app(served["plain"], max_body=16_384)
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/invocations", content=body, headers=headers)
    assert r.status_code == status, (name, r.text)
    error = r.json()["error"]
    assert error["code"] == code, name
    assert error["field"] == field, name
    assert "Traceback" not in r.text and error["message"]
    good = client.post("/invocations", json=_good(rows))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 3


def test_extra_columns_are_ignored_and_ints_accepted(served):
    rows = served["test"].head(2)
    records = rows[["id", "Class", *FEATURES]].to_dict(orient="records")
    records[0]["note"] = "anything"
    records[0]["Time"] = int(records[0]["Time"])
    client = TestClient(create_app(served["plain"]))
    got = client.post("/invocations", json={"dataframe_records": records})
    assert got.status_code == 200
    expected = served["plain"].predict(pd.DataFrame(records))
    assert got.json()["predictions"] == expected.tolist()


def test_token_guards_everything_but_health(served):
    client = TestClient(create_app(served["plain"], token="s3cret"))
    rows = served["test"].head(1)
    assert client.get("/ping").status_code == 200
    assert client.get("/health").status_code == 200
    for headers in ({}, {"authorization": "Bearer nope"}):
        r = client.post("/invocations", json=_good(rows), headers=headers)
        assert r.status_code == 401 and r.json()["error"]["field"] == "authorization"
        assert client.get("/version", headers=headers).status_code == 401
    ok = client.post("/invocations", json=_good(rows), headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_version_and_openapi(served):
    provenance = {"training": "training/logreg@20190209101500", "data_digest": "b3:abc"}
    client = TestClient(create_app(served["plain"], provenance=provenance))
    version = client.get("/version").json()
    assert version["relayml"] == __version__
    assert version["model_uri"] == served["plain"].uri
    assert version["provenance"]["data_digest"] == "b3:abc"
    assert version["provenance"]["relay.key"] == "training/logreg@20190209101500"
    spec = client.get("/openapi.json").json()
    record = spec["components"]["schemas"]["Record"]
    assert list(record["properties"]) == FEATURES
    assert record["properties"]["Amount"] == {"type": "number"}
    assert record["required"] == FEATURES
    assert "/invocations" in spec["paths"]
    assert client.get("/nope").status_code == 404
    assert client.get("/invocations").status_code == 405


@pytest.mark.parametrize(("src", "dst"), [(".csv", ".parquet"), (".parquet", ".csv")])
def test_predict_file_streams_batches(served, tmp_path, src, dst):
    rows = served["test"].head(1000)
    data = rows[["id", *FEATURES, "Class"]]
    source = tmp_path / f"in{src}"
    data.to_csv(source, index=False) if src == ".csv" else data.to_parquet(source)
    seen: list[int] = []
    out = tmp_path / f"out{dst}"
    uri = served["threshold"].uri
    assert predict_file(uri, source, out, batch_size=300, progress=seen.append) == 1000
    assert seen == [300, 600, 900, 1000]
    got = pd.read_parquet(out) if dst == ".parquet" else pd.read_csv(out)
    assert list(got.columns) == ["id", "label", "score"]
    expected = served["threshold"].predict(rows)
    assert got["id"].tolist() == rows["id"].tolist()
    assert got["label"].tolist() == expected["label"].tolist()
    if dst == ".parquet":
        assert np.array_equal(got["score"].to_numpy(), expected["score"].to_numpy())


def test_predict_file_row_numbers_and_errors(served, tmp_path):
    rows = served["test"].head(10)
    source = tmp_path / "in.parquet"
    rows[FEATURES].to_parquet(source)
    out = tmp_path / "out.csv"
    assert predict_file(served["plain"].uri, source, out) == 10
    got = pd.read_csv(out)
    assert list(got.columns) == ["row", "prediction"]
    assert got["row"].tolist() == list(range(10))
    with pytest.raises(UsageError, match="key column 'nope'"):
        predict_file(served["plain"].uri, source, out, key_column="nope")
    with pytest.raises(UsageError, match="unknown suffix"):
        predict_file(served["plain"].uri, source, tmp_path / "out.txt")
    rows[FEATURES[1:]].to_parquet(tmp_path / "short.parquet")
    with pytest.raises(UsageError, match="missing column 'Time'"):
        predict_file(served["plain"].uri, tmp_path / "short.parquet", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
