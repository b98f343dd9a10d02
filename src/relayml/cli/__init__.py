"""The ``relay`` command line: thin, it parses, calls the public API, and prints.

Exit codes: 0 on success, 1 on a failed step, 2 on bad input (one ``Error: ...`` line on
stderr), 130 when interrupted. Heavy libraries (MLflow, pandas, scikit-learn) are imported
inside the commands that need them, so ``relay --help`` answers at once.

Each area registers its commands from its own module: :mod:`relayml.cli.core` (init, run,
runs, show, steps), and the chain, serving, lifecycle and team modules.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

from relayml.cli.app import app, console, err_console

if TYPE_CHECKING:
    import click

__all__ = ["app", "console", "err_console", "main"]


def main() -> None:
    """Entry point of the ``relay`` script."""
    from relayml.errors import RelayError

    _quiet_libraries()
    try:
        code = _command()(standalone_mode=False)
        # Typer turns Ctrl-C/SIGTERM into Exit(130) and, outside standalone mode, returns
        # the code of any Exit instead of exiting: pass it on.
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except RelayError as e:
        from rich.markup import escape

        from relayml.redaction import redact

        message = escape(redact(str(e)))  # no secret, and "[...]" in a message is not markup
        err_console.print(f"[red]Error:[/red] {message}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("[red]Error:[/red] interrupted; the running step was marked KILLED")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # the parser's usage errors (unknown option, wrong type), aborts
        import typer

        if isinstance(e, typer.TyperException):
            show = getattr(e, "show", None)
            if show is not None:
                show()
            else:
                err_console.print(f"[red]Error:[/red] {e.format_message()}", highlight=False)
            sys.exit(e.exit_code)
        if isinstance(e, typer.Abort):
            err_console.print("Aborted.")
            sys.exit(1)
        refused = _refusal(e)
        if refused:
            err_console.print(f"[red]Error:[/red] {refused}", highlight=False, soft_wrap=True)
            sys.exit(1)
        raise


def _refusal(e: Exception) -> str | None:
    """What to tell a user whom the tracking server refused (401, 403), or None."""
    mlflow_errors = sys.modules.get("mlflow.exceptions")
    if mlflow_errors is None or not isinstance(e, mlflow_errors.MlflowException):
        return None
    status = e.get_http_status_code()
    if status == 401:
        return (
            "the tracking server asks who you are (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) for it"
        )
    if status == 403:
        return (
            "the tracking server refused this to your user (HTTP 403): ask its administrator "
            "for the permission on the experiment"
        )
    return None


def _quiet_libraries() -> None:
    """Keep MLflow's and alembic's info logs and warnings off the terminal (RELAY_DEBUG=1 shows)."""
    import logging
    import os
    import warnings

    from relayml.redaction import redact_log_records

    redact_log_records()  # whatever a library logs, no password it holds reaches the terminal
    # with a tracking server MLflow prints "View run ... at: URL" on stdout when a run ends,
    # which would break --json output
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if os.environ.get("RELAY_DEBUG"):
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    warnings.simplefilter("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # worker processes too
    for name in ("mlflow", "alembic", "distributed", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)


@functools.cache
def _command() -> click.Command:
    """The click command of the whole CLI, built once per process (callers of :func:`main`
    in a loop, like the team benchmark, would otherwise rebuild it on every call)."""
    import importlib

    import typer

    for module in ("core", "chains", "serving", "lifecycle", "team", "data"):
        try:
            importlib.import_module(f"relayml.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"relayml.cli.{module}":
                raise
    return typer.main.get_command(app)
