"""Secrets stay secret: redaction by value, and no password on a child's command line.

Passwords are generated (hypothesis) for the store boundary and chosen to be awkward (a space,
an ``@``, quotes) for the end-to-end runs: none may reach a param, a tag, a run row, an
artifact, the CLI's output, or the command line of any process ``relay server`` starts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import free_port, login_role, relay_process, wait_http

# any printable text: letters, digits, punctuation, symbols, spaces (no control characters)
PASSWORDS = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn")), min_size=4, max_size=24
)

LEAKY_STEPS = """
import os
from urllib.parse import quote, quote_plus

import pandas as pd

import relayml as relay

load = relay.step("load")


@load.variant("warehouse")
def warehouse(ctx):
    return ctx.query("warehouse", "SELECT 1 AS a")


@load.variant("leaky")
def leaky(ctx, note: str = "none"):
    ctx.query("warehouse", "SELECT 1 AS a")
    pw = os.environ["WAREHOUSE_PASSWORD"]
    raise RuntimeError(f"cannot use {pw} / {pw!r} / {quote(pw)} / {quote_plus(pw)}")
"""


def _forms(password: str) -> set[str]:
    """What must not appear anywhere: the password, raw and in every usual encoding."""
    from relayml.redaction import encodings

    return {f for f in encodings(password) if len(f) >= 4}


def _leaks(password: str, text: str) -> list[str]:
    return [f for f in _forms(password) if f in text]


@contextlib.contextmanager
def _remembered(password: str) -> Iterator[None]:
    """Remember ``password`` for redaction, and forget it afterwards: generated passwords like
    ``0000`` must not be masked in the other tests of the session."""
    from relayml.redaction import forget, remember

    remember(password)
    try:
        yield
    finally:
        forget(password)


# -- the redaction itself ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(password=PASSWORDS)
def test_redact_hides_every_encoding_of_a_remembered_password(password: str) -> None:
    from relayml.redaction import redact

    url = f"postgresql+psycopg://me:{quote(password, safe=' +')}@db:5432/x"
    text = "\n".join(
        [
            f"{url}: connection failed",
            *(f"form <{f}> here" for f in _forms(password)),
            f"Traceback: RuntimeError({password!r}); {json.dumps(password)}",
        ]
    )
    with _remembered(password):
        assert _leaks(password, redact(text)) == []


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from relayml.redaction import redact_log_records

    redact_log_records()
    with _remembered("Log p@ss w0rd"), caplog.at_level(logging.INFO):
        logging.getLogger("sqlalchemy.demo").warning("connect with %r failed", "Log p@ss w0rd")
    assert caplog.messages == ["connect with '***' failed"]


def test_a_url_password_with_a_space_is_redacted_without_being_remembered() -> None:
    from relayml.data import snapshot_query

    url = "postgresql+psycopg://me:Sp%40ce%20Bar%20Zz@127.0.0.1:1/x"
    with pytest.raises(Exception) as info:
        snapshot_query(url, "SELECT 1", {}, Path("/nonexistent/never.parquet"))
    assert "Sp@ce Bar Zz" not in str(info.value) and "Sp%40ce" not in str(info.value)


# -- the store boundary: params, tags, run rows, artifacts --------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    from relayml.config import load_settings
    from relayml.store import get_store

    root = tmp_path_factory.mktemp("secrets-store")
    (root / "relay.toml").write_text('[project]\nname = "secrets"\n')
    return get_store(load_settings(root))


_EXAMPLE = itertools.count()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=PASSWORDS)
def test_no_generated_password_reaches_the_store(
    password: str, store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relayml.data import with_password

    monkeypatch.setenv("RELAY_TEST_PW", password)
    with _remembered(password):  # forgotten afterwards (with_password remembers it too)
        url = with_password("postgresql+psycopg://me@db:5432/x", "RELAY_TEST_PW")
        message = f"{url}: bad password {password!r} ({quote(password)}, {quote_plus(password)})"
        n = next(_EXAMPLE)
        run = store.create_run(
            "load", start_ms=1, run_name=f"r{n}", tags={"relay.note": message}
        ).info.run_id
        store.log(run, params={"source": url, "why": message}, tags={"relay.source": url})
        store.set_tag(run, "relay.error", message)
        store.log_text(run, f"Traceback\n  {message}\n", "error/traceback.txt")
        store.log_dataset(
            run, name="x", digest="0" * 32, source=url, schema=None, profile=None, context="x"
        )
    entity = store.client.get_run(run)
    written = [
        *entity.data.params.values(),
        *(entity.data.tags[k] for k in ("relay.note", "relay.source", "relay.error")),
        *(d.dataset.source for d in entity.inputs.dataset_inputs),
    ]
    folder = store.download(run, "error", store.settings.root / ".relay" / f"dl{n}")
    written.append((folder / "traceback.txt").read_text(encoding="utf-8"))
    for text in written:
        assert _leaks(password, text) == [], text


def test_identity_tags_keep_a_value_that_equals_a_secret(store) -> None:
    """A password equal to a step name must not break lookups; errors still hide it."""
    with _remembered("fraudload"):
        run = store.create_run(
            "fraudload",
            start_ms=1,
            run_name="identity",
            tags={"relay.step": "fraudload", "relay.note": "fraudload"},
        ).info.run_id
        store.set_tag(run, "relay.error", "fraudload failed")
    tags = store.client.get_run(run).data.tags
    assert tags["relay.step"] == "fraudload"
    assert tags["relay.note"] == "***" and tags["relay.error"] == "*** failed"


# -- end to end: a run on PostgreSQL with a password that has a space ---------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("password", ["p@ss w0rd", 'it\'s "q" \\ 50%:/?#'])
def test_a_source_password_reaches_nothing_end_to_end(
    password: str, pg_database: str, tmp_path: Path, relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``p@ss w0rd`` reached stderr, relay.error and error/traceback.txt."""
    (tmp_path / "relay.toml").write_text(
        textwrap.dedent(f"""
        [project]
        name = "leak"
        [sources.warehouse]
        url = "{pg_database}"
        password_env = "WAREHOUSE_PASSWORD"
        """)
    )
    (tmp_path / "steps.py").write_text(LEAKY_STEPS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WAREHOUSE_PASSWORD", password)

    ok = relay("run", "load", "warehouse", "--json")  # libpq gets the password it needs
    assert ok.code == 0, ok
    failed = relay("run", "load", "leaky", "-P", f"note={password}")
    assert failed.code == 1 and failed.err.startswith("Error:"), failed
    assert "***" in failed.err
    runs = relay("runs", "--json")
    key = next(r["key"] for r in json.loads(runs.out) if r["variant"] == "leaky")
    shown = relay("show", key, "--json")
    assert shown.code == 0, shown
    assert json.loads(shown.out)["status"] == "FAILED"

    everything = ok.out + ok.err + failed.out + failed.err + runs.out + shown.out + shown.err
    assert _leaks(password, everything) == []
    for path in (tmp_path / ".relay").rglob("*"):  # the run rows, params, tags, artifacts
        if path.is_file():
            data = path.read_bytes()
            for form in _forms(password):
                assert form.encode() not in data, (path, form)
    with sqlite3.connect(tmp_path / ".relay" / "mlflow.db") as con:
        error = con.execute("SELECT value FROM tags WHERE key = 'relay.error'").fetchone()[0]
    assert "RuntimeError: cannot use ***" in error


# -- relay server: the backend password only in the child's environment -------------------------


@pytest.mark.postgres
@pytest.mark.slow
def test_relay_server_puts_no_password_on_any_command_line(
    pg_empty_database: str, tmp_path: Path
) -> None:
    import psutil
    import sqlalchemy as sa

    project = tmp_path / "team"
    project.mkdir()
    (project / "relay.toml").write_text('[project]\nname = "team"\n')
    secret = "p@ss w0rd-Srv"
    with login_role(pg_empty_database, "relay_secret_test", secret) as backend:
        port = free_port()
        server = relay_process(
            "server", "--backend", backend, "--password-env", "RELAY_DB_PASSWORD",
            "--artifacts", str(tmp_path / "store"), "--port", str(port), "--workers", "2",
            cwd=project, env={"RELAY_DB_PASSWORD": secret}, start_new_session=True,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=server)
            top = psutil.Process(server.pid)
            processes = [top, *top.children(recursive=True)]
            assert len(processes) >= 3  # relay, mlflow server, its uvicorn workers
            for proc in processes:
                cmdline = " ".join(proc.cmdline())
                assert _leaks(secret, cmdline) == [], cmdline
            # the server did reach its backend: MLflow's tables exist, owned by the new role
            with sa.create_engine(pg_empty_database).connect() as con:
                owner = con.execute(
                    sa.text("SELECT tableowner FROM pg_tables WHERE tablename = 'experiments'")
                ).scalar()
            assert owner == "relay_secret_test"
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            out, err = server.communicate(timeout=60)
        assert _leaks(secret, out + err) == []
        assert "relay_secret_test:***@" in err
