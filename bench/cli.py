"""CLI benchmark: whole-process wall time of relay's reads beside ``import mlflow``.

For each store (the example's embedded SQLite, PostgreSQL, a tracking server on PostgreSQL
started with ``relay server``), the fraud example gets one chain
(``load=transactions processing=plain training=logreg``); then each command below runs as a
new process, once to warm up and ``--repeat`` times measured, and the median is printed beside
the median of ``python -c "import mlflow"`` measured the same way in the same run:

- ``relay runs``
- ``relay show training/logreg@latest``
- ``relay lineage training/logreg@latest``
- ``relay compare training --metric test_roc_auc``
- ``relay chain load=transactions@latest processing=plain training=logreg`` (fully reused)

Targets (issue 14): every command at most 0.8 s on SQLite and PostgreSQL and 1.0 s against a
server, i.e. at most half of importing MLflow.

Run (from the repository root, PostgreSQL on 127.0.0.1:5432):

    RELAY_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        python bench/cli.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ["chain", "load=transactions@latest", "processing=plain", "training=logreg"]
COMMANDS = {
    "runs": ["runs"],
    "show": ["show", "training/logreg@latest"],
    "lineage": ["lineage", "training/logreg@latest"],
    "compare": ["compare", "training", "--metric", "test_roc_auc"],
    "reused chain": CHAIN,
}
TARGET = {"sqlite": 0.8, "postgres": 0.8, "server": 1.0}


def _time(argv: list[str], cwd: Path, env: dict[str, str], repeat: int) -> float:
    """Median wall seconds of ``repeat`` runs of ``argv`` after one warm-up run."""
    times = []
    for n in range(repeat + 1):
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
        if "chain" in argv and " new " in done.stdout:
            raise RuntimeError(f"the chain was not fully reused:\n{done.stdout[-3000:]}")
        if n:
            times.append(elapsed)
    return statistics.median(times)


@contextmanager
def _store(kind: str, tmp: Path, project: Path) -> Iterator[dict[str, str]]:
    """The environment that points the project at a store of this kind."""
    if kind == "sqlite":
        yield {}
        return
    import sqlalchemy as sa

    url = os.environ.get("RELAY_TEST_POSTGRES_URL")
    if not url:
        sys.exit("set RELAY_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"relay_bench_cli_{os.getpid()}_{kind}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db = sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    server = None
    try:
        if kind == "postgres":
            yield {"RELAY_TRACKING_URI": db}
        else:
            from conftest import free_port, wait_http

            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "relayml", "server", "--backend", db, "--port", str(port),
                 "--artifacts", str(tmp / f"{kind}-server-artifacts")],
                cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=server)
            yield {"RELAY_TRACKING_URI": f"http://127.0.0.1:{port}"}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        with admin.connect() as con:
            con.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n"), {"n": name},
            )  # fmt: skip
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres,server")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "examples" / "fraud"))
    from conftest import make_project

    tmp = Path(tempfile.mkdtemp(prefix="relay-bench-cli-"))
    relay = [sys.executable, "-m", "relayml"]
    print(f"{'store':<9} {'command':<13} {'relay s':>8} {'import mlflow s':>16} "
          f"{'relay/mlflow':>12} {'target s':>9}")  # fmt: skip
    for kind in args.stores.split(","):
        project = make_project(tmp / kind)
        # the server's files stay outside the project: untracked files there would change
        # the code fingerprint (its uncommitted diff) and no chain could be reused
        with _store(kind, tmp, project) as extra:
            env = {**os.environ, **extra}
            first = [*CHAIN[:1], "load=transactions", *CHAIN[2:]]
            seeded = subprocess.run(
                [*relay, *first], cwd=project, env=env, capture_output=True, text=True
            )
            if seeded.returncode:
                raise RuntimeError(f"seeding the chain failed: {seeded.stderr[-3000:]}")
            baseline = [sys.executable, "-c", "import mlflow"]
            for name, argv in COMMANDS.items():
                ours = _time([*relay, *argv], project, env, args.repeat)
                anchor = _time(baseline, project, env, args.repeat)
                met = "met" if ours <= TARGET[kind] else "MISSED"
                print(f"{kind:<9} {name:<13} {ours:>8.3f} {anchor:>16.3f} "
                      f"{ours / anchor:>12.2f} {TARGET[kind]:>6.1f} {met}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
