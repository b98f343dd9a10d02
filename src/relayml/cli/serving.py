"""Serving commands: ``serve`` (REST API on raw records) and ``predict`` (batch scoring)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import typer

from relayml.cli.app import app, console, err_console, settings

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.I)
_UNITS = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 10**6,
    "mib": 2**20,
    "gb": 10**9,
    "gib": 2**30,
}


def parse_size(text: str) -> int:
    """``"5MiB"`` → 5242880; a UsageError for anything else.

    Example:
        >>> parse_size("512KiB")
        524288
    """
    from relayml.errors import UsageError

    m = _SIZE.match(text or "")
    if not m or float(m[1]) <= 0:
        raise UsageError(f"invalid size {text!r}: expected a positive size like 5MiB or 1000000")
    return int(float(m[1]) * _UNITS[(m[2] or "").lower() or None])


@app.command("serve")
def serve_command(
    ref: str = typer.Argument(
        ..., help="A training run reference, a chain spec in quotes, or models:/NAME@ALIAS."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: local)."),
    port: int = typer.Option(5001, "--port", "-p"),
    workers: int = typer.Option(1, "--workers", "-w", min=1),
    max_body: str = typer.Option("5MiB", "--max-body", help="Largest request body."),
    max_rows: int = typer.Option(
        100_000, "--max-rows", min=1, help="Most records in one request (413 beyond)."
    ),
    token_env: str = typer.Option(
        None, "--token-env", help="Env var holding a bearer token every route but /ping needs."
    ),
) -> None:
    """Serve a model bundled with its processing as a REST API on raw records.

    POST /invocations takes MLflow's scoring formats (JSON, CSV, Parquet); GET /version tells
    where the model comes from; GET /openapi.json describes the raw input. A request may hold
    --max-rows records and --max-body bytes, decoding to at most 8 times --max-body.

    Examples:

      relay serve training/logreg@latest

      relay serve models:/fraud@champion --port 8080 --workers 2 --token-env SCORING_TOKEN

      relay serve "load=transactions@latest processing=plain training=logreg"
    """
    from relayml.bundle import load_bundle
    from relayml.errors import UsageError
    from relayml.serving.api import resolve_model
    from relayml.serving.http import check_bind, run_server

    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise UsageError(f"--token-env {token_env}: the variable is unset or empty")
    warning = check_bind(host, port, token=token)
    limit = parse_size(max_body)
    uri, prov = resolve_model(ref, project=settings())
    bundle = load_bundle(uri)  # a bad model fails here, before anything is announced
    err_console.print(f"serving {uri} ({prov.get('training', ref)}) on http://{host}:{port}")
    err_console.print("  POST /invocations · GET /version · GET /openapi.json · Ctrl-C stops")
    if warning:
        err_console.print(f"[yellow]Warning:[/yellow] {warning}", highlight=False)
    run_server(
        uri, host=host, port=port, workers=workers, max_body=limit, max_rows=max_rows,
        token=token, token_env=token_env, provenance=prov, bundle=bundle,
    )  # fmt: skip


@app.command("predict")
def predict_command(
    ref: str = typer.Argument(..., help="A training run reference or models:/NAME@ALIAS."),
    input: Path = typer.Option(..., "--input", "-i", help="CSV or Parquet file of raw records."),
    output: Path = typer.Option(..., "--output", "-o", help="CSV or Parquet file to write."),
    key_column: str = typer.Option(
        None, "--key-column", help="Column copied beside the predictions (default: guessed)."
    ),
    batch_size: int = typer.Option(100_000, "--batch-size", min=1),
    executor: str = typer.Option(
        None, "--executor", help="dask://HOST:PORT to score partitions on a Dask cluster."
    ),
) -> None:
    """Score a file of raw records in batches and write the predictions beside its key column.

    Examples:

      relay predict training/logreg@latest --input new.csv --output scored.parquet

      relay predict models:/fraud@champion -i big.parquet -o scored.parquet --executor dask://sched:8786
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from relayml.errors import UsageError
    from relayml.serving.api import predict

    if not output.parent.is_dir():
        raise UsageError(
            f"--output {output}: the folder {output.parent} does not exist; create it first"
        )
    if executor:
        os.environ["RELAY_EXECUTOR"] = executor
    with Progress(
        SpinnerColumn(),
        TextColumn("scored {task.completed:,} rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("predict", total=None)
        rows = predict(
            ref,
            input,
            output,
            key_column=key_column,
            batch_size=batch_size,
            progress=lambda n: bar.update(task, completed=n),
            project=settings(),
        )
    console.print(f"[green]✓[/green] {rows:,} predictions written to {output}", highlight=False)
