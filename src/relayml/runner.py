"""Executes one step run: code version, params, upstream, snapshots, outputs, status.

:func:`relayml.request.prepare` validates a request without touching the tracking store's
runs; :func:`execute` runs it inside an MLflow run; :func:`run` does both. Creating the run
(a unique key, its tags, the heartbeat) is :mod:`relayml.runstart`; recording what the
variant returned is :mod:`relayml.runfinish`; the ``ctx`` of a variant is
:class:`relayml.context.Context`.

Example:
    >>> from relayml.runner import execute, prepare
    >>> execute(prepare("processing", "plain", {"seed": "7"})).params["seed"]
    '7'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from relayml import tags as tag
from relayml.checks import Checks
from relayml.codeinfo import code_state
from relayml.context import Context
from relayml.errors import RelayError, SourceError, StepFailed
from relayml.keys import RunKey
from relayml.outputs import as_dict, handed_down
from relayml.redaction import redact
from relayml.request import Request, pipeline_of, prepare
from relayml.runfinish import early_proof, finish, log_checks
from relayml.runs import Project, Run
from relayml.runstart import Heartbeat, create_run, record_code
from relayml.store import Store, get_store

__all__ = ["Context", "Request", "Terminated", "execute", "pipeline_of", "prepare", "run"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def execute(
    req: Request, *, show_progress: bool = True, created: tuple[str, RunKey] | None = None
) -> Run:
    """Execute a prepared request inside a new MLflow run and return the finished Run.

    Args:
        req: the prepared request.
        show_progress: show progress bars on the terminal.
        created: ``(run_id, key)`` of a RUNNING run already created for ``req`` (a claim
            held through :func:`relayml.claims.claim`); default: create one.

    Raises:
        StepFailed: the variant (or its data source) raised or called ``sys.exit``; the run is
            FAILED with the traceback as the artifact ``error/traceback.txt`` (and the exit
            code as the tag ``relay.exit_code``).
        KeyboardInterrupt: Ctrl-C or SIGTERM; the run is KILLED.
    """
    settings = req.settings
    if req.code is None:
        req = replace(req, code=code_state(settings.root))
    func = req.variant.load()  # a variant from the pipeline cache imports the module now
    store = get_store(settings)
    run_id, key = created or create_run(store, req)
    beat = Heartbeat(store, run_id, settings.stale_after)
    retrieval = req.as_of or key.moment
    ctx = Context(key, run_id, settings, retrieval, req.params, store, show_progress=show_progress)
    if not req.pipeline.get(req.step).upstream and req.checks:  # a load: its data is checked
        ctx._checks = req.variant.checks or Checks()
    ctx._key = req.variant.key
    try:
        with _sigterm_raises(), beat, early_proof(req) as proof:
            record_code(store, run_id, req)
            args = _arguments(req, ctx)
            returned = func(**args)
            finish(store, req, ctx, as_dict(returned), proof)
    except KeyboardInterrupt:
        _end(store, run_id, "KILLED", "interrupted (Ctrl-C or SIGTERM)")
        raise
    except (Exception, SystemExit) as e:  # sys.exit() in a variant fails its run, too
        tb = traceback.format_exc()
        with contextlib.suppress(Exception):
            store.log_text(run_id, tb, "error/traceback.txt")
            if isinstance(e, SystemExit):
                store.set_tag(run_id, tag.EXIT_CODE, str(e.code))
        with contextlib.suppress(Exception):
            log_checks(store, ctx)
        msg = redact(_short(e))
        _end(store, run_id, "FAILED", msg)
        if isinstance(e, RelayError) and not isinstance(e, SourceError):
            raise
        raise StepFailed(f"{key} failed: {msg} (traceback: relay show {key})") from e
    finally:
        shutil.rmtree(ctx._tmp, ignore_errors=True)
    entity = store.get_run(run_id)
    assert entity is not None
    return Run(settings, entity)


def run(
    step: str,
    variant: str,
    params: Mapping[str, Any] | None = None,
    *,
    upstream: Iterable[str | Run] | Mapping[str, str | Run] | None = None,
    as_of: datetime | str | None = None,
    require_clean: bool = False,
    show_progress: bool = False,
    checks: bool = True,
    project: Project = None,
) -> Run:
    """Run one variant of a step and return its finished :class:`~relayml.runs.Run`.

    Args:
        step: the step's name.
        variant: the variant's name.
        params: parameter values; defaults fill the rest.
        upstream: references of upstream runs (default: ``@latest`` of each upstream step).
        as_of: repeat a load for an earlier retrieval time.
        require_clean: refuse to run with uncommitted changes.
        show_progress: show progress bars on the terminal.
        checks: run the load variant's data checks (False: skip them, recorded on the run).
        project: the project (default: around the working folder).

    Example:
        >>> load = relay.get("load/transactions@latest")
        >>> run = relay.run("processing", "plain", {"test_size": "0.5"}, upstream=[str(load.key)])
        >>> run.status, run.params["test_size"], run.upstream["load"] == load
        ('FINISHED', '0.5', True)
    """
    req = prepare(
        step,
        variant,
        params,
        upstream=upstream,
        as_of=as_of,
        require_clean=require_clean,
        checks=checks,
        project=project,
    )
    return execute(req, show_progress=show_progress)


def _arguments(req: Request, ctx: Context) -> dict[str, Any]:
    args: dict[str, Any] = dict(req.params)
    if req.variant.wants_ctx:
        args["ctx"] = ctx
    for name in req.variant.inputs:
        args[name] = handed_down(req.upstream[name])
    return args


def _end(store: Store, run_id: str, status: str, message: str) -> None:
    with contextlib.suppress(Exception):
        store.set_tag(run_id, tag.ERROR, message[:4000])
    store.finish(run_id, status)


def _short(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"the variant called sys.exit({e.code!r})"
    text = str(e).strip().split("\n")[0] or type(e).__name__
    return f"{type(e).__name__}: {text}" if not isinstance(e, RelayError) else text


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a step runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # MLflow's git probe must not warn
