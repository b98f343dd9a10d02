"""Benchmark: relayml's scoring server vs. `mlflow models serve` on the fraud bundle.

Both servers serve the same bundle (ColumnTransformer/StandardScaler + LogisticRegression on a
synthetic fraud table) with the same number of workers, bound to 127.0.0.1. A separate
load-generator process (asyncio + uvloop, raw keep-alive HTTP/1.1 sockets) sends a fixed
number of requests at concurrency 1, 8 and 32, with single-record and 100-record
``dataframe_records`` payloads, and reports requests/s, rows/s, p50 and p99 latency. The
ceiling is an empty route (a raw ASGI app answering a constant) on the same web stack
(uvicorn + httptools + uvloop). Answers of both servers are checked equal first.

Usage:
    python bench/serve.py [--requests 4000] [--mlflow-requests 400] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]


def make_fraud_table(n: int = 20_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 28))
    logit = X @ rng.standard_normal(28) * 1.5 - 19.0
    df = pd.DataFrame(X, columns=[f"V{i}" for i in range(1, 29)])
    df.insert(0, "Time", np.sort(rng.uniform(0, 172_800, n)))
    df["Amount"] = np.round(rng.lognormal(3, 1.2, n), 2)
    df.insert(0, "id", np.arange(n, dtype=np.int64))
    df["Class"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return df


def log_fraud_bundle(tracking: str) -> tuple[str, pd.DataFrame]:
    import mlflow
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from relayml.bundle import log_bundle

    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment("training")
    df = make_fraud_table()
    proc = ColumnTransformer([("num", StandardScaler(), FEATURES)]).fit(df[FEATURES])
    model = LogisticRegression(max_iter=1000).fit(proc.transform(df[FEATURES]), df["Class"])
    with mlflow.start_run() as run:
        uri = log_bundle(proc, model, raw_example=df.head(5), run_id=run.info.run_id)
    return uri, df


# ------------------------------------------------------------------------------- servers

EMPTY_APP = """
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"19")]})
    await send({"type": "http.response.body", "body": b'{"predictions":[0]}'})
uvicorn.run(app, host="127.0.0.1", port=PORT, http="httptools", loop="uvloop",
            access_log=False, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str]):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {' '.join(cmd)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {' '.join(cmd)}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------ load generator


async def _load(port: int, request: bytes, total: int, concurrency: int) -> dict:
    latencies: list[float] = []
    per = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]

    async def worker(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(n):
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            i = lower.index(b"content-length:") + 15
            length = int(lower[i : lower.index(b"\r\n", i)])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"bad answer: {head[:40]!r} {body[:200]!r}")
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in per if n))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {
        "rps": total / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
    }


def run_load(port: int, request: bytes, total: int, concurrency: int) -> dict:
    """Runs in the load-generator process."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_load(port, request, total, concurrency))


def http_request(port: int, body: bytes) -> bytes:
    return (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per relayml/empty scenario")
    parser.add_argument("--mlflow-requests", type=int, default=400, help="per MLflow scenario")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    tracking = f"sqlite:///{tmp}/mlflow.db"
    uri, df = log_fraud_bundle(tracking)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    }
    rows = df[FEATURES].iloc[:100].to_dict(orient="records")
    bodies = {
        1: orjson.dumps({"dataframe_records": rows[:1]}),
        100: orjson.dumps({"dataframe_records": rows}),
    }
    w = args.workers
    ports = {"relayml": free_port(), "mlflow": free_port(), "empty": free_port()}
    commands = {
        "relayml": [
            sys.executable,
            "-c",
            f"from relayml.serve import run_server; "
            f"run_server({uri!r}, port={ports['relayml']}, workers={w})",
        ],
        "mlflow": [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(ports["mlflow"]),
            "-w",
            str(w),
        ],
        "empty": [sys.executable, "-c", EMPTY_APP.replace("PORT", str(ports["empty"]))],
    }
    print(f"model {uri}; workers {w}; {os.cpu_count()} CPUs; load generator: 1 process")
    results: dict[tuple[str, int, int], dict] = {}
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        for name in ("relayml", "mlflow", "empty"):
            with server(commands[name], ports[name], env) as url:
                if name == "relayml":
                    relay_answers = {
                        n: httpx.post(
                            f"{url}/invocations",
                            content=b,
                            headers={"content-type": "application/json"},
                        ).json()
                        for n, b in bodies.items()
                    }
                if name == "mlflow":
                    for n, b in bodies.items():
                        theirs = httpx.post(
                            f"{url}/invocations",
                            content=b,
                            headers={"content-type": "application/json"},
                        ).json()
                        same = theirs == relay_answers[n]
                        print(f"answers equal ({n} record(s)): {same}")
                        if not same:
                            raise SystemExit("answers differ")
                total = args.mlflow_requests if name == "mlflow" else args.requests
                for n, body in bodies.items():
                    request = http_request(ports[name], body)
                    pool.submit(run_load, ports[name], request, 50, 4).result()  # warm-up
                    for conc in (1, 8, 32):
                        r = pool.submit(run_load, ports[name], request, total, conc).result()
                        results[(name, n, conc)] = r
                        print(
                            f"  {name:8s} rows={n:3d} c={conc:2d}: {r['rps']:8.0f} req/s "
                            f"p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms",
                            flush=True,
                        )

    print()
    print(
        "| rows/req | conc | relayml req/s | p50 ms | p99 ms | mlflow req/s | p50 ms | p99 ms "
        "| empty req/s | relay/mlflow | relay/empty |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in bodies:
        for conc in (1, 8, 32):
            a, b, e = (results[(k, n, conc)] for k in ("relayml", "mlflow", "empty"))
            print(
                f"| {n} | {conc} | {a['rps']:.0f} | {a['p50']:.2f} | {a['p99']:.2f} "
                f"| {b['rps']:.0f} | {b['p50']:.1f} | {b['p99']:.1f} | {e['rps']:.0f} "
                f"| {a['rps'] / b['rps']:.1f}× | {a['rps'] / e['rps']:.2f} |"
            )
    print("\nrows/s = req/s × rows/req; 100-record relay/mlflow rows/s ratio = req/s ratio above")


if __name__ == "__main__":
    main()
