"""Lifecycle commands: ``compare``, ``promote``, ``delete``, ``gc``, ``reproduce``, ``refresh``.

Thin: each parses its options, calls :mod:`relayml.lifecycle`, and prints a Rich table (or
JSON with ``--json``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from relayml import tags as tag
from relayml.cli.app import app, console, err_console, parse_assignments, print_json, settings

if TYPE_CHECKING:
    from relayml.lifecycle import DeletePlan, Ranking


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@app.command()
def compare(
    targets: list[str] = typer.Argument(
        None,
        help="A STEP (default: the last step), or several run references.",
        show_default=False,
    ),
    metric: str = typer.Option(..., "--metric", "-m", help="The metric to rank on."),
    data: str = typer.Option(
        None, "--data", help="Only runs on this data version (REF, digest or digest prefix)."
    ),
    by_data: bool = typer.Option(False, "--by-data", help="One ranking per data version."),
    variant: str = typer.Option(None, "--variant", "-v", help="Only this variant."),
    lower: bool = typer.Option(
        None,
        "--lower-is-better/--higher-is-better",
        show_default=False,
        help="Ranking direction (default: lower for loss/error names).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the ranking(s) as JSON."),
) -> None:
    """Rank runs by a metric, only between runs trained on the same data version.

    Runs on different data versions are not comparable: compare refuses (exit 2) and names
    the versions, unless --data picks one or --by-data ranks each version apart.

    Examples:

      relay compare training --metric test_roc_auc --data load/transactions@latest

      relay compare training --metric test_roc_auc --by-data

      relay compare training/logreg@latest training/rf@latest --metric test_f1 --json
    """
    from relayml.errors import UsageError
    from relayml.lifecycle import compare as do_compare

    targets = list(targets or [])
    refs = [t for t in targets if "@" in t or _is_run_id(t)]
    if refs and len(refs) != len(targets):
        raise UsageError("give either one STEP or run references, not both")
    if not refs and len(targets) > 1:
        raise UsageError(f"give one STEP, got {len(targets)}: {', '.join(targets)}")
    result = do_compare(
        targets[0] if targets and not refs else None,
        metric=metric,
        refs=refs or None,
        data=data,
        by_data=by_data,
        lower_is_better=lower,
        variant=variant,
        project=settings(),
    )
    rankings = result if isinstance(result, list) else [result]
    if json_out:
        out = [r.to_dict() for r in rankings]
        print_json(out if by_data else out[0])
        return
    for r in rankings:
        console.print(_ranking_table(r))


def _is_run_id(text: str) -> bool:

    return tag.is_run_id(text)


def _ranking_table(ranking: Ranking) -> Any:
    from rich.table import Table

    direction = "lower is better" if ranking.lower_is_better else "higher is better"
    table = Table(
        title=f"{ranking.metric} on data {(ranking.data_version or 'none')[:12]} ({direction})",
        title_justify="left",
    )
    for col in ("#", "key", "upstream", "params", ranking.metric):
        table.add_column(col, justify="right" if col in ("#", ranking.metric) else "left")
    for i, r in enumerate(ranking.runs, 1):
        params = ", ".join(f"{k}={v}" for k, v in sorted(r.params.items()))
        ups = ", ".join(r.to_dict()["upstream"].values())
        table.add_row(str(i), str(r.key), ups, params, f"{r.metrics[ranking.metric]:.6g}")
    if ranking.missing:
        table.caption = f"without {ranking.metric}: " + ", ".join(
            str(r.key) for r in ranking.missing
        )
    return table


@app.command()
def promote(
    ref: str = typer.Argument(..., help="The training run whose bundle is promoted."),
    alias: str = typer.Option("champion", "--alias", "-a", help="The registry alias to set."),
    json_out: bool = typer.Option(False, "--json", help="Print the promotion as JSON."),
) -> None:
    """Register a training run's bundle under the project's name and set an alias.

    Examples:

      relay promote training/rf@latest

      relay promote training/logreg@20190210094501 --alias challenger
    """
    from relayml.lifecycle import promote as do_promote

    p = do_promote(ref, alias, project=settings())
    if json_out:
        print_json(p.to_dict())
        return
    before = f" (was v{p.previous})" if p.previous else ""
    console.print(
        f"[green]✓[/green] {p.run.key} registered as [bold]{p.name}[/bold] version {p.version}; "
        f"alias @{p.alias} now points at it{before}",
        highlight=False,
    )
    console.print(f"  serve it with: relay serve models:/{p.name}@{p.alias}", highlight=False)


@app.command()
def delete(
    refs: list[str] = typer.Argument(..., help="The run(s) to delete."),
    cascade: bool = typer.Option(
        False, "--cascade", help="Also delete every downstream run and their registered versions."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would go."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(
        False, "--force", help="Delete even when a registry alias points at the bundle."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Delete runs for good: MLflow rows, artifact folders, logged models and cache.

    A run that live downstream runs or registered model versions depend on is refused
    (exit 2) unless --cascade. Snapshots still used by another run are kept. Against a
    tracking server the runs are deleted through it and their artifact folders and logged
    models' files are removed through its artifact API; the rows stay marked deleted until
    the server's gc (relay server --purge-deleted-after 1d).

    Examples:

      relay delete training/rf@20190210094501

      relay delete load/transactions@2019-02-09 --cascade --dry-run

      relay delete processing/plain@latest --cascade --yes
    """
    from relayml.errors import UsageError
    from relayml.lifecycle import check_delete, plan_delete
    from relayml.lifecycle import delete as do_delete

    project = settings()
    plan = plan_delete(refs, cascade=cascade, project=project)
    check_delete(plan, cascade=cascade, force=force)
    if json_out and dry_run:
        print_json(plan.to_dict())
        return
    _print_plan(plan, dry_run)
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("not a terminal: add --yes to delete without confirmation")
        if not typer.confirm(f"Delete {len(plan.runs)} run(s) for good?", default=False):
            err_console.print("nothing deleted")
            raise typer.Exit(1)
    plan = do_delete(list(plan.requested), cascade=cascade, force=force, project=project)
    if json_out:
        print_json(plan.to_dict())
        return
    what = f"{len(plan.runs)} run(s)"
    if plan.versions:
        what += f", {len(plan.versions)} registered version(s)"
    if plan.snapshots:
        what += f", {len(plan.snapshots)} snapshot(s)"
    if plan.remote:
        console.print(
            f"[green]✓[/green] deleted {what} on the tracking server; freed "
            f"{_size(plan.freed or 0)} of its artifact store (the rows, marked deleted, go when "
            "the server's gc runs: relay server --purge-deleted-after)"
        )
    else:
        console.print(f"[green]✓[/green] deleted {what}; freed {_size(plan.bytes)}")


def _print_plan(plan: DeletePlan, dry_run: bool) -> None:
    from rich.table import Table

    table = Table(title="would delete" if dry_run else "to delete", title_justify="left")
    table.add_column("what")
    table.add_column("key / id", style="bold")
    table.add_column("note")
    for r in plan.runs:
        table.add_row("run", str(r.key), "" if r in plan.requested else "downstream")
    for v in plan.versions:
        note = f"aliases {', '.join(v['aliases'])}" if v["aliases"] else ""
        table.add_row("registered", f"{v['name']} v{v['version']}", note)
    for h in plan.snapshots:
        table.add_row("snapshot", h, "no other user")
    for h, users in plan.kept_snapshots.items():
        table.add_row("keeps snapshot", h, "used by " + ", ".join(users[:3]))
    table.caption = f"frees {_size(plan.bytes)}" + (
        " (files through the tracking server)" if plan.remote else ""
    )
    console.print(table)


@app.command()
def gc(
    older_than: str = typer.Option(
        None, "--older-than", help="Only what was deleted at least this long ago (30d, 12h)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be purged."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Purge runs deleted by other means (MLflow UI, client), withdrawn runs, orphan snapshots.

    Removes their artifact folders, logged models, cache and rows, and prints the bytes
    freed. Deleted runs still registered in the model registry are kept.

    Examples:

      relay gc

      relay gc --older-than 30d --dry-run
    """
    from relayml.lifecycle import gc as do_gc

    report = do_gc(older_than, dry_run=dry_run, project=settings())
    if json_out:
        print_json(report.to_dict())
        return
    from rich.table import Table

    table = Table(title="would purge" if dry_run else "purged", title_justify="left")
    for col in ("what", "key / id", "why"):
        table.add_column(col)
    for r in report.runs:
        table.add_row(r["experiment"] or "run", r["key"], r["why"])
    for h in report.snapshots:
        table.add_row("snapshot", h, "no live run uses it")
    for k in report.kept:
        table.add_row("[yellow]kept[/yellow]", k["key"], k["why"])
    verb = "would free" if dry_run else "freed"
    table.caption = f"{verb} {_size(report.bytes)}"
    if not (report.runs or report.snapshots or report.kept):
        console.print("nothing to purge")
        return
    console.print(table)


@app.command()
def reproduce(
    ref: str = typer.Argument(..., help="The run to reproduce (usually a training run)."),
    tolerance: float = typer.Option(1e-9, "--tolerance", help="Metric tolerance (rel. and abs.)."),
    refetch: bool = typer.Option(
        False, "--refetch", help="Also repeat the load as of its retrieval time; check the digest."
    ),
    allow_head: bool = typer.Option(
        False, "--allow-head", help="Use the current code when the recorded commit is gone."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Re-run a run's chain from what was recorded and check that the metrics agree.

    The recorded data snapshot is re-used; later steps run again at the recorded commit (in
    a temporary git worktree) with the recorded diff and params. Exit 0 when every metric
    agrees, 1 when some differ (they are named), 2 when the commit is gone.

    Examples:

      relay reproduce training/logreg@latest

      relay reproduce training/rf@2019-02-10 --refetch --tolerance 1e-6
    """
    from relayml.lifecycle import reproduce as do_reproduce

    result = do_reproduce(
        ref,
        tolerance=tolerance,
        refetch=refetch,
        allow_head=allow_head,
        echo=lambda line: err_console.print(line, highlight=False),
        project=settings(),
    )
    if json_out:
        print_json(result.to_dict())
    else:
        from rich.table import Table

        table = Table(title=f"reproducing {result.run.key}", title_justify="left")
        for col in ("step", "metric", "recorded", "reproduced", "agrees"):
            table.add_column(col, justify="right" if col in ("recorded", "reproduced") else "left")
        for c in result.checks:
            table.add_row(
                c.step,
                c.name,
                _num(c.recorded),
                _num(c.reproduced),
                "[green]yes[/green]" if c.agrees else "[red]NO[/red]",
            )
        console.print(table)
        if result.data is not None:
            d = result.data
            same = "[green]matches[/green]" if d["agrees"] else "[red]DIFFERS[/red]"
            console.print(
                f"data of {d['load']} fetched again as of {d['retrieval_time']}: digest {same} "
                f"(recorded {(d['recorded'] or '')[:12]}, now {(d['refetched'] or '')[:12]})",
                highlight=False,
            )
            if not d["agrees"]:
                console.print("  rows were changed or deleted in the source since the load")
        for note in result.notes:
            err_console.print(f"[yellow]Note:[/yellow] {note}", highlight=False)
        for step, r in result.reproduced.items():
            console.print(f"  reproduced {step}: {r.key}", highlight=False)
    if not result.ok:
        err_console.print(f"[red]Not reproduced:[/red] {', '.join(result.differing)}")
        raise typer.Exit(1)
    if not json_out:
        console.print("[green]✓[/green] reproduced: every metric agrees")


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.10g}"


@app.command()
def refresh(
    alias: str = typer.Option("champion", "--alias", "-a", help="The champion's registry alias."),
    candidates: str = typer.Option(
        None, "--candidates", help="Comma-separated variants of the last step (default: all)."
    ),
    metric: str = typer.Option(
        None, "--metric", "-m", help="The metric to compare (default: the last refresh's)."
    ),
    margin: float = typer.Option(
        0.0, "--margin", help="How much a challenger must beat the champion by."
    ),
    lower: bool = typer.Option(False, "--lower-is-better", help="Smaller metric is better."),
    param: list[str] = typer.Option(
        None, "--param", "-P", help="name=value for the candidates (where declared)."
    ),
    max_drift: float = typer.Option(
        None, "--max-drift", help="Promote nothing when a feature's PSI exceeds this (e.g. 0.25)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Retrain on fresh data; the best model on the same fresh rows gets the alias.

    A new load now (a load failing its checks stops here); the champion's chain (variants
    and params) and every candidate trained on the same new processing run. The served
    model, the retrained champion and the challengers are scored on the same fresh test
    rows (those the served model's data did not hold): a challenger beating the incumbent
    by more than --margin is promoted, else a retrained champion at least as good as the
    served model replaces it, else the served model stays. Without a champion, the best
    becomes it. The diff between the served model's data and the new data is reported;
    --max-drift refuses any promotion when a feature drifted beyond it. The decision is
    recorded as a run of <project>/refresh. Overlapping refreshes are safe: the later one
    stops (exit 1) before doing anything.

    Examples:

      relay refresh --metric test_roc_auc

      relay refresh --candidates logreg,rf --metric test_roc_auc --margin 0.005 -P cv=3

      relay refresh --max-drift 0.25
    """
    from relayml.lifecycle import refresh as do_refresh

    names = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
    report = do_refresh(
        alias=alias,
        candidates=names,
        metric=metric,
        margin=margin,
        lower_is_better=lower,
        params=parse_assignments(param),
        project=settings(),
        echo=lambda line: err_console.print(line, highlight=False),
        max_drift=max_drift,
    )
    if json_out:
        print_json(report.to_dict())
        return
    from rich.table import Table

    table = Table(
        title=f"refresh of @{alias} on data {(report.data_version or '')[:12]}",
        title_justify="left",
    )
    for col in ("role", "key", "params", report.metric, "vs champion", ""):
        table.add_column(col, justify="right" if col in (report.metric, "vs champion") else "left")
    for e in report.entries:
        params = ", ".join(f"{k}={v}" for k, v in sorted(e["params"].items()))
        table.add_row(
            e["role"],
            e["key"],
            params,
            _num(e["value"]),
            "" if e["delta"] is None else f"{e['delta']:+.4g}",
            "[green]promoted[/green]" if e["promoted"] else "",
        )
    console.print(table)
    if report.promoted:
        p = report.promoted
        console.print(
            f"[green]✓[/green] {report.decision}: {p.run.key} is {p.name} v{p.version} @{alias}",
            highlight=False,
        )
    elif report.decision == "held: drift":
        d = report.max_drift or {}
        console.print(
            f"[yellow]held[/yellow]: kept v{report.previous}; {d.get('column')} drifted "
            f"(PSI {d.get('psi', 0):.3f} > --max-drift {d.get('limit')})",
            highlight=False,
        )
    else:
        console.print(
            f"kept the served model (v{report.previous}): neither the retrained champion nor a "
            f"challenger beat it (margin {report.margin:g})",
            highlight=False,
        )
    s = report.served
    if "value" in s:
        console.print(
            f"  served v{s['version']} on {s['rows']:,} fresh rows: {report.metric} = "
            f"{s['value']:.6g}",
            highlight=False,
        )
    elif s.get("note"):
        console.print(f"  served model not scored: {s['note']}", highlight=False)
    if report.data_diff and "rows" in report.data_diff:
        d = report.data_diff
        console.print(
            f"  data since the served model: {d['added']:,} added, {d['removed']:,} removed, "
            f"{d['changed'] if d['changed'] is not None else '?'} changed",
            highlight=False,
        )
    if report.max_drift:
        m = report.max_drift
        console.print(f"  largest drift: {m['column']} PSI {m['psi']:.3f}", highlight=False)
    console.print(f"  decision recorded as run {report.record}", highlight=False)
