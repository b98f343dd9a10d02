"""The Typer application object and the shared console and option helpers of the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from relayml.config import Settings

__all__ = ["app", "console", "err_console", "parse_assignments", "print_json", "settings"]

app = typer.Typer(
    name="relay",
    help=(
        "relayml: coherent, versioned, servable ML pipelines on top of MLflow.\n\n"
        "Run inside a project folder (one with relay.toml), or pass --project DIR.\n\n"
        "Examples:\n\n"
        "  relay run load transactions\n\n"
        "  relay run training logreg -P C=10\n\n"
        "  relay runs training --on 2019-02-09\n\n"
        "  relay show training/logreg@latest"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped output (scripts, CI logs) gets wide lines instead of Rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

_state: dict[str, Any] = {"project": None}


@app.callback()
def _root(
    project: Path = typer.Option(
        None,
        "--project",
        "-C",
        help="Project folder (default: the one around the cwd).",
        envvar="RELAY_PROJECT",
        show_default=False,
    ),
) -> None:
    _state["project"] = project


def settings() -> Settings:
    """The settings of the project chosen with ``--project`` (or around the cwd)."""
    from relayml.config import load_settings

    return load_settings(_state["project"])


def parse_assignments(items: list[str] | None, what: str = "-P") -> dict[str, str]:
    """Parse ``name=value`` pairs; a malformed one is a UsageError naming the fix.

    Example:
        >>> parse_assignments(["C=10", "penalty=l1"])
        {'C': '10', 'penalty': 'l1'}
    """
    from relayml.errors import UsageError

    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{what} {item!r}: expected name=value")
        if name.strip() in out:
            raise UsageError(f"{what} {name.strip()!r} given twice")
        out[name.strip()] = value
    return out


def print_json(data: Any) -> None:
    """Print JSON for scripts (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
