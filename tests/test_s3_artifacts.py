"""``relay server --artifacts s3://...`` end to end against an S3-compatible server.

moto's server mode plays S3 on 127.0.0.1; the MLflow server (PostgreSQL backend) proxies the
artifacts into its bucket, so clients hold no S3 credentials. A whole chain runs through it,
the model is served from the registry alias, and a cascade delete removes the objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port, relay_process, wait_http

BUCKET = "team-bucket"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with an empty bucket; yields its endpoint URL."""
    pytest.importorskip("moto.server", reason="moto[server] is in the [dev] extra")
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, timeout=60, proc=proc)
        boto3.client("s3", endpoint_url=url, **_creds()).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def _objects(endpoint: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, **_creds())
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def _cli(relay, *args: str) -> str:
    """The CLI in this process, as a client of the server (see ``client`` below)."""
    done = relay(*args)
    assert done.code == 0, (args, done.err[-3000:])
    return done.out


@pytest.mark.postgres
@pytest.mark.slow
def test_s3_artifacts_through_a_server(
    project: Path, pg_database: str, s3: str, tmp_path: Path, relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    import pandas as pd
    import sqlalchemy as sa

    port = free_port()
    server_env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3}
    server = relay_process(
        "server", "--backend", pg_database, "--artifacts", f"s3://{BUCKET}/mlflow",
        "--port", str(port), "--workers", "1", cwd=project, env=server_env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    client = {  # no S3 credentials on the client: everything goes through the server
        "RELAY_TRACKING_URI": url,
        **{k: "" for k in (*S3_ENV, "MLFLOW_S3_ENDPOINT_URL")},
    }
    for var, value in client.items():
        monkeypatch.setenv(var, value)
    try:
        wait_http(f"{url}/health", timeout=120, proc=server)
        links = ("load=transactions", "processing=plain", "training=logreg")
        chain = json.loads(_cli(relay, "chain", *links, "--json"))
        assert chain["complete"], chain
        ids = {s["step"]: s["run_id"] for s in chain["steps"]}
        stored = _objects(s3)
        for run_id in ids.values():
            assert any(f"/{run_id}/" in k for k in stored), run_id
        assert any("/models/" in k for k in stored)  # the bundle, an MLflow logged model

        _cli(relay, "promote", "training/logreg@latest")
        engine = sa.create_engine(f"sqlite:///{project / 'data' / 'fraud.db'}")
        with engine.connect() as con:
            raw = pd.read_sql("SELECT * FROM transactions ORDER BY id LIMIT 20", con)
        engine.dispose()
        serve_port = free_port()
        serving = relay_process(
            "serve", "models:/fraud@champion", "--port", str(serve_port),
            cwd=project, env=client, start_new_session=True,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{serve_port}/ping", timeout=180, proc=serving)
            records = raw.drop(columns=["Class"]).to_dict(orient="records")
            answer = httpx.post(
                f"http://127.0.0.1:{serve_port}/invocations",
                json={"dataframe_records": records},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["predictions"]) == 20
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(serving.pid, signal.SIGTERM)
            serving.communicate(timeout=30)

        load_key = chain["steps"][0]["key"]
        out = _cli(relay, "delete", load_key, "--cascade", "--force", "--yes")
        assert "freed" in out
        left = _objects(s3)
        for run_id in ids.values():
            assert not any(f"/{run_id}/" in k for k in left), (run_id, left)
        assert not any("/models/" in k for k in left), left
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)
