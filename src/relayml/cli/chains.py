"""Chain commands: ``chain`` (resolve and complete a coherent chain) and ``lineage``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from relayml.cli.app import app, console, err_console, parse_assignments, print_json, settings

if TYPE_CHECKING:
    from relayml.chain import Chain, Lineage

STATUS_STYLE = {"reused": "green", "new": "cyan", "failed": "red"}


@app.command("chain")
def chain_command(
    links: list[str] = typer.Argument(
        ..., help="STEP=VARIANT items; a load as VARIANT@YYYY-MM-DD, VARIANT@latest or a key."
    ),
    param: list[str] = typer.Option(
        None, "--param", "-P", help="STEP.NAME=VALUE (repeatable), e.g. training.C=10."
    ),
    force: list[str] = typer.Option(
        None, "--force", help="Rerun this step and every step after it (repeatable)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; run nothing."),
    explain: bool = typer.Option(
        False, "--explain", help="Say why newer runs of each step were passed over."
    ),
    no_checks: bool = typer.Option(
        False, "--no-checks", help="Emergencies: skip a load's data checks (recorded on the run)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the chain as JSON."),
) -> None:
    """Resolve the newest coherent chain, run only what is missing, record it.

    A run is reused only when its step, variant, params (defaults included), upstream runs
    and code are the same as asked. A load without @DATE is a fresh retrieval.

    Examples:

      relay chain load=transactions@2019-02-09 processing=plain training=logreg -P training.C=10

      relay chain load=transactions@latest processing=plain training=rf --dry-run --explain

      relay chain load=transactions processing=plain training=logreg --force processing
    """
    from relayml.chain import chain
    from relayml.errors import ChainFailed

    def say(line: str) -> None:
        err_console.print(line, highlight=False)

    import contextlib
    import sys

    try:  # stdout is for the result: MLflow's "View run" lines and step prints go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = chain(
                *links, params=parse_assignments(param), force=force or None, dry_run=dry_run,
                explain=explain, show_progress=err_console.is_terminal and not json_out,
                on_event=say, checks=not no_checks, project=settings(),
            )  # fmt: skip
    except ChainFailed as e:
        if json_out:
            print_json(e.chain.to_dict())
        else:
            err_console.print(chain_table(e.chain, explain=explain))
        raise
    if json_out:
        print_json(result.to_dict())
        return
    console.print(chain_table(result, explain=explain))
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/yellow] {note}", highlight=False)
    if result.model_uri:
        console.print(f"model: {result.model_uri}", highlight=False)
    if result.data_version:
        console.print(f"data version: {result.data_version}", highlight=False)
    if result.record_id is not None:
        console.print(f"chain record: {result.record_id}", highlight=False)


def chain_table(result: Chain, *, explain: bool = False) -> Any:
    """A Rich table of a chain: step, variant, run, reused/new, why."""
    from rich.table import Table

    title = "chain (dry run: nothing was run)" if result.dry_run else "chain"
    table = Table(title=title, title_justify="left")
    for col in ("step", "variant", "run", "", "why"):
        table.add_column(col, no_wrap=col != "why", overflow="fold")
    for p in result.steps:
        shown = p.status if not (result.dry_run and p.status == "new") else "new (to run)"
        style = STATUS_STYLE.get(p.status, "white")
        key = str(p.run.key) if p.run else "-"
        table.add_row(p.step, p.variant, key, f"[{style}]{shown}[/]", p.reason)
        if explain:
            for k, why in p.passed_over:
                table.add_row("", "", f"[dim]{k}[/]", "[dim]passed over[/]", f"[dim]{why}[/]")
    metrics = result.metrics
    if metrics:
        table.caption = "  ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())[:6])
    return table


@app.command()
def lineage(
    ref: str = typer.Argument(..., help="A run reference: key, key@date, @latest or run id."),
    json_out: bool = typer.Option(False, "--json", help="Print both trees as JSON."),
) -> None:
    """Show the upstream tree and the downstream tree of a run.

    Examples:

      relay lineage training/logreg@latest

      relay lineage load/transactions@2019-02-09 --json
    """
    from relayml.chain import lineage as lineage_of

    found = lineage_of(ref, project=settings())
    if json_out:
        print_json(found.to_dict())
        return
    console.print(lineage_trees(found))


def lineage_trees(found: Lineage) -> Any:
    """Two Rich trees: what the run consumed, and what consumed it."""
    from rich.console import Group
    from rich.tree import Tree

    from relayml.cli.core import STATUS_STYLE as RUN_STYLE

    def label(node: dict[str, Any]) -> str:
        style = RUN_STYLE.get(node["status"], "white")
        data = f"  data {node['data_version'][:12]}" if node.get("data_version") else ""
        return f"[bold]{node['key']}[/bold] [{style}]{node['status']}[/]{data}"

    def grow(tree: Tree, node: dict[str, Any]) -> Tree:
        for child in node["children"]:
            grow(tree.add(label(child)), child)
        return tree

    up = grow(Tree("upstream (what it consumed)\n" + label(found.upstream)), found.upstream)
    down = grow(Tree("downstream (what consumed it)\n" + label(found.downstream)), found.downstream)
    parts: list[Any] = [up, down]
    if found.chains:
        parts.append(f"in chain records: {', '.join(found.chains)}")
    return Group(*parts)
