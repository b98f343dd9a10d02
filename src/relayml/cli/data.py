"""Data commands: ``diff`` (what changed between two data versions)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from relayml.cli.app import app, console, print_json, settings

if TYPE_CHECKING:
    from relayml.datadiff import DataDiff


@app.command("diff")
def diff_command(
    a: str = typer.Argument(..., help="The reference version: a load run reference or a digest."),
    b: str = typer.Argument(
        None, help="The new version (default: A is the new one, against the load before it)."
    ),
    key: str = typer.Option(
        None, "--key", help="Columns matching rows, comma separated (default: the variant's key)."
    ),
    snapshot: str = typer.Option(
        None, "--snapshot", help="Which snapshot of a load that took several (its source name)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the diff as JSON."),
) -> None:
    """Compare two data versions: rows added, removed and changed, schema, drift per column.

    Drift is the population stability index (PSI) of numeric and time columns binned on A's
    deciles (above 0.25 is usually a large shift), and for other columns the share of B's
    rows holding a value A never held.

    Examples:

      relay diff load/transactions@2019-02-10 load/transactions@latest

      relay diff load/transactions@latest          # against the load just before it

      relay diff 3f2a9c1e 9b1d77aa --key id --json
    """
    from relayml.datadiff import diff

    keys = [k.strip() for k in key.split(",") if k.strip()] if key else None
    result = diff(a, b, key=keys, snapshot=snapshot, project=settings())
    if json_out:
        print_json(result.to_dict())
        return
    print_diff(result)


def print_diff(d: DataDiff) -> None:
    """Print a diff: a header, the row changes with examples, the schema, the drift table."""
    from rich.table import Table

    console.print(f"[bold]{d.a}[/bold] → [bold]{d.b}[/bold]", highlight=False)
    console.print(f"  rows {d.rows['a']:,} → {d.rows['b']:,}", highlight=False)
    how = f"matched on key {', '.join(d.key)}" if d.key else "whole rows (no key declared)"
    changed = "" if d.changed is None else f", {d.changed:,} changed"
    console.print(f"  {d.added:,} added, {d.removed:,} removed{changed} ({how})", highlight=False)
    for kind in ("added", "removed", "changed"):
        for ex in d.examples.get(kind, []):
            console.print(f"    {kind}: {_short(ex)}", highlight=False)
    for kind, cols in d.schema.items():
        for col, t in cols.items():
            console.print(f"  schema: column {col} {kind} ({_short(t)})", highlight=False)
    if d.drift:
        table = Table(title="drift per column", title_justify="left")
        for col in ("column", "measure", "value"):
            table.add_column(col, justify="right" if col == "value" else "left")
        ordered = sorted(d.drift.items(), key=lambda cv: -cv[1]["value"])
        for col, info in ordered:
            value = info["value"]
            style = "red" if info["measure"] == "psi" and value > 0.25 else ""
            table.add_row(
                col, info["measure"], f"[{style}]{value:.4f}[/]" if style else f"{value:.4f}"
            )
        console.print(table)


def _short(value: Any, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
