"""Tests of relayml.serving: the scoring app (vs. `mlflow models serve`), errors, batch scoring."""

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
from relayml.serving.app import create_app
from relayml.serving.batch import predict_file

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


@contextlib.contextmanager
def mlflow_scoring(uri: str, tracking: str, *, process: bool):
    """``post(body, headers)`` to MLflow's scoring server for the model at ``uri``: the real
    ``mlflow models serve`` process, or the same app (``scoring_server.init``, what that
    process serves) in this process."""
    if process:
        with mlflow_server(uri, tracking) as url:
            yield lambda body, headers: httpx.post(
                f"{url}/invocations", content=body, headers=headers
            )
        return
    from mlflow.pyfunc import scoring_server

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", tracking)
        env.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        app = scoring_server.init(mlflow.pyfunc.load_model(uri))
    scoring = TestClient(app)
    yield lambda body, headers: scoring.post("/invocations", content=body, headers=headers)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "threshold", "example"])
def test_answers_equal_mlflow_models_serve(served, kind):
    """Every content type, one row and many: relay's answers are MLflow's, byte for byte
    once parsed (the ``plain`` bundle against a real ``mlflow models serve`` process)."""
    bundle = served[kind]
    assert bundle.numeric  # the compiled numpy path is what is compared
    client = TestClient(create_app(bundle))
    rows = served["test"].head(100)
    with mlflow_scoring(bundle.uri, served["tracking"], process=kind == "plain") as theirs_post:
        for fmt, (ctype, body) in payloads(rows).items():
            for sample in (body, payloads(rows.head(1))[fmt][1]):
                headers = {"content-type": ctype}
                ours = client.post("/invocations", content=sample, headers=headers)
                theirs = theirs_post(sample, headers)
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


# -- safety: pickle setting, request limits, numbers, HTTP semantics, timeouts, fuzz ----------


def test_explicit_pickle_false_loads_skops_bundles_and_refuses_pickled_ones(
    served, monkeypatch, tmp_path
):
    # a function processor of a module that does not import relayml (a pyfunc bundle)
    (tmp_path / "plain_functions.py").write_text(
        "def scale_features(df):\n    return (df[['V1', 'V2', 'Amount']] - 0.5) * 2.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from plain_functions import scale_features

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    rows = served["test"].head(50)
    for kind in ("example", "plain"):  # skops; the example ships relay's threshold runtime
        safe = load_bundle(served[kind].uri)
        expected = served[kind].predict(rows)
        got = safe.predict(rows)
        assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"  # left as it was
    train = served["test"]
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(scale_features(train), train["Class"])
    with mlflow.start_run() as run:
        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        uri = log_bundle(scale_features, model, raw_example=train.head(5), run_id=run.info.run_id)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(UsageError, match=r"cloudpickle.*MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true"):
        load_bundle(uri)
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")  # unset: relay's trust rule
    assert len(load_bundle(uri).predict(train.head(3))) == 3


def _parquet(frame: pd.DataFrame) -> bytes:
    import io

    sink = io.BytesIO()
    frame.to_parquet(sink)
    return sink.getvalue()


PARQUET = "application/vnd.apache.parquet"


def test_rows_and_decoded_size_are_capped_before_decoding(served):
    import psutil

    client = TestClient(create_app(served["plain"]), raise_server_exceptions=False)
    zeros = pd.DataFrame({c: np.zeros(5_000_000) for c in FEATURES})  # ~700 KB of Parquet
    body = _parquet(zeros)
    del zeros
    assert len(body) < 5 * 2**20
    rss = psutil.Process().memory_info().rss
    r = client.post("/invocations", content=body, headers={"content-type": PARQUET})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows", r.text
    assert psutil.Process().memory_info().rss - rss < 300 * 2**20  # not the 5 GB it took
    # under --max-rows but over 8 x --max-body once decoded
    body = _parquet(pd.DataFrame({c: np.zeros(2_000) for c in FEATURES}))
    assert 2_000 * len(FEATURES) * 8 > 8 * len(body)
    small = TestClient(create_app(served["plain"], max_body=len(body)))
    r = small.post("/invocations", content=body, headers={"content-type": PARQUET})
    assert r.status_code == 413 and r.json()["error"]["code"] == "decoded_too_large", r.text
    capped = TestClient(create_app(served["plain"], max_rows=10))
    rows = served["test"].head(11)
    for ctype, data in (
        ("application/json", orjson.dumps(_good(rows))),
        ("text/csv", rows[FEATURES].to_csv(index=False).encode()),
        (PARQUET, _parquet(rows[FEATURES])),
    ):
        r = capped.post("/invocations", content=data, headers={"content-type": ctype})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows", ctype
        ten = {"application/json": orjson.dumps(_good(rows.head(10)))}.get(ctype)
        if ten:
            assert capped.post(
                "/invocations", content=ten, headers={"content-type": ctype}
            ).is_success


def test_column_count_is_capped(served):
    client = TestClient(create_app(served["plain"]), raise_server_exceptions=False)
    wide = [f"c{i}" for i in range(5_000)]
    csv_body = (",".join(FEATURES + wide) + "\n" + ",".join(["1"] * 5_030) + "\n").encode()
    split = {"dataframe_split": {"columns": FEATURES + wide, "data": [[1.0] * 5_030]}}
    inputs = {"inputs": {c: [1.0] for c in FEATURES + wide}}
    parquet = _parquet(pd.DataFrame({c: [1.0] for c in FEATURES + wide[:2000]}))
    for ctype, body in (
        ("text/csv", csv_body),
        ("application/json", orjson.dumps(split)),
        ("application/json", orjson.dumps(inputs)),
        (PARQUET, parquet),
    ):
        r = client.post("/invocations", content=body, headers={"content-type": ctype})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_columns", ctype


def test_csv_row_longer_than_the_header_names_the_line(served):
    client = TestClient(create_app(served["plain"]))
    rows = served["test"].head(2)[FEATURES]
    lines = rows.to_csv(index=False).splitlines()
    for bad in (1, 2):  # the first data row (pandas made the extra an index) or a later one
        body = "\n".join(line + (",9" if i == bad else "") for i, line in enumerate(lines))
        r = client.post("/invocations", content=body.encode(), headers={"content-type": "text/csv"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_input"
        assert f"line {bad + 1}" in r.json()["error"]["message"]


def _numbers(value: str, ctype: str, rows: pd.DataFrame) -> bytes:
    frame = rows[FEATURES].head(2).copy()
    if ctype == "text/csv":
        text = frame.to_csv(index=False).splitlines()
        head, first = text[0], text[1].split(",")
        first[-1] = value
        return "\n".join([head, ",".join(first), text[2]]).encode()
    if ctype == PARQUET:
        frame = frame.astype({"Amount": object})
        frame["Amount"] = {"true": True, "inf": np.inf, "1e308": 1e308}[value]
        return _parquet(frame.astype({"Amount": bool if value == "true" else float}))
    body = orjson.dumps({"dataframe_records": frame.to_dict(orient="records")})
    return body.replace(b'"Amount":', b'"Amount":' + value.encode() + b',"_":', 1)


@pytest.mark.parametrize("ctype", ["application/json", "text/csv", PARQUET])
@pytest.mark.parametrize(
    ("value", "code"), [("true", "wrong_type"), ("inf", "wrong_type"), ("1e308", "out_of_range")]
)
def test_numbers_are_checked_alike_in_every_content_type(served, ctype, value, code):
    if ctype == "application/json" and value == "inf":
        value, code = "1e309", "malformed_json"  # JSON has no inf: out of range, like NaN
    client = TestClient(create_app(served["plain"]), raise_server_exceptions=False)
    body = _numbers(value, ctype, served["test"])
    if value == "1e308":  # ±1e308 across the columns: the model's sum is inf - inf
        frame = served["test"][FEATURES].head(2).copy()
        frame[:] = [[1e308 if i % 2 else -1e308 for i in range(len(FEATURES))]] * 2
        body = {
            "application/json": orjson.dumps(_good(frame)),
            "text/csv": frame.to_csv(index=False).encode(),
            PARQUET: _parquet(frame),
        }[ctype]
    r = client.post("/invocations", content=body, headers={"content-type": ctype})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code, r.text


def test_http_semantics_allow_www_authenticate_and_scheme_case(served):
    client = TestClient(create_app(served["plain"], token="s3cret"))
    r = client.get("/invocations", headers={"authorization": "Bearer s3cret"})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert client.post("/ping").headers["allow"] == "GET, HEAD"
    denied = client.get("/version")
    assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert client.get("/version", headers={"authorization": f"{scheme} s3cret"}).is_success
    assert client.get("/version", headers={"authorization": "Basic s3cret"}).status_code == 401
    doc = client.get("/openapi.json", headers={"authorization": "Bearer s3cret"}).json()
    assert PARQUET in doc["paths"]["/invocations"]["post"]["requestBody"]["content"]


def test_check_bind_refuses_bad_ports_and_warns_on_open_hosts():
    from relayml.serving.http import check_bind

    for port in (0, -1, 65536, 70000):
        with pytest.raises(UsageError, match="out of range"):
            check_bind("127.0.0.1", port, token=None)
    assert check_bind("127.0.0.1", 5001, token=None) is None
    assert "reachable from other machines" in check_bind("0.0.0.0", 5001, token=None)
    assert check_bind("0.0.0.0", 5001, token="t") is None


@pytest.fixture(scope="module")
def guarded(served):
    """A real uvicorn server (guarded protocol, timeouts of 1 s) in a thread."""
    import threading

    import uvicorn

    from relayml.serving.http import GuardedHttpProtocol

    class Quick(GuardedHttpProtocol):
        header_timeout = 1.0
        body_timeout = 1.0

    port = _free_port()
    config = uvicorn.Config(
        create_app(served["plain"]), host="127.0.0.1", port=port, http=Quick,
        log_level="warning", timeout_keep_alive=1, lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("sends", [b"", b"POST /invocations HTTP/1.1\r\nHost: x\r\n"])
def test_connections_that_send_nothing_are_closed(guarded, sends):
    with socket.create_connection(("127.0.0.1", guarded)) as s:
        s.settimeout(20)
        s.sendall(sends)
        for _ in range(3):  # a slowloris trickle (a header name, byte by byte) does not help
            with contextlib.suppress(OSError):
                s.sendall(b"a" if sends else b"")
            time.sleep(0.4)
        assert s.recv(100) == b""  # closed by the server
    assert httpx.get(f"http://127.0.0.1:{guarded}/ping").status_code == 200


def test_a_stalled_body_is_closed_and_a_slow_one_is_not(guarded):
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
    with socket.create_connection(("127.0.0.1", guarded)) as s:  # stalls after 10 of 100
        s.settimeout(20)
        s.sendall(head + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
        assert s.recv(100) == b""  # closed by the server
    body = b"Time\n" + b"1\n" * 8
    with socket.create_connection(("127.0.0.1", guarded)) as s:  # slow, never stalled 1 s
        s.settimeout(20)
        s.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 4):
            time.sleep(0.3)
            s.sendall(body[i : i + 4])
        assert s.recv(100).startswith(b"HTTP/1.1 ")  # answered, not cut off


def test_fuzzed_bodies_never_sink_the_server(served):
    """Generated bodies for every content type: a JSON 4xx or a 200, never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client = TestClient(create_app(served["plain"], max_body=65_536), raise_server_exceptions=False)
    value = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
        st.text(max_size=8),
        st.sampled_from([1e308, -1e308, 0.0, 1.5]),
    )  # fmt: skip
    column = st.sampled_from([*FEATURES, "id", "", "x" * 20])
    record = st.dictionaries(column, value, max_size=40)
    payload = st.one_of(
        st.builds(lambda r: {"dataframe_records": r}, st.lists(record, max_size=5)),
        st.builds(lambda r: {"instances": r}, st.lists(record, max_size=5)),
        st.builds(
            lambda c, d: {"dataframe_split": {"columns": c, "data": d}},
            st.lists(column, max_size=35),
            st.lists(st.lists(value, max_size=35), max_size=4),
        ),
        st.builds(lambda d: {"inputs": d}, st.dictionaries(column, st.lists(value, max_size=3))),
        st.dictionaries(st.text(max_size=5), value, max_size=3),
    )
    json_body = payload.map(lambda p: orjson.dumps(p, option=orjson.OPT_SERIALIZE_NUMPY))

    def to_csv(rows: list[dict]) -> bytes:
        return pd.DataFrame(rows).to_csv(index=False).encode() if rows else b""

    def to_parquet(rows: list[dict]) -> bytes:
        try:
            return _parquet(pd.DataFrame(rows).astype(str) if rows else pd.DataFrame())
        except Exception:
            return b"PAR1"

    bodies = st.one_of(
        st.tuples(st.just("application/json"), json_body | st.binary(max_size=200)),
        st.tuples(st.just("text/csv"), st.lists(record, max_size=4).map(to_csv)),
        st.tuples(st.just("text/csv"), st.binary(max_size=300)),
        st.tuples(st.just(PARQUET), st.lists(record, max_size=4).map(to_parquet)),
        st.tuples(st.just(PARQUET), st.binary(max_size=300)),
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def check(case):
        ctype, body = case
        r = client.post("/invocations", content=body, headers={"content-type": ctype})
        assert r.status_code < 500, (ctype, body[:200], r.text)
        if r.status_code != 200:
            assert set(r.json()["error"]) == {"code", "message", "field"}

    check()
    assert client.post("/invocations", json=_good(served["test"].head(2))).status_code == 200
