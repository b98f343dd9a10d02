"""Core commands: ``init``, ``run``, ``runs``, ``show``, ``steps``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from relayml import tags as tag
from relayml.cli.app import app, console, err_console, parse_assignments, print_json, settings

if TYPE_CHECKING:
    from relayml.runs import Run, RunList

STATUS_STYLE = {
    "FINISHED": "green",
    "FAILED": "red",
    "KILLED": "yellow",
    "RUNNING": "cyan",
    "STALE": "magenta",
}


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder of the new project."),
    name: str = typer.Option(None, "--name", help="Project name (default: the folder's name)."),
) -> None:
    """Create a minimal working project (relay.toml and a steps module).

    Example: relay init myproject && cd myproject && relay run load synthetic
    """
    from relayml.scaffold import init_project

    created = init_project(directory, name=name)
    for path in created:
        console.print(f"created {path}")
    console.print(
        f"\nNext: cd {directory} && relay run load synthetic && relay run processing scaled "
        "&& relay run training logreg && relay runs"
    )


@app.command("run")
def run_command(
    step: str = typer.Argument(..., help="The step to run, e.g. processing."),
    variant: str = typer.Argument(..., help="The variant of the step, e.g. plain."),
    param: list[str] = typer.Option(None, "--param", "-P", help="name=value (repeatable)."),
    from_: list[str] = typer.Option(
        None, "--from", help="Upstream run reference (default: @latest of each upstream step)."
    ),
    as_of: str = typer.Option(
        None, "--as-of", help="Repeat a load for an earlier retrieval time (ISO date/time)."
    ),
    require_clean: bool = typer.Option(
        False, "--require-clean", help="Refuse to run with uncommitted changes."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the finished run as JSON."),
    executor: str = typer.Option(
        None, "--executor", help="dask://HOST:PORT: run ctx.parallel() work on a Dask cluster."
    ),
    no_checks: bool = typer.Option(
        False, "--no-checks", help="Emergencies: skip a load's data checks (recorded on the run)."
    ),
) -> None:
    """Run one variant of a step inside an MLflow run.

    Examples:

      relay run load transactions

      relay run load transactions --as-of 2019-02-09T00:00:00

      relay run training logreg -P C=10 --from processing/plain@2019-02-09
    """
    from relayml.runner import execute, prepare

    if executor:
        import os

        os.environ["RELAY_EXECUTOR"] = executor  # read into the project's settings
    req = prepare(
        step,
        variant,
        parse_assignments(param),
        upstream=from_ or None,
        as_of=as_of,
        require_clean=require_clean,
        checks=not no_checks,
        project=settings(),
    )
    for up_step, up in req.upstream.items():
        err_console.print(f"using {up_step}: [bold]{up.key}[/bold]", highlight=False)
    if req.code.dirty:
        err_console.print(
            "[yellow]Warning:[/yellow] uncommitted changes; the diff is saved as "
            "code/uncommitted.diff (use --require-clean to refuse)"
        )
    started = time.monotonic()
    with err_console.status(f"running {step}/{variant}", spinner="dots"):
        done = execute(req, show_progress=err_console.is_terminal)
    if json_out:
        print_json(done.to_dict())
        return
    elapsed = time.monotonic() - started
    console.print(
        f"[green]✓[/green] [bold]{done.key}[/bold] FINISHED in {elapsed:.1f}s", highlight=False
    )
    if done.data_version:
        console.print(f"  data version {done.data_version}", highlight=False)
    if done.rows is not None:
        checks = done.tags.get(tag.CHECKS, "")
        console.print(f"  {done.rows:,} rows, checks {checks}", highlight=False)
    for name, value in sorted(done.metrics.items()):
        console.print(f"  {name} = {value:.6g}", highlight=False)


@app.command("runs")
def runs_command(
    step: str = typer.Argument(None, help="Only runs of this step."),
    variant: str = typer.Option(None, "--variant", "-v", help="Only this variant."),
    on: str = typer.Option(None, "--on", help="Only runs of this day (YYYY-MM-DD)."),
    since: str = typer.Option(None, "--since", help="Runs from this day on (YYYY-MM-DD)."),
    until: str = typer.Option(None, "--until", help="Runs up to this day (YYYY-MM-DD)."),
    param: list[str] = typer.Option(None, "--param", "-P", help="name=value filter."),
    status: str = typer.Option(None, "--status", help="FINISHED, FAILED, KILLED, RUNNING, STALE."),
    data: str = typer.Option(None, "--data", help="Only runs on this data version (REF|DIGEST)."),
    limit: int = typer.Option(50, "--limit", "-n", help="At most this many runs."),
    metric: list[str] = typer.Option(
        None, "--metric", "-m", help="Metric columns to show (default: up to four)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array for scripts."),
) -> None:
    """List runs, newest first.

    Examples:

      relay runs

      relay runs training --variant logreg --param C=10

      relay runs processing --since 2019-02-01 --until 2019-02-09 --json
    """
    from relayml.runs import runs

    found = runs(
        step,
        variant=variant,
        on=on,
        since=since,
        until=until,
        params=parse_assignments(param, "--param"),
        status=status,
        data=data,
        limit=limit,
        project=settings(),
    )
    if json_out:
        print_json([r.to_dict() for r in found])
        return
    console.print(runs_table(found, title=step or "all steps", metrics=metric or None))


def _main_metrics(found: RunList, count: int = 4) -> list[str]:
    """Up to ``count`` metric names: AUC-like first, then test metrics, then the rest."""
    names = {m for r in found for m in r.metrics}
    return sorted(names, key=lambda m: ("auc" not in m, not m.startswith("test_"), m))[:count]


def runs_table(found: RunList, *, title: str, metrics: list[str] | None = None) -> Any:
    """A Rich table of runs: key, status, upstream, data version, main metrics."""
    from rich.table import Table

    metrics = metrics or _main_metrics(found)
    table = Table(title=f"runs of {title} (newest first)", title_justify="left")
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("status")
    table.add_column("upstream")
    table.add_column("data")
    with_rows = any(r.rows is not None for r in found)
    if with_rows:
        table.add_column("rows", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    same = _unchanged_data(found)
    for r in found:
        ups = ", ".join(r.to_dict()["upstream"].values())
        data = (r.data_version or "")[:12] + (" (unchanged)" if r.run_id in same else "")
        st = r.status
        table.add_row(
            str(r.key),
            f"[{STATUS_STYLE.get(st, 'white')}]{st}[/]",
            ups,
            data,
            *([f"{r.rows:,}" if r.rows is not None else ""] if with_rows else []),
            *(f"{r.metrics[m]:.4g}" if m in r.metrics else "" for m in metrics),
        )
    if not found:
        table.caption = "no runs match"
    return table


def _unchanged_data(found: RunList) -> set[str]:
    """Ids of load runs whose data version equals the previous load of the same variant."""
    previous: dict[str, str | None] = {}
    same = set()
    for r in reversed(found):  # oldest first
        if r.upstream_ids or not r.data_version:
            continue
        name = f"{r.step}/{r.variant}"
        if previous.get(name) == r.data_version:
            same.add(r.run_id)
        previous[name] = r.data_version
    return same


@app.command()
def show(
    ref: str = typer.Argument(..., help="A run reference: key, key@date, @latest or run id."),
    json_out: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """Show everything about one run: params, metrics, tags, lineage, artifacts.

    Examples:

      relay show training/logreg@latest

      relay show processing/plain@2019-02-09 --json
    """
    from relayml.runs import get

    run = get(ref, project=settings())
    info = describe(run)
    if json_out:
        print_json(info)
        return
    from rich.table import Table

    console.print(
        f"[bold]{info['key']}[/bold]  {info['status']}  run id {info['run_id']}", highlight=False
    )
    console.print(f"  experiment {run.settings.experiment(run.step)}  started {info['started']}")
    if info["data_version"]:
        console.print(f"  data version {info['data_version']} ({', '.join(run.data_keys)})")
    if info.get("error"):
        console.print(f"  [red]error[/red] {info['error']}", highlight=False)
    for title, values in (("params", info["params"]), ("metrics", info["metrics"])):
        if values:
            table = Table(title=title, title_justify="left", show_header=False)
            for k, v in sorted(values.items()):
                table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
            console.print(table)
    for title in ("upstream", "downstream"):
        items = info[title]
        console.print(f"[bold]{title}[/bold]: " + (", ".join(items) if items else "none"))
    for name, summary in info.get("data_summary", {}).items():
        console.print(summary_table(name, summary))
    if info.get("checks"):
        console.print(f"[bold]checks[/bold]: {info['checks']}", highlight=False)
    if info.get("checks_report") and info.get("checks") == "failed":
        console.print(info["checks_report"], highlight=False, markup=False)
    console.print("[bold]outputs[/bold]: " + (", ".join(info["outputs"]) or "none"))
    if info["model_uri"]:
        console.print(f"[bold]model[/bold]: {info['model_uri']}")
    for v in info.get("registered", []):
        aliases = f" aliases {', '.join(v['aliases'])}" if v["aliases"] else ""
        console.print(f"  registered {v['name']} version {v['version']}{aliases}")
    console.print("[bold]artifacts[/bold]:")
    for path in info["artifacts"]:
        console.print(f"  {path}", highlight=False)
    relay_tags = {k: v for k, v in info["tags"].items() if k.startswith(tag.PREFIX)}
    table = Table(title="tags", title_justify="left", show_header=False)
    for k, v in sorted(relay_tags.items()):
        table.add_row(k, v if len(v) < 120 else v[:117] + "...")
    console.print(table)


def describe(run: Run) -> dict[str, Any]:
    """Everything ``relay show`` prints, as a JSON-ready dict."""
    info = run.to_dict()
    info["upstream"] = [str(r.key) for r in run.upstream.values()]
    info["downstream"] = [str(r.key) for r in run.downstream]
    info["tags"] = run.tags
    info["outputs"] = list(run.outputs)
    info["artifacts"] = run.artifacts
    info["model_uri"] = run.model_uri
    info["data_keys"] = run.data_keys
    info["error"] = run.tags.get(tag.ERROR)
    info["registered"] = registered_versions(run)
    if not run.upstream_ids:  # a load run: what its data holds, and its checks
        info["data_summary"] = run.data_summary
        info["checks"] = run.tags.get(tag.CHECKS)
        if "checks/report.txt" in info["artifacts"]:
            info["checks_report"] = _artifact_text(run, "checks/report.txt")
    return info


def _artifact_text(run: Run, path: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="relay-show-") as tmp:
        return run.store.download(run.run_id, path, Path(tmp)).read_text()


def summary_table(name: str, summary: dict[str, Any]) -> Any:
    """A Rich table of a snapshot's summary: one row per column."""
    from rich.table import Table

    from relayml.data_summary import format_summary_rows

    size = f", {summary['bytes']:,} bytes" if "bytes" in summary else ""
    table = Table(title=f"data {name}: {summary.get('rows', 0):,} rows{size}", title_justify="left")
    for col in ("column", "type", "nulls", "min", "max", "mean", "std", "median", "distinct"):
        table.add_column(col, justify="left" if col in ("column", "type") else "right")
    for row in format_summary_rows(summary):
        table.add_row(*(_cell(v) for v in row.values()))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def registered_versions(run: Run) -> list[dict[str, Any]]:
    """Registered model versions created from the run's bundle, with their aliases."""
    if not run.model_uri:
        return []
    return run.store.model_versions(run.run_id)


@app.command()
def steps() -> None:
    """List the project's steps, their upstream steps, variants and params.

    Example: relay steps
    """
    from rich.table import Table

    from relayml.runner import pipeline_of

    pipeline = pipeline_of(settings())
    table = Table(title="steps", title_justify="left")
    for col in ("step", "upstream", "variant", "params", "doc"):
        table.add_column(col)
    for name in pipeline.order:
        s = pipeline.steps[name]
        for vname, v in s.variants.items():
            params = ", ".join(p.describe() for p in v.params.values())
            table.add_row(name, ", ".join(s.upstream) or "-", vname, params, v.doc)
    console.print(table)
