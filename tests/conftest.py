"""Shared fixtures: a temporary copy of the fraud example, the CLI, PostgreSQL, MLflow servers.

Tests talk to relayml through its public API and CLI. Everything a test creates lives in its
``tmp_path``; servers bind to 127.0.0.1 and are stopped by the fixtures.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import inspect
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fraud"
sys.path.insert(0, str(EXAMPLE))  # generate.py

PROJECT_FILES = ("relay.toml", "steps.py", "features.py", "generate.py")

# Tools that tests start by name (`mlflow models serve` execs `uvicorn`) come from this
# interpreter's environment, also when pytest runs as `.venv/bin/python -m pytest` without an
# activated venv (as `make test` and CI do).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])


# -- markers for ``make test-fast`` ------------------------------------------------------------
#
# Every test is marked by what it needs, found from its code (the test function, the fixtures it
# uses and the test-module helpers they call, followed a few levels down), so that a new test is
# classified without anyone remembering to: ``postgres`` (a PostgreSQL database), ``server`` (a
# server on a port: MLflow's, ``relay server/serve/ui``, uvicorn), ``cli_process`` (a separate
# Python process: the CLI as a process, a fresh interpreter or venv). ``slow`` stays explicit.
# ``make test-fast`` deselects all four; ``make test`` runs everything.

_FIXTURE_MARKS = {
    "postgres_url": ("postgres",),
    "pg_database": ("postgres",),
    "pg_empty_database": ("postgres",),
    "mlflow_server": ("postgres", "server"),
}
_CODE_MARKS = {
    "server": re.compile(
        r'relay_process\(\s*"(?:server|serve|ui)"|\buvicorn\b|"models",\s*"serve"'
    ),
    "cli_process": re.compile(r"\brelay_process\(|\bsys\.executable\b|\brun_clients\("),
}
_TESTS = Path(__file__).resolve().parent
_OWN = (_TESTS, ROOT / "bench")  # code followed: the tests' and the benchmarks' (not conftest)


def _ours(obj: object) -> Path | None:
    try:
        path = Path(inspect.getsourcefile(obj) or "").resolve()  # type: ignore[arg-type]
    except TypeError:
        return None
    if path.name == "conftest.py" or not any(path.is_relative_to(d) for d in _OWN):
        return None
    return path


def _names(code: CodeType) -> set[str]:
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            found |= _names(const)
    return found


_SOURCES: dict[object, str] = {}


def _reached_source(funcs: list[object], depth: int = 4) -> str:
    """The source of ``funcs`` and of the test/bench functions they call (``depth`` levels)."""
    seen: set[int] = set()
    texts: list[str] = []
    level = [inspect.unwrap(f) for f in funcs]  # type: ignore[arg-type]
    for _ in range(depth):
        following: list[object] = []
        for func in level:
            if id(func) in seen or not callable(func) or _ours(func) is None:
                continue
            seen.add(id(func))
            if func not in _SOURCES:
                try:
                    _SOURCES[func] = inspect.getsource(func)  # type: ignore[arg-type]
                except (OSError, TypeError):
                    _SOURCES[func] = ""
            texts.append(_SOURCES[func])
            code = getattr(func, "__code__", None)
            if code is None:
                continue
            names = _names(code)
            for name in names:
                target = func.__globals__.get(name)  # type: ignore[attr-defined]
                if isinstance(target, ModuleType):  # team.run_clients, ...
                    following += [getattr(target, n) for n in names if hasattr(target, n)]
                elif inspect.isfunction(target):
                    following.append(inspect.unwrap(target))
        level = following
    return "\n".join(texts)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        names = set(item.fixturenames)
        marks = {m for n in names for m in _FIXTURE_MARKS.get(n, ())}
        defs = item._fixtureinfo.name2fixturedefs
        fixtures = [d[-1].func for n, d in defs.items() if n in names and d]
        text = _reached_source([item.function, *fixtures])
        marks |= {m for m, pattern in _CODE_MARKS.items() if pattern.search(text)}
        module = item.path.name
        if module in _MEASURED_SLOW or f"{module}::{item.originalname}" in _MEASURED_SLOW:
            marks.add("slow")
        for mark in sorted(marks - {m.name for m in item.iter_markers()}):
            item.add_marker(mark)
    # heaviest modules first, so that xdist's workers finish together (longest job first)
    # (the docstring examples are one unit of work: see the repository's conftest.py)
    order = {name: i for i, name in enumerate(_HEAVY_FIRST)}
    items.sort(
        key=lambda it: order.get(
            it.path.name if it.path.is_relative_to(_TESTS) else "doctests", len(order)
        )
    )


# measured (pytest --durations=0, one whole run), heaviest first; the rest keep their order
_MEASURED_SLOW = {
    line.strip()
    for line in (_TESTS / "slow_tests.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
_HEAVY_FIRST: tuple[str, ...] = (
    "test_team.py", "test_s3_artifacts.py", "doctests", "test_serve.py",
    "test_chain_claims.py", "test_readstore.py", "test_lifecycle_delete.py", "test_bundle.py",
    "test_ui.py", "test_lifecycle_reproduce.py", "test_crash.py", "test_lifecycle_refresh.py",
    "test_secrets.py", "test_bundle_clean_env.py", "test_data_quality.py", "test_runs.py",
    "test_serve_cli.py", "test_run.py", "test_server_purge.py",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _drop_store_vars()
    monkeypatch.setenv("GIT_AUTHOR_NAME", "relay-tests")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "tests@relay.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "relay-tests")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "tests@relay.invalid")
    yield
    _drop_store_vars()


@pytest.fixture(autouse=True, scope="module")
def _isolated_module() -> Iterator[None]:
    """The same for module fixtures (set up before any test's, torn down after): a module's
    teardown (``mlflow.set_tracking_uri(old)``) must not reach the next module's set-up."""
    _drop_store_vars()
    yield
    _drop_store_vars()


def _drop_store_vars() -> None:
    """No store variable reaches a test or a module's fixtures: not the caller's, and not one a
    test, a fixture or a library left behind (MLflow's ``set_tracking_uri`` exports
    ``MLFLOW_TRACKING_URI``: relay would take it for the user's store, and a module fixture set
    up next wrote its runs into a stray ``./mlflow.db``). Tests set them with ``monkeypatch``."""
    for var in (*_STORE_VARS, "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)


def git(root: Path, *args: str) -> str:
    """Run git in ``root`` and return its output."""
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def make_project(
    root: Path, *, days: int = 3, rows_per_day: int = 1500, commit: bool = True
) -> Path:
    """Copy the fraud example into ``root`` with its generated data, committed to a git repo,
    and an empty tracking store already migrated (``.relay/mlflow.db``, ignored by git).

    Each shape is built once per test run, by the first xdist worker that needs it, and copied
    (generating rows, three git calls and MLflow's migration chain cost seconds a project).
    """
    if not _SHARED:  # outside pytest (bench/cli.py): one folder for this process, removed at exit
        _SHARED.append(Path(tempfile.mkdtemp(prefix="relay-templates-")))
        atexit.register(shutil.rmtree, _SHARED[0], ignore_errors=True)
    template = _SHARED[0] / f"template-{days}-{rows_per_day}-{commit}" / "fraud"
    with open(template.parent.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait for the first one's build
        if not (template.parent / "built").exists():
            shutil.rmtree(template.parent, ignore_errors=True)  # a build that was interrupted
            _build_project(template, days=days, rows_per_day=rows_per_day, commit=commit)
            (template.parent / "built").touch()
    shutil.copytree(template, root, symlinks=True, dirs_exist_ok=True)
    return root


_SHARED: list[Path] = []  # the folder of the run's templates, shared by its xdist workers


@pytest.fixture(scope="session", autouse=True)
def _shared_templates(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    _SHARED[:] = [base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base]


def _build_project(root: Path, *, days: int, rows_per_day: int, commit: bool) -> None:
    import generate

    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy(EXAMPLE / name, root / name)
    (root / ".gitignore").write_text(".relay/\ndata/\n__pycache__/\n")
    (root / "data").mkdir(exist_ok=True)
    generate.generate(
        f"sqlite:///{root / 'data' / 'fraud.db'}", days=days, rows_per_day=rows_per_day
    )
    if commit:
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "-qm", "fraud example")
    # the store as relay creates it (schema, WAL, relay's indexes), in a process of its own so
    # that no connection stays open on the file that is copied
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from relayml.config import load_settings; from relayml.store import get_store; "
            "get_store(load_settings()).client",
        ],
        cwd=root,
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k not in _STORE_VARS},
    )


_STORE_VARS = ("RELAY_TRACKING_URI", "MLFLOW_TRACKING_URI", "RELAY_PROJECT", "RELAY_EXECUTOR")
_drop_store_vars()  # before any session or module fixture


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh fraud project (small data, committed to git); the cwd is set to it."""
    root = make_project(tmp_path / "fraud")
    monkeypatch.chdir(root)
    return root


@dataclass
class Result:
    """What one CLI invocation did."""

    code: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"<exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}>"


@pytest.fixture
def relay(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """Run the ``relay`` CLI in-process: ``relay("runs", "--json")`` → Result."""
    from relayml.cli import main

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["relay", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def relay_process(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    patch: str | None = None,
    **kw,
) -> subprocess.Popen:
    """Start the CLI as a real separate process (for concurrency and signal tests).

    ``patch``: Python source run in the child before the CLI starts, to monkeypatch it
    (hold a claim a while, crash at a chosen point) without test hooks in the library.
    """
    full = {**os.environ, **(env or {})}
    command = ["-m", "relayml"]
    if patch is not None:
        command = ["-c", f"{patch}\nfrom relayml.cli import main\nmain()"]
    return subprocess.Popen(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# -- PostgreSQL and MLflow servers ---------------------------------------------------------


def _postgres_url() -> str | None:
    url = os.environ.get("RELAY_TEST_POSTGRES_URL")
    reason = None
    if not url:
        reason = "RELAY_TEST_POSTGRES_URL is not set"
    else:
        import sqlalchemy as sa

        try:
            engine = sa.create_engine(url)
            with engine.connect():
                pass
            engine.dispose()
        except Exception as e:  # unreachable server
            reason = f"PostgreSQL at RELAY_TEST_POSTGRES_URL is unreachable: {e}"
    if reason:
        if os.environ.get("RELAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (RELAY_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the test PostgreSQL server (skips, or fails with RELAY_REQUIRE_POSTGRES=1)."""
    return _postgres_url()  # type: ignore[return-value]


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, with MLflow's schema (no experiment yet); dropped
    afterwards. Yields its URL.

    It is a copy of a template database that MLflow migrated once (MLflow's migration chain
    costs seconds to every process that would otherwise run it on an empty database)."""
    yield from fresh_database(postgres_url, template=_mlflow_template(postgres_url))


@pytest.fixture
def pg_empty_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (tables created by whoever connects
    first: a test whose server logs in as a role of its own); dropped afterwards."""
    yield from fresh_database(postgres_url, template=None)


def fresh_database(postgres_url: str, template: str | None) -> Iterator[str]:
    """Yield the URL of a new database (a copy of ``template``, or empty); drop it after."""
    import sqlalchemy as sa

    name = f"relay_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as con:
        con.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    url = sa.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as con:
            con.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                ),
                {"n": name},
            )
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextlib.contextmanager
def login_role(database: str, role: str, password: str) -> Iterator[str]:
    """A PostgreSQL role that logs in with ``password`` and may create tables in ``database``;
    yields the database's URL as that role, without the password. The role is dropped after
    (with what it owns: it must go before the database)."""
    import sqlalchemy as sa

    with sa.create_engine(database).connect() as con:
        con.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        con.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        name = sa.engine.make_url(database).database
        con.execute(sa.text(f'GRANT ALL ON DATABASE "{name}" TO {role}'))
        con.execute(sa.text(f"GRANT ALL ON SCHEMA public TO {role}"))
        con.commit()
    url = sa.engine.make_url(database).set(username=role, password=None)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with sa.create_engine(database).connect() as con:
            con.execute(sa.text(f'REASSIGN OWNED BY {role} TO "{con.engine.url.username}"'))
            con.execute(sa.text(f"DROP OWNED BY {role}"))
            con.execute(sa.text(f"DROP ROLE {role}"))
            con.commit()


def _mlflow_template(postgres_url: str) -> str:
    """The name of the database MLflow migrated, built once per MLflow version (kept between
    runs; built under a lock by the first xdist worker, under another name then renamed, so
    that it exists only complete)."""
    import mlflow
    import sqlalchemy as sa
    from mlflow.store.db.utils import _initialize_tables

    name = f"relay_test_mlflow_{mlflow.__version__.replace('.', '_')}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    exists = sa.text("SELECT 1 FROM pg_database WHERE datname = :n")
    try:
        with open(Path(tempfile.gettempdir()) / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with admin.connect() as con:
                if con.execute(exists, {"n": name}).first():
                    return name
                building = f"{name}_building_{os.getpid()}"
                con.execute(sa.text(f'CREATE DATABASE "{building}"'))
            url = sa.engine.make_url(postgres_url).set(database=building)
            engine = sa.create_engine(url)
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
            with admin.connect() as con:
                con.execute(sa.text(f'ALTER DATABASE "{building}" RENAME TO "{name}"'))
            return name
    finally:
        admin.dispose()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers (any status below 500)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {proc.stderr and proc.stderr.read()}"
            )
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def mlflow_server(pg_database: str, tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server on a fresh PostgreSQL database, with proxied artifacts.

    Yields its URL (``http://127.0.0.1:PORT``); the server is stopped afterwards.
    """
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            pg_database,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",  # each worker imports MLflow's server (seconds of CPU); one serves the tests
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # relayml uses no MLflow server jobs: skip the huey job consumers (CPU, memory)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, proc=proc)
        yield url
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
