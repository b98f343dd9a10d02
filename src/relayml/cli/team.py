"""Team commands: ``server`` (the project's MLflow tracking server) and ``ui``.

Both start MLflow's own server as a child process and stop it on Ctrl-C or SIGTERM. Passwords
of the backend store URL are redacted in everything printed; the basic-auth admin password is
read from ``MLFLOW_AUTH_ADMIN_PASSWORD`` by MLflow itself and never written by relay.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from relayml.cli.app import app, err_console, settings

if TYPE_CHECKING:
    from relayml.config import Settings

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _default_backend(s: Settings) -> str:
    """The project's own database: its tracking URI when that is a database, else .relay's."""
    uri = s.tracking_uri
    if uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        return uri
    return f"sqlite:///{s.root / '.relay' / 'mlflow.db'}"


def _default_artifacts(s: Settings) -> str:
    location = s.artifact_location
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(location).path)
    return location or str(s.root / ".relay" / "artifacts")


def server_command(
    s: Settings,
    *,
    backend: str | None = None,
    artifacts: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int | None = None,
    auth: bool = False,
    extra: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and environment for a project.

    The backend URL (which may hold a password) goes to the child in its environment
    (``MLFLOW_BACKEND_STORE_URI``, which ``mlflow server`` and its workers read), never on its
    command line, where every local user could read it with ``ps``.

    Returns:
        ``(argv, env)``; ``env["MLFLOW_BACKEND_STORE_URI"]`` holds the backend URL with its
        password (do not print it).

    Example:
        >>> argv, env = server_command(settings, port=5001)  # doctest: +SKIP
        >>> argv[3:5]  # doctest: +SKIP
        ['server', '--artifacts-destination']
    """
    from relayml.errors import UsageError

    backend = backend or _default_backend(s)
    if backend.startswith("sqlite:///") and not backend.startswith("sqlite:////"):
        backend = "sqlite:///" + str(s.root / backend.removeprefix("sqlite:///"))
    if backend.startswith("sqlite:////"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    dest = artifacts or _default_artifacts(s)
    if "://" not in dest:
        path = Path(dest)
        dest = str(path if path.is_absolute() else (s.root / path).resolve())
        Path(dest).mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--artifacts-destination", dest,
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    if workers:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1; got {workers}")
        argv += ["--workers", str(workers)]
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_BACKEND_STORE_URI"] = backend  # not in argv: ps shows argv to every user
    # MLflow's job runner (GenAI jobs: a dozen worker processes) serves nothing relay uses
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if auth:
        import importlib.util

        if importlib.util.find_spec("flask_wtf") is None:
            raise UsageError("--auth needs MLflow's auth extra: pip install 'mlflow[auth]'")
        argv += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(_auth_config(s))
        if not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):  # CSRF key, stable across restarts
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _secret_key(s.root / ".relay" / "secret_key")
    argv += list(extra or [])
    return argv, env


def _secret_key(path: Path) -> str:
    """A random key kept in ``path`` (mode 600), created on first use."""
    import secrets

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _auth_config(s: Settings) -> Path:
    """Write ``.relay/basic_auth.ini`` (no password in it) and return its path.

    Users live in ``.relay/basic_auth.db`` unless ``RELAY_AUTH_DATABASE`` names another
    SQLAlchemy URL. New users may create and edit runs (``default_permission = EDIT``), which
    suits a team that shares experiments; set ``RELAY_AUTH_DEFAULT_PERMISSION=READ`` to lock.

    A server worker remembers a checked password for ``RELAY_AUTH_CACHE_SECONDS`` (default 60;
    MLflow's ``auth_cache_ttl_seconds``): MLflow hashes the password of every request (about
    0.1 s of CPU) and a ``relay run`` sends 15 to 50 requests. A password changed or a user
    deleted through the API is refused at once by the worker that handled the change, by the
    others within that time; 0 checks every request.
    """
    from relayml.errors import UsageError

    folder = s.root / ".relay"
    folder.mkdir(parents=True, exist_ok=True)
    db = os.environ.get("RELAY_AUTH_DATABASE") or f"sqlite:///{folder / 'basic_auth.db'}"
    permission = os.environ.get("RELAY_AUTH_DEFAULT_PERMISSION", "EDIT").upper()
    if permission not in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS"):
        raise UsageError(
            f"RELAY_AUTH_DEFAULT_PERMISSION={permission!r}: use READ, EDIT, MANAGE or "
            "NO_PERMISSIONS"
        )
    cache = os.environ.get("RELAY_AUTH_CACHE_SECONDS", "60")
    if not cache.isdigit():
        raise UsageError(
            f"RELAY_AUTH_CACHE_SECONDS={cache!r}: use a whole number of seconds (0: no cache)"
        )
    first_start = db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists()
    if first_start and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise UsageError(
            "the first start with --auth creates the admin user: export "
            "MLFLOW_AUTH_ADMIN_PASSWORD=<a strong password> (and optionally "
            "MLFLOW_AUTH_ADMIN_USERNAME, default admin)"
        )
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        f"default_permission = {permission}\n"
        f"database_uri = {db}\n"
        f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {int(cache)}\n"
    )
    return path


def _run_child(argv: list[str], env: dict[str, str]) -> int:
    """Run a server in the foreground; Ctrl-C or SIGTERM stops it cleanly."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        err_console.print("stopping the server ...")
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
            return 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 0
        except ProcessLookupError:
            return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prepare_backend(uri: str) -> None:
    """Create (or migrate) MLflow's schema in the backend, then add relay's lookup indexes."""
    if not uri.startswith(("sqlite:", "postgresql")):
        return
    from relayml.store import prepare_backend

    with err_console.status("preparing the backend store"):
        prepare_backend(uri)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def server(
    ctx: typer.Context,
    backend: str = typer.Option(
        None,
        "--backend",
        help="Backend store URL (default: the project's .relay/mlflow.db). "
        "For a team: postgresql+psycopg://USER@HOST:5432/DB.",
        show_default=False,
    ),
    password_env: str = typer.Option(
        None, "--password-env", help="Environment variable holding the backend's password."
    ),
    artifacts: str = typer.Option(
        None,
        "--artifacts",
        help="Where the server keeps artifacts: a folder or s3://... "
        "(default: the project's .relay/artifacts). Clients upload through the server.",
        show_default=False,
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0: all)."),
    port: int = typer.Option(5000, "--port", "-p", help="Port to listen on."),
    workers: int = typer.Option(None, "--workers", "-w", help="Server worker processes."),
    auth: bool = typer.Option(
        False, "--auth", help="Require a user name and password (MLflow basic auth)."
    ),
    purge_deleted_after: str = typer.Option(
        None,
        "--purge-deleted-after",
        help="Purge runs deleted longer ago than this (e.g. 1d, 12h) while the server runs "
        "(MLflow's gc, repeated).",
        show_default=False,
    ),
) -> None:
    """Start the project's MLflow tracking server (team mode); Ctrl-C stops it.

    Extra arguments after -- go to 'mlflow server' unchanged.

    Examples:

      relay server

      relay server --backend postgresql+psycopg://relay@db:5432/mlflow
      --password-env RELAY_DB_PASSWORD --artifacts s3://team-bucket/mlflow --host 0.0.0.0 --auth

      relay server --purge-deleted-after 1d

    Clients: export RELAY_TRACKING_URI=http://HOST:5000 (and MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD with --auth).
    """
    from relayml.data import redact, with_password

    s = settings()
    purge_age = _purge_age(purge_deleted_after)
    url = backend or _default_backend(s)
    if password_env:
        url = with_password(url, password_env)
    argv, env = server_command(
        s, backend=url, artifacts=artifacts, host=host, port=port, workers=workers,
        auth=auth, extra=list(ctx.args),
    )  # fmt: skip
    shown = env["MLFLOW_BACKEND_STORE_URI"]
    _prepare_backend(shown)
    dest = argv[argv.index("--artifacts-destination") + 1]
    address = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    err_console.print(f"backend store   {redact(shown)}", highlight=False)
    err_console.print(f"artifacts       {redact(dest)} (proxied through the server)")
    with_auth = " with basic auth" if auth else ""
    err_console.print(f"listening on    http://{host}:{port}{with_auth}")
    err_console.print(f"clients:        export RELAY_TRACKING_URI={address}", highlight=False)
    if host not in _LOCAL_HOSTS and not auth:
        err_console.print(
            f"[yellow]Warning:[/yellow] {host} is reachable from other machines and --auth is "
            "off: anyone who reaches the port can read and write runs"
        )
    if purge_age is not None:
        err_console.print(f"purges          runs deleted more than {purge_deleted_after} ago")
        _start_purging(shown, purge_age, address)
    code = _run_child(argv, env)
    if code:
        raise typer.Exit(code)


def _purge_age(text: str | None) -> float | None:
    """Seconds of ``--purge-deleted-after`` (None when not given)."""
    if text is None:
        return None
    from relayml.errors import UsageError
    from relayml.lifecycle import parse_age

    try:
        return parse_age(text)
    except UsageError:
        raise UsageError(
            f"invalid --purge-deleted-after {text!r}: expected an age like 1d, 12h, 30m"
        ) from None


def _start_purging(backend: str, age: float, address: str) -> None:
    """Purge deleted runs older than ``age`` now and then, in a daemon thread of this process.

    The first purge waits for the server to answer; then every ``age / 2`` seconds, between
    5 seconds and an hour. A failed round is reported and the next one tries again.
    """
    import threading
    import time

    from relayml.data import redact

    interval = max(5.0, min(3600.0, age / 2))

    def loop() -> None:
        import httpx

        while True:
            try:
                up = httpx.get(f"{address}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                up = False  # still starting, or restarting: next round
            try:
                if up:
                    from relayml.store import purge_deleted

                    purge_deleted(backend, age, tracking_uri=address)
            except Exception as e:  # the database is busy, ...: next round
                err_console.print(f"purge of deleted runs failed: {redact(str(e))[:300]}")
            time.sleep(interval)

    threading.Thread(target=loop, name="relay-purge", daemon=True).start()


@app.command()
def ui(
    port: int = typer.Option(5000, "--port", "-p", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    mlflow: bool = typer.Option(
        True, "--mlflow/--no-mlflow", help="Also serve MLflow's UI behind the same URL."
    ),
) -> None:
    """Serve relay's pages (lineage, runs, compare, history) and MLflow's UI on one URL.

    relay's pages are under /relay/; every other path is MLflow's UI: of the project's
    embedded store (started beside relay's pages), or of the team's tracking server (the
    server checks the browser's credentials). relay's pages only read. Ctrl-C stops it.

    Examples:

      relay ui

      relay ui --port 5001 --no-mlflow
    """
    import uvicorn

    from relayml.ui.app import create_app

    s = settings()
    child = None
    upstream = None
    if mlflow and s.is_local_store:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            private = sock.getsockname()[1]
        argv, env = server_command(s, host="127.0.0.1", port=private, workers=1)
        argv[3] = "ui"
        child = subprocess.Popen(argv, env=env, start_new_session=True)
        upstream = f"http://127.0.0.1:{private}"
    elif mlflow:
        upstream = s.tracking_uri
    app_ = create_app(s, mlflow_upstream=upstream)
    where = f"http://{host}:{port}"
    mlflow_note = ""
    if upstream:
        of = "" if child is not None else f" (the tracking server {upstream})"
        mlflow_note = f"; MLflow's UI{of}: {where}/"
    err_console.print(f"relay ui of {s.project} on {where}/relay/{mlflow_note} (Ctrl-C stops it)")

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the signal that stopped it once it is done: exit through Python, so
    # the MLflow child below is stopped too
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child is not None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
                child.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
