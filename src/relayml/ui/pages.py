"""The pages of ``relay ui``: each function reads through :class:`Queries` and renders HTML.

Pages render on the server (Jinja2 templates shipped in the package, inline SVG); the only
script is ``static/relay.js`` (hover and filter). Links to MLflow's own pages start with
``mlflow_base``: empty behind ``relay ui`` (same origin), the server's URL otherwise.

Example:
    >>> html = Pages(Queries(settings)).project()  # doctest: +SKIP
    >>> "<svg" in Pages(Queries(settings)).lineage("training/logreg@latest")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from relayml import tags as tag
from relayml.runs import Run
from relayml.ui.graph import Graph, data_graph, headline, run_graph
from relayml.ui.queries import Queries

__all__ = ["Pages"]

_ENV = Environment(
    loader=PackageLoader("relayml.ui", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _when(ms: float | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


_ENV.filters["fmt"] = _fmt
_ENV.filters["when"] = _when


class Pages:
    """Renders every page of one project.

    Attributes:
        q: the project's queries.
        mlflow_base: the prefix of links to MLflow's UI (``""``: same origin).
    """

    def __init__(self, q: Queries, *, mlflow_base: str = "") -> None:
        self.q = q
        self.mlflow_base = mlflow_base.rstrip("/")

    def _render(self, template: str, **context: Any) -> str:
        return _ENV.get_template(template).render(
            project=self.q.settings.project, mlflow=self.mlflow_base, **context
        )

    def _mlflow_run(self, run: Run) -> str:
        exp = run.mlflow.info.experiment_id
        return f"{self.mlflow_base}/#/experiments/{exp}/runs/{run.run_id}"

    # -- pages ----------------------------------------------------------------------------

    def project(self) -> str:
        """The project page: steps, variants and their newest runs, aliases, recent chains."""
        aliases, versions, metric = self.q.registry()
        variants = {step: self.q.variants(step) for step in self.q.steps()}
        newest = self.q.newest(variants)
        steps = []
        for step, names in variants.items():
            rows = []
            for variant in names:
                run = newest[step, variant]
                top = headline(run.metrics, metric) if run is not None else None
                rows.append({"variant": variant, "run": run, "top": top})
            steps.append({"name": step, "rows": rows})
        by_version = {v["version"]: v for v in versions}
        alias_rows = []
        for alias, version in sorted(aliases.items()):
            v = by_version.get(version, {})
            run = self.q.by_id(v["run_id"]) if v.get("run_id") else None
            alias_rows.append({"alias": alias, "version": version, "run": run})
        chains = self.q.chains(10)
        for older, newer in zip(chains[1:], chains, strict=False):
            newer["previous"] = older["steps"][-1][1] if older["steps"] else None
        return self._render(
            "project.html",
            title=self.q.settings.project,
            steps=steps,
            aliases=alias_rows,
            versions=versions[:10],
            chains=chains,
        )

    def run(self, ref: str) -> str:
        """The run page: what ``relay show`` prints, with links."""
        run = self.q.resolve(ref)
        artifacts = self.q.artifacts(run)
        paths = [p for p, _ in artifacts]
        consumers, total = self.q.consumers([run], 50)[run.run_id]
        aliases, versions, _ = self.q.registry()
        registered = [
            {
                "version": v["version"],
                "aliases": sorted(a for a, n in aliases.items() if n == v["version"]),
            }
            for v in versions
            if v["run_id"] == run.run_id
        ]
        rows = self.q.snapshot_rows(run.data_version) if run.data_version else None
        return self._render(
            "run.html",
            title=str(run.key),
            run=run,
            mlflow_run=self._mlflow_run(run),
            upstream=run.upstream,
            missing=sorted(set(run.upstream_ids) - set(run.upstream)),
            downstream=consumers,
            more=total - len(consumers),
            artifacts=artifacts,
            diff=self.q.uncommitted_diff(run, paths),
            registered=registered,
            rows=rows,
            reproduce=f"relay reproduce {run.key}",
            error=run.tags.get(tag.ERROR),
        )

    def lineage(self, ref: str) -> str:
        """The lineage page of a run: its neighbourhood as a layered graph."""
        run = self.q.resolve(ref)
        graph = run_graph(self.q, run)
        return self._graph_page(graph, f"lineage of {run.key}", run=run)

    def data(self, digest: str) -> str:
        """The lineage page of a data version: the runs on it, step by step."""
        graph = data_graph(self.q, digest)
        loads = [
            {"run": r, "mlflow": self._mlflow_run(r)}
            for r in graph.runs.values()
            if not r.upstream_ids and r.data_version == digest
        ]
        rows = self.q.snapshot_rows(digest)
        return self._graph_page(
            graph, f"data version {digest[:16]}", digest=digest, loads=loads, rows=rows
        )

    def _graph_page(self, graph: Graph, title: str, **context: Any) -> str:
        columns = ["data", *graph.steps, "registry"]
        return self._render(
            "lineage.html",
            title=title,
            graph=graph,
            placed=graph.placed,
            columns=columns,
            reused=graph.reused,
            **context,
        )

    def compare(self, a: str, b: str) -> str:
        """Two runs, or the two chains ending in them, side by side; differences first."""
        run_a, run_b = self.q.resolve(a), self.q.resolve(b)
        chain_a, chain_b = _chain(run_a), _chain(run_b)
        steps = [s for s in self.q.steps() if s in chain_a or s in chain_b]
        sections = [_step_section(self.q, s, chain_a.get(s), chain_b.get(s)) for s in steps]
        commit_a = run_a.tags.get(tag.GIT_COMMIT)
        commit_b = run_b.tags.get(tag.GIT_COMMIT)
        code = None
        if commit_a and commit_b and commit_a != commit_b:
            code = self.q.code_diff(commit_a, commit_b)
        metrics = _metric_rows(run_a.metrics, run_b.metrics)
        return self._render(
            "compare.html",
            title=f"compare {run_a.key} · {run_b.key}",
            a=run_a,
            b=run_b,
            sections=sections,
            metrics=metrics,
            commits=(commit_a, commit_b),
            code=code,
            module=self.q.settings.module,
        )

    def history(self, step: str, variant: str, metric: str | None = None) -> str:
        """A variant's metric across data versions over time, promotions and refreshes marked."""
        runs = self.q.history(step, variant)
        _, versions, preferred = self.q.registry()
        metric = metric or next((h[0] for r in runs if (h := headline(r.metrics, preferred))), None)
        promoted = {v["run_id"]: v["version"] for v in versions}
        decisions = [
            d for d in self.q.refresh_decisions() if d.get(tag.REFRESH_METRIC, metric) == metric
        ]
        plot = _plot(runs, metric, promoted, decisions) if metric else None
        names = sorted({m for r in runs for m in r.metrics})
        return self._render(
            "history.html",
            title=f"history of {step}/{variant}",
            step=step,
            variant=variant,
            metric=metric,
            metrics=names,
            plot=plot,
            runs=runs[:50],
        )

    def pick(self) -> str:
        """The compare page before two references are given."""
        return self._render("pick.html", title="compare two runs or chains")

    def error(self, message: str) -> str:
        """The page shown for a reference that names nothing."""
        return self._render("error.html", title="not found", message=message)


# -- compare helpers ----------------------------------------------------------------------


def _chain(run: Run) -> dict[str, Run]:
    out = {run.step: run}
    frontier = [run]
    while frontier:
        nxt = []
        for r in frontier:
            for step, up in r.upstream.items():
                if step not in out:
                    out[step] = up
                    nxt.append(up)
        frontier = nxt
    return out


def _pairs(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        {"name": k, "a": a.get(k), "b": b.get(k), "same": a.get(k) == b.get(k)}
        for k in sorted(set(a) | set(b))
    ]
    return sorted(rows, key=lambda r: r["same"])


def _step_section(q: Queries, step: str, a: Run | None, b: Run | None) -> dict[str, Any]:
    def facts(r: Run | None) -> dict[str, Any]:
        if r is None:
            return {}
        t = r.tags
        out = {
            "key": str(r.key),
            "variant": r.variant,
            "status": r.status,
            "commit": t.get(tag.GIT_COMMIT),
            "uncommitted changes": t.get(tag.GIT_DIRTY),
            "code fingerprint": t.get(tag.CODE),
            "run fingerprint": t.get(tag.FINGERPRINT),
            "data version": r.data_version,
        }
        if not r.upstream_ids and r.data_version:
            out["rows"] = q.snapshot_rows(r.data_version)
        return out

    same_run = a is not None and b is not None and a.run_id == b.run_id
    return {
        "step": step,
        "a": a,
        "b": b,
        "same_run": same_run,
        "facts": _pairs(facts(a), facts(b)),
        "params": _pairs(a.params if a else {}, b.params if b else {}),
        "metrics": _metric_rows(a.metrics if a else {}, b.metrics if b else {}),
    }


def _metric_rows(a: dict[str, float], b: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        delta = vb - va if va is not None and vb is not None else None
        rows.append({"name": k, "a": va, "b": vb, "delta": delta, "same": delta == 0})
    return sorted(rows, key=lambda r: (r["same"], r["name"]))


# -- history plot --------------------------------------------------------------------------

PLOT_W, PLOT_H, PAD = 860, 320, 50
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _plot(
    runs: list[Run], metric: str, promoted: dict[str, int], decisions: list[dict[str, str]]
) -> dict[str, Any] | None:
    points = [(r, r.metrics[metric]) for r in runs if metric in r.metrics]
    points = [(r, v) for r, v in points if math.isfinite(v)]
    if not points:
        return None
    t = [r.started.timestamp() for r, _ in points]
    v = [val for _, val in points]
    t0, t1 = min(t), max(t)
    v0, v1 = min(v), max(v)
    if t1 == t0:
        t0, t1 = t0 - 1, t1 + 1
    if v1 == v0:
        v0, v1 = v0 - 0.5, v1 + 0.5

    def x(ts: float) -> float:
        return PAD + (ts - t0) / (t1 - t0) * (PLOT_W - 2 * PAD)

    colours: dict[str, str] = {}
    dots = []
    for (r, val), ts in sorted(zip(points, t, strict=True), key=lambda p: p[1]):
        version = r.data_version or "none"
        colour = colours.setdefault(version, PALETTE[len(colours) % len(PALETTE)])
        dots.append(
            {
                "x": x(ts),
                "y": _y(val, v0, v1),
                "run": r,
                "value": val,
                "colour": colour,
                "version": version,
                "promoted": promoted.get(r.run_id),
            }
        )
    marks = []
    for d in decisions:
        ts = int(d["started"]) / 1000
        if t0 <= ts <= t1:
            marks.append(
                {
                    "x": x(ts),
                    "decision": d.get(tag.REFRESH_DECISION, ""),
                    "winner": d.get(tag.REFRESH_WINNER, ""),
                }
            )
    ticks = [
        {"y": _y(v0 + (v1 - v0) * i / 4, v0, v1), "label": f"{v0 + (v1 - v0) * i / 4:.4g}"}
        for i in range(5)
    ]
    times = [
        {"x": x(t0 + (t1 - t0) * i / 4), "label": _when((t0 + (t1 - t0) * i / 4) * 1000)[:10]}
        for i in range(5)
    ]
    return {
        "w": PLOT_W,
        "h": PLOT_H,
        "pad": PAD,
        "dots": dots,
        "marks": marks,
        "ticks": ticks,
        "times": times,
        "legend": list(colours.items())[:12],
    }


def _y(val: float, v0: float, v1: float) -> float:
    return PLOT_H - PAD - (val - v0) / (v1 - v0) * (PLOT_H - 2 * PAD)
