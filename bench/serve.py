"""Benchmark: relayml's scoring server vs. `mlflow models serve` on the fraud example's bundle.

The model is the fraud example's ``training/logreg`` bundle, produced by the real pipeline
(``relay run load transactions``, ``processing plain``, ``training logreg -P cv=2`` in a fresh
copy of ``examples/fraud``): ColumnTransformer(StandardScaler on Time/Amount, passthrough
V1..V28, pandas output) + LogisticRegression(liblinear) with its decision threshold (answers
``{"label", "score"}``), and the same processor + model logged again without a threshold
(answers labels). Each server serves it with the same number of workers, bound to 127.0.0.1:
relayml through its CLI (``relay serve``), MLflow with ``mlflow models serve --env-manager
local``, and an empty route (a raw ASGI app answering a constant on the same uvicorn +
httptools + uvloop stack, with the same options as ``relay serve``: no access log, no proxy
headers middleware) as the ceiling.

A separate load-generator process (asyncio + uvloop, raw keep-alive HTTP/1.1 sockets) sends a
fixed number of ``dataframe_records`` requests at concurrency 1, 8 and 32, with 1 and 100
records, and measures requests/s, p50 and p99 latency. Unless ``--no-pin``, every server
(worker processes included) is pinned to CPU 0 and the load generator to CPU 1, so that they
do not compete for a core. Each scenario runs ``--runs`` times; the table gives medians over
the runs (of requests/s and of each percentile). relayml's and MLflow's answers are checked
equal (parsed JSON) first.

With ``--baseline-src DIR`` (a source tree of another relayml version, e.g. ``git archive``
of an older commit), a second relayml server runs from that tree beside the others, in the
same runs. With ``--limits``, the request limits are measured too, on both relayml servers:
the largest accepted Parquet and CSV bodies (random records and zeros, up to ``--max-body``
5 MiB and ``--max-rows`` 100,000), and a Parquet body of 1,000,000 rows of zeros over the row
limit, are sent three times each while the server's RSS is sampled every 5 ms (peak minus
idle), then one client sends the 100,000-row Parquet body in a loop while another sends
single-record requests one at a time: their p50/p99 latency, against the same requests on
the idle server.

Besides requests/s and latency, each run records the server's CPU time per request (user +
system of the server process and its workers, from psutil): on a loaded machine the wall-clock
rate says how much of a core the scheduler gave the server, the CPU time what a request costs.

Usage:
    python bench/serve.py [--requests 4000] [--mlflow-requests 300] [--runs 3] [--workers 1]
                          [--project DIR] [--no-pin] [--no-mlflow] [--baseline-src DIR]
                          [--limits]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fraud"
FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
CONCURRENCY = (1, 8, 32)
SERVER_CPU, LOAD_CPU = 0, 1


def fraud_project(where: Path) -> Path:
    """A fresh copy of the fraud example with its pipeline run (load, processing, training)."""
    for name in ("relay.toml", "steps.py", "generate.py", "features.py"):
        shutil.copy(EXAMPLE / name, where / name)
    (where / ".gitignore").write_text(".relay/\ndata/\n__pycache__/\n")
    (where / "data").mkdir(exist_ok=True)
    sh = {"cwd": where, "check": True, "capture_output": True}
    subprocess.run([sys.executable, "generate.py", "--url", "sqlite:///data/fraud.db"], **sh)
    subprocess.run(["git", "init", "-q", "-b", "main"], **sh)
    subprocess.run(["git", "add", "-A"], **sh)
    git_id = ["-c", "user.name=bench", "-c", "user.email=bench@relay.invalid"]
    subprocess.run(["git", *git_id, "commit", "-qm", "fraud example"], **sh)
    for step in (["load", "transactions"], ["processing", "plain"], ["training", "logreg"]):
        extra = ["-P", "cv=2"] if step[0] == "training" else []
        subprocess.run([sys.executable, "-m", "relayml", "run", *step, *extra], **sh)
    return where


def fraud_bundles(project: Path) -> tuple[str, dict[str, str], list[dict]]:
    """(tracking URI, {"threshold": uri, "plain": uri}, 100 raw records of the test split)."""
    import relayml as relay
    from relayml.bundle import log_bundle
    from relayml.runs import open_project

    settings = open_project(project)
    training = relay.get("training/logreg@latest", project=settings)
    processing = relay.get("processing/plain@latest", project=settings)
    uris = {"threshold": training.model_uri}
    plain_tag = "bench.plain_model"  # not relay.*: stays out of /version
    if plain_tag in training.tags:
        uris["plain"] = training.tags[plain_tag]
    else:
        import mlflow

        load = relay.get("load/transactions@latest", project=settings).load("output")
        uris["plain"] = log_bundle(
            processing.load("processor"),
            training.load("model"),
            raw_example=load.head(5),
            run_id=training.run_id,
            name="model_plain",
        )
        mlflow.MlflowClient().set_tag(training.run_id, plain_tag, uris["plain"])
    records = relay.get("load/transactions@latest", project=settings).load("output")
    rows = records[FEATURES].iloc[-100:].to_dict(orient="records")
    return settings.tracking_uri, uris, rows


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
            access_log=False, log_level="warning", proxy_headers=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str], cwd: Path):
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
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
        yield f"http://127.0.0.1:{port}", proc.pid  # taskset execs: the server's own pid
    finally:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers, nothing else
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
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


def run_load(port: int, request: bytes, total: int, concurrency: int, cpu: int | None) -> dict:
    """Runs in the load-generator process (pinned to ``cpu`` if given)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
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


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a server process and its worker processes so far."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# --------------------------------------------------------------------------------- limits

MAX_BODY, MAX_ROWS = 5 * 2**20, 100_000
ATTACK_ROWS = 1_000_000


def largest_bodies() -> dict[str, tuple[str, int, bytes]]:
    """The largest bodies the default limits accept: {name: (content type, rows, body)}."""
    import io

    import pandas as pd

    rng = np.random.default_rng(0)

    def parquet(frame: pd.DataFrame) -> bytes:
        sink = io.BytesIO()
        frame.to_parquet(sink, index=False)
        return sink.getvalue()

    def csv(frame: pd.DataFrame) -> bytes:
        return frame.to_csv(index=False).encode()

    makers = {
        "parquet random": ("application/vnd.apache.parquet", parquet, "normal"),
        "parquet zeros": ("application/vnd.apache.parquet", parquet, "zeros"),
        "csv random": ("text/csv", csv, "normal"),
        "csv zeros": ("text/csv", csv, "zeros"),
    }
    out = {}
    for name, (ctype, encode, values) in makers.items():

        def make(n: int, encode=encode, values=values) -> bytes:
            if values == "zeros":
                data = np.zeros((n, len(FEATURES)), dtype=np.int64 if encode is csv else None)
            else:
                data = rng.normal(size=(n, len(FEATURES)))
            return encode(pd.DataFrame(data, columns=FEATURES))

        lo, hi = 1, MAX_ROWS
        while lo < hi:  # the most rows that fit in MAX_BODY
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if len(make(mid)) <= MAX_BODY else (lo, mid - 1)
        out[name] = (ctype, lo, make(lo))
    # over --max-rows, in 1.3 MB: what the limits refuse (the 659 KB body had 5,000,000)
    zeros = pd.DataFrame(np.zeros((ATTACK_ROWS, len(FEATURES))), columns=FEATURES)
    out["parquet attack"] = ("application/vnd.apache.parquet", ATTACK_ROWS, parquet(zeros))
    return out


def _latencies(url: str, body: bytes, n: int) -> np.ndarray:
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            t = time.perf_counter()
            r = client.post(
                f"{url}/invocations", content=body, headers={"content-type": "application/json"}
            )
            times.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(r.text)
    return np.array(times) * 1e3


def measure_limits(
    name: str, url: str, pid: int, big: dict[str, tuple[str, int, bytes]], small: bytes
) -> list[dict]:
    """Peak RSS above idle per largest body; small-request latency beside the heaviest one."""
    import threading

    import psutil

    proc = psutil.Process(pid)
    out = []
    _latencies(url, small, 50)  # warm
    for body_name, (ctype, rows, body) in big.items():
        idle = proc.memory_info().rss
        peak = idle
        done = threading.Event()

        def sample(done: threading.Event = done) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses = set()
        for _ in range(3):
            r = httpx.post(
                f"{url}/invocations", content=body, headers={"content-type": ctype}, timeout=300
            )
            statuses.add(r.status_code)
        done.set()
        sampler.join()
        out.append(
            {"server": name, "body": body_name, "rows": rows, "bytes": len(body),
             "status": "/".join(map(str, sorted(statuses))), "rss": (peak - idle) / 2**20}
        )  # fmt: skip
        print(f"  {name} {body_name}: {out[-1]}", flush=True)
    idle_lat = _latencies(url, small, 300)
    heaviest = "parquet zeros"  # the most rows: the most decoding and scoring per byte
    ctype, _, body = big[heaviest]
    stop = threading.Event()

    def flood() -> None:
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                client.post(f"{url}/invocations", content=body, headers={"content-type": ctype})

    flooder = threading.Thread(target=flood)
    flooder.start()
    time.sleep(0.5)
    busy_lat = _latencies(url, small, 300)
    stop.set()
    flooder.join()
    for during, lat in (("idle server", idle_lat), (f"beside a {heaviest} loop", busy_lat)):
        out.append(
            {"server": name, "during": during, "p50": float(np.percentile(lat, 50)),
             "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}
        )  # fmt: skip
        print(f"  {name} {during}: {out[-1]}", flush=True)
    return out


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per relayml/empty scenario")
    parser.add_argument("--mlflow-requests", type=int, default=300, help="per MLflow scenario")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians reported")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--project", type=Path, help="a fraud project already run (reused)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and load")
    parser.add_argument("--no-mlflow", action="store_true", help="skip mlflow models serve")
    parser.add_argument("--baseline-src", type=Path, help="another relayml tree, served too")
    parser.add_argument("--limits", action="store_true", help="measure the request limits")
    args = parser.parse_args()

    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    project = args.project or fraud_project(Path(tempfile.mkdtemp(prefix="relay-bench-")))
    tracking, uris, rows = fraud_bundles(project.resolve())
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
    }
    bodies = {
        1: orjson.dumps({"dataframe_records": rows[:1]}),
        100: orjson.dumps({"dataframe_records": rows}),
    }
    w = str(args.workers)
    taskset = ["taskset", "-c", str(SERVER_CPU)] if pin else []
    py = sys.executable

    def command(server_kind: str, port: int, uri: str) -> list[str]:
        if server_kind in ("relayml", "baseline"):
            cmd = [py, "-m", "relayml", "serve", uri, "--port", str(port), "--workers", w]
        elif server_kind == "mlflow":
            cmd = [py, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
            cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", w]
        else:
            cmd = [py, "-c", EMPTY_APP.replace("PORT", str(port))]
        return [*taskset, *cmd]

    print(
        f"models {uris}; workers {w}; {os.cpu_count()} CPUs; "
        + (f"servers on CPU {SERVER_CPU}, load generator on CPU {LOAD_CPU}" if pin else "unpinned")
        + f"; {args.runs} runs, medians",
        flush=True,
    )
    results: dict[tuple[str, str, int, int], dict] = {}
    samples: dict[tuple[str, str, int, int], list[dict]] = {}
    answers: dict[tuple[str, int], object] = {}
    spawn = multiprocessing.get_context("spawn")
    scenarios = [("relayml", k) for k in uris]
    if args.baseline_src:
        scenarios += [("baseline", k) for k in uris]
    if not args.no_mlflow:
        scenarios += [("mlflow", k) for k in uris]
    scenarios += [("empty", "-")]
    envs = {name: env for name, _ in scenarios}
    if args.baseline_src:
        envs["baseline"] = {**env, "PYTHONPATH": str(args.baseline_src.resolve() / "src")}
    load_cpu = LOAD_CPU if pin else None
    with contextlib.ExitStack() as stack:
        # every server up at once (idle ones cost nothing); runs interleave across servers,
        # so a burst of background load on the machine hits all of them alike
        ports = {}
        pids = {}
        for name, kind in scenarios:
            port = ports[(name, kind)] = free_port()
            url, pids[(name, kind)] = stack.enter_context(
                server(command(name, port, uris.get(kind, "")), port, envs[name], project)
            )
            for n, body in bodies.items():
                if name == "empty":
                    continue
                got = httpx.post(
                    f"{url}/invocations", content=body, headers={"content-type": "application/json"}
                ).json()
                if name in ("relayml", "baseline"):
                    answers[(kind, n)] = got
                else:
                    same = got == answers[(kind, n)]
                    print(f"answers equal ({kind}, {n} record(s)): {same}", flush=True)
                    if not same:
                        raise SystemExit("answers differ")
        pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn))
        if args.limits:
            limit_rows = []
            big = largest_bodies()
            for name in ("relayml", "baseline"):
                if (name, "threshold") in ports:
                    key = (name, "threshold")
                    url = f"http://127.0.0.1:{ports[key]}"
                    limit_rows += measure_limits(name, url, pids[key], big, bodies[1])
            print("\n| server | body | rows | bytes | status | peak RSS above idle (MB) |")
            print("|---|---|---:|---:|---:|---:|")
            for r in limit_rows:
                if "rss" in r:
                    print(
                        f"| {r['server']} | {r['body']} | {r['rows']} | {r['bytes']:,} "
                        f"| {r['status']} | {r['rss']:.0f} |"
                    )
            print("\n| server | single-record requests | p50 ms | p99 ms | max ms |")
            print("|---|---|---:|---:|---:|")
            for r in limit_rows:
                if "p99" in r:
                    print(
                        f"| {r['server']} | {r['during']} | {r['p50']:.2f} | {r['p99']:.2f} "
                        f"| {r['max']:.1f} |"
                    )
            print(flush=True)
        for n, body in bodies.items():
            requests = {key: http_request(port, body) for key, port in ports.items()}
            for key, port in ports.items():  # warm-up
                pool.submit(run_load, port, requests[key], 200, 4, load_cpu).result()
            for conc in CONCURRENCY:
                for _ in range(args.runs):
                    for (name, kind), port in ports.items():
                        total = args.mlflow_requests if name == "mlflow" else args.requests
                        cpu = server_cpu(pids[(name, kind)])
                        job = pool.submit(
                            run_load, port, requests[(name, kind)], total, conc, load_cpu
                        )
                        sample = job.result()
                        cpu = server_cpu(pids[(name, kind)]) - cpu
                        sample["cpu_us"] = cpu / total * 1e6  # server CPU per request
                        samples.setdefault((name, kind, n, conc), []).append(sample)
                for name, kind in ports:
                    runs = samples[(name, kind, n, conc)]
                    r = results[(name, kind, n, conc)] = median_of(runs)
                    print(
                        f"  {name:8s} {kind:9s} rows={n:3d} c={conc:2d}: {r['rps']:8.0f} "
                        f"req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                        f"server CPU {r['cpu_us']:6.0f} µs/req  (runs: "
                        + ", ".join(f"{x['rps']:.0f}" for x in runs)
                        + ")",
                        flush=True,
                    )

    print()
    if args.baseline_src:
        print(
            "| bundle | rows/req | conc | relayml req/s | baseline req/s | relayml/baseline "
            "| relayml CPU µs/req | baseline CPU µs/req | baseline/relayml CPU |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for kind in uris:
            for n in bodies:
                for conc in CONCURRENCY:
                    a = results[("relayml", kind, n, conc)]
                    b = results[("baseline", kind, n, conc)]
                    print(
                        f"| {kind} | {n} | {conc} | {a['rps']:.0f} | {b['rps']:.0f} "
                        f"| {a['rps'] / b['rps']:.2f} | {a['cpu_us']:.0f} | {b['cpu_us']:.0f} "
                        f"| {b['cpu_us'] / a['cpu_us']:.2f} |"
                    )
        print()
    if args.no_mlflow:
        return
    print(
        "| bundle | rows/req | conc | relayml req/s | p50 ms | p99 ms | mlflow req/s | p50 ms "
        "| p99 ms | empty req/s | relay/mlflow | relay/empty |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in uris:
        for n in bodies:
            for conc in CONCURRENCY:
                a = results[("relayml", kind, n, conc)]
                b = results[("mlflow", kind, n, conc)]
                e = results[("empty", "-", n, conc)]
                print(
                    f"| {kind} | {n} | {conc} | {a['rps']:.0f} | {a['p50']:.2f} | {a['p99']:.2f} "
                    f"| {b['rps']:.0f} | {b['p50']:.1f} | {b['p99']:.1f} | {e['rps']:.0f} "
                    f"| {a['rps'] / b['rps']:.1f}× | {a['rps'] / e['rps']:.2f} |"
                )
    print("\nrows/s = req/s × rows/req, so the 100-record relay/mlflow ratio is the rows/s ratio")


if __name__ == "__main__":
    main()
