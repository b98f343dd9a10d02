"""Coherent chains: resolve the newest coherent path, run only what is missing, show lineage.

A chain request names one variant per step, e.g.
``load=transactions@2019-02-09 processing=plain training=logreg`` with ``training.C=10``.
A path is *coherent* when every run in it is FINISHED and its recorded upstream is exactly
the run chosen for the step before.

**The reuse rule.** A run is reused only when its step, variant, every parameter (defaults
included, canonically encoded), its upstream run ids and its code fingerprint (exactly the
code that runs, :mod:`relayml.fingerprint`; not the git commit) equal the request's. All
of these are digested into the tag ``relay.fingerprint`` that every run carries, so finding a
reusable run is one indexed search
(``tags.relay.fingerprint = F AND attributes.status = 'FINISHED'``, newest first). A load
step (a step without upstream) given without a date or key is a fresh retrieval and is never
reused; given with one (``transactions@2019-02-09``, ``transactions@latest``, a
full key) that run is used as it is.

Missing steps are claimed through the tracking store before they run (:mod:`relayml.claims`),
so two processes asking for the same missing step compute it once. Each resolved chain is
logged as a run of the experiment ``<project>/chains`` (tags ``relay.chain.<step>``, the data
version, the final metrics and model URI), so MLflow's UI shows coherent paths side by side.

This module does not talk to MLflow directly: it goes through :mod:`relayml.store`,
:mod:`relayml.runs` and :mod:`relayml.runner`. Parsing a request is :mod:`relayml.chain_links`;
the result and its record are :mod:`relayml.chain_result`.

Example:
    >>> c = relay.chain("load=transactions@latest", "processing=plain", "training=logreg",
    ...                 params={"training.C": 10}, dry_run=True)
    >>> [(p.step, p.status) for p in c.steps]
    [('load', 'reused'), ('processing', 'reused'), ('training', 'new')]
    >>> c.steps[-1].reason
    'no finished run matches'
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from relayml import tags as tag
from relayml.chain_links import Link, parse_links, validate
from relayml.chain_result import FAILED, NEW, REUSED, Chain, Planned, record, records
from relayml.claims import claim, finished_like
from relayml.codeinfo import CodeState, code_state
from relayml.config import Settings
from relayml.errors import ChainFailed, StepFailed, UsageError
from relayml.fingerprint import changes
from relayml.lineage import Lineage, run_lineage
from relayml.pipeline import Pipeline
from relayml.request import Request, logged_params, pipeline_of
from relayml.runner import execute
from relayml.runs import Project, Run, get, open_project
from relayml.runstart import CODE_PARTS
from relayml.store import Store, get_store, param_value, quote

__all__ = [
    "Chain",
    "ChainFailed",
    "Lineage",
    "Link",
    "Planned",
    "chain",
    "lineage",
    "parse_links",
    "records",
]

CANDIDATES = 5  # FINISHED runs with the same fingerprint tried per step (newest first)
EXPLAINED = 5  # newest runs of a step/variant compared in --explain

OLD_SCHEME = "recorded with the old code fingerprint (git commit + diff): not reused"
OLD_SCHEME_NOTE = (
    "runs recorded before relay keyed code by what runs (variant, modules, versions; not the "
    "git commit) are not reused: each step reruns once"
)


@dataclass
class _Resolver:
    settings: Settings
    store: Store
    pipeline: Pipeline
    code: CodeState | None  # read by git_state() when a step runs
    links: list[Link]
    bound: dict[str, dict[str, Any]]
    forced: set[str]
    pinned: dict[str, Run]
    checks: bool = True
    notes: set[str] = field(default_factory=set)

    def request(self, link: Link, chosen: Mapping[str, Run]) -> Request:

        var = self.pipeline.variant(link.step, link.variant)
        ups = {u: chosen[u] for u in self.pipeline.get(link.step).upstream}
        return Request(
            self.settings,
            self.pipeline,
            var,
            self.bound[link.step],
            ups,
            self.code,
            None,
            self.checks,
        )

    def resolve(
        self, i: int, chosen: dict[str, Run], new: Mapping[str, str] | None = None
    ) -> list[Planned]:
        """The best plan for links[i:], given the runs chosen before (recursive, newest first).

        ``new`` maps each step already planned as new to the reason its downstream steps are
        new too (``upstream load is new``, ``--force processing``); a step that consumes none
        of them (another load step) is resolved on its own. The best plan reuses the most
        steps; among equals the newest candidates win.
        """
        new = new or {}
        if i == len(self.links):
            return []
        link = self.links[i]
        ups = self.pipeline.get(link.step).upstream
        if link.step in self.forced:
            return self.new_at(i, chosen, new, f"--force {link.step}", f"--force {link.step}")
        stale = [new[u] for u in ups if u in new]
        if stale:
            after = stale[0] if stale[0].startswith("--force") else None
            return self.new_at(i, chosen, new, stale[0], after)
        if not ups:
            if link.ref is None:
                why = "fresh retrieval (give @DATE or @latest to reuse one)"
                return self.new_at(i, chosen, new, why)
            run = self.pinned[link.step]
            rest = self.resolve(i + 1, {**chosen, link.step: run}, new)
            return [Planned(link.step, link.variant, REUSED, run, f"given as {link}"), *rest]

        req = self.request(link, chosen)
        candidates = finished_like(self.store, req, limit=CANDIDATES)
        if not candidates:
            self.note_old_runs(req)
            return self.new_at(i, chosen, new, "no finished run matches")
        best: list[Planned] | None = None
        for n, cand in enumerate(candidates):
            why = "same fingerprint" + (f" ({n} newer skipped)" if n else "")
            rest = self.resolve(i + 1, {**chosen, link.step: cand}, new)
            plan = [Planned(link.step, link.variant, REUSED, cand, why), *rest]
            if all(p.status == REUSED for p in rest):
                return plan
            if best is None or _reused(plan) > _reused(best):
                best = plan
        assert best is not None
        return best

    def new_at(
        self,
        i: int,
        chosen: dict[str, Run],
        new: Mapping[str, str],
        reason: str,
        after: str | None = None,
    ) -> list[Planned]:
        """Links[i] is new for ``reason``; its downstream steps are new for ``after``."""
        link = self.links[i]
        after = after or f"upstream {link.step} is new"
        rest = self.resolve(i + 1, chosen, {**new, link.step: after})
        return [Planned(link.step, link.variant, NEW, None, reason), *rest]

    def note_old_runs(self, req: Request) -> None:
        """Note (once per chain) that the step's matching runs have the old code fingerprint."""
        flt = (
            f"tags.`relay.variant` = {quote(req.variant.name)} AND "
            f"tags.`relay.params` = {quote(req.params_digest)} AND attributes.status = 'FINISHED'"
        )
        found = self.store.search([req.step], flt, limit=1)
        if found and tag.CODE_SCHEME not in found[0].data.tags:
            self.notes.add(OLD_SCHEME_NOTE)

    def git_state(self) -> CodeState:
        """The project's git state, read once and only when a step runs (it is not in keys)."""
        if self.code is None:
            self.code = code_state(self.settings.root)
        return self.code

    def explain(self, plan: list[Planned]) -> None:
        """Fill ``passed_over`` with the newest runs of each step/variant that were not used."""
        chosen = {p.step: p.run for p in plan if p.run is not None}
        for p, link in zip(plan, self.links, strict=True):
            ups = self.pipeline.get(link.step).upstream
            if not ups:
                continue
            flt = f"tags.`relay.variant` = {quote(link.variant)}"
            recent = [
                Run(self.settings, e)
                for e in self.store.search([link.step], flt, limit=EXPLAINED)
                if tag.KEY in e.data.tags
            ]
            unknown = [u for u in ups if u not in chosen]
            req = None if unknown else self.request(link, chosen)
            for r in recent:
                if p.run is not None and (r.run_id == p.run.run_id or r.started < p.run.started):
                    continue
                why = _difference(r, req, link.step in self.forced, unknown)
                p.passed_over.append((str(r.key), "\n".join(why)))


def _reused(plan: list[Planned]) -> int:
    return sum(p.status == REUSED for p in plan)


def _pinned(settings: Settings, link: Link) -> Run:
    assert link.ref is not None
    run = get(link.ref, project=settings)
    if run.step != link.step:
        raise UsageError(f"{link}: run {run.key} is of step {run.step!r}, not {link.step!r}")
    if run.status != "FINISHED":
        raise UsageError(f"{link}: run {run.key} is {run.status}, not FINISHED; pick another")
    return run


def _difference(run: Run, req: Request | None, forced: bool, unknown: list[str]) -> list[str]:
    """Which parts of the reuse rule a run fails, one line each."""
    if run.status != "FINISHED":
        return [f"status {run.status}"]
    if forced:
        return ["--force"]
    if req is None:
        return [f"upstream {step} is new" for step in unknown]
    reasons = []
    tags = run.tags
    if tags.get(tag.PARAMS) != req.params_digest:
        wanted = {k: _as_param(v) for k, v in logged_params(req).items()}
        have = run.params
        reasons += [
            f"param {k}: {have.get(k, '(unset)')} → {wanted.get(k, '(unset)')}"
            for k in sorted(set(wanted) | set(have))
            if wanted.get(k) != have.get(k)
        ] or ["params differ (encoding)"]
    for step, up in sorted(req.upstream.items()):
        had = tags.get(tag.upstream(step))
        if had != up.run_id:
            had_key = tags.get(tag.upstream_key(step), had or "none")
            reasons.append(f"upstream {step} is {had_key}, not {up.key}")
    if tags.get(tag.CODE) != req.code_fingerprint:
        reasons += _code_changes(run, req)
    if not reasons and tags.get(tag.FINGERPRINT) != req.fingerprint:
        reasons.append("fingerprint differs (as_of)")
    return reasons or ["same fingerprint; a newer identical run was chosen"]


def _code_changes(run: Run, req: Request) -> list[str]:
    """The code parts that differ, from the run's recorded parts (tag, else artifact)."""
    if tag.CODE_SCHEME not in run.tags:
        return [OLD_SCHEME]
    text = run.tags.get(tag.CODE_PARTS)
    if text is None:  # too long for a tag
        with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as tmp:
            text = run.store.download(run.run_id, CODE_PARTS, Path(tmp)).read_text()
    if text is None:
        return ["code differs (its recorded parts are unreadable)"]
    return changes(json.loads(text), req.code_parts) or ["code differs"]


def _as_param(value: Any) -> str:

    return param_value(value)


def chain(
    *links: str | Mapping[str, str],
    params: Mapping[str, Any] | None = None,
    force: str | Iterable[str] | None = None,
    dry_run: bool = False,
    explain: bool = False,
    show_progress: bool = False,
    on_event: Callable[[str], None] | None = None,
    checks: bool = True,
    project: Project = None,
) -> Chain:
    """Resolve the newest coherent chain, run the missing steps in order, record the chain.

    Args:
        links: ``STEP=VARIANT[@WHEN]`` items (or mappings ``{step: "variant@when"}``). A load
            step without ``@WHEN`` is a fresh retrieval; with one, that run is reused.
        params: ``{"training.C": 10}`` or ``{"training": {"C": 10}}``.
        force: step(s) to rerun, with every step after them.
        dry_run: only resolve: nothing is run or recorded.
        explain: say, for each step, why newer runs of the variant were passed over.
        show_progress: show progress bars of the steps that run.
        on_event: called with one line per event (a step starts, waits for another process).
        checks: run the data checks of a load that runs (False, for emergencies: skipped, and
            recorded on the load run as ``relay.checks = skipped``).
        project: the project (default: around the working folder).

    Returns:
        The :class:`Chain`.

    Raises:
        UsageError: unknown step/variant/param, a step named twice, a date without runs,
            params for a step not in the chain, steps that do not connect (nothing is run).
        ChainFailed: a step failed; its run is FAILED, the earlier steps are kept, and running
            the same chain again resumes from the failed step.

    Example:
        >>> c = relay.chain("load=transactions@latest", "processing=plain",
        ...                 "training=logreg", params={"training.C": 10})
        >>> [p.status for p in c.steps], c["training"].params["C"]
        (['reused', 'reused', 'new'], '10.0')
        >>> relay.chain("load=transactions@latest", "processing=plain", "training=logreg",
        ...             params={"training.C": 10}).steps[-1].status
        'reused'
    """

    settings = open_project(project)
    pipeline = pipeline_of(settings)
    parsed = parse_links(links, params)
    forced = {force} if isinstance(force, str) else set(force or ())
    ordered = validate(pipeline, parsed, forced)
    pinned = {link.step: _pinned(settings, link) for link in ordered if link.ref is not None}
    for n, link in enumerate(ordered):  # pinned by run id: learn the variant
        if not link.variant:
            run = pinned[link.step]
            ordered[n] = Link(link.step, run.variant, link.params, run.run_id)
    bound = {
        link.step: pipeline.variant(link.step, link.variant).bind(link.params) for link in ordered
    }
    for link in ordered:
        if link.ref is not None and link.params:
            raise UsageError(
                f"parameters for {link.step} apply to a fresh retrieval, but {link} is pinned; "
                f"drop the @ to retrieve again with them"
            )
    store = get_store(settings)
    resolver = _Resolver(settings, store, pipeline, None, ordered, bound, forced, pinned, checks)
    plan = resolver.resolve(0, {})
    if explain:
        resolver.explain(plan)
    result = Chain(plan, dry_run=dry_run, notes=sorted(resolver.notes))
    if dry_run:
        return result
    _complete(resolver, result, show_progress, on_event or (lambda line: None))
    result.record_id = record(settings, store, result, ordered)
    return result


def _complete(
    resolver: _Resolver, result: Chain, show_progress: bool, say: Callable[[str], None]
) -> None:
    """Run the missing steps in order, claiming each one first.

    A claim finds a run that another process finished since the chain was resolved, so no
    separate look-up precedes it.
    """
    chosen = {p.step: p.run for p in result.steps if p.run is not None}
    for p, link in zip(result.steps, resolver.links, strict=True):
        if p.status == REUSED:
            continue
        req = replace(resolver.request(link, chosen), code=resolver.git_state())
        req.variant.load()  # from the pipeline cache: import the steps module before claiming
        root = not resolver.pipeline.get(link.step).upstream
        forced = any(s in resolver.forced for s in _ancestry(resolver, link.step))
        try:
            if root or forced:
                say(f"running {link.step}/{link.variant}")
                run = execute(req, show_progress=show_progress)
            else:
                outcome = claim(
                    resolver.store,
                    req,
                    on_wait=lambda r: say(f"waiting for {r.key}: another process computes it"),
                )
                if outcome.reused is not None:
                    p.status, p.run = REUSED, outcome.reused
                    p.reason = f"computed by another process (waited {outcome.waited:.0f}s)"
                    chosen[link.step] = outcome.reused
                    continue
                assert outcome.run_id and outcome.key
                say(f"running {outcome.key}")
                held = (outcome.run_id, outcome.key)
                run = execute(req, show_progress=show_progress, created=held)
        except StepFailed as e:
            failed = _failed_run(resolver, req)
            p.status, p.run, p.reason = FAILED, failed, str(e)
            result.record_id = record(
                resolver.settings, resolver.store, result, resolver.links, error=str(e)
            )
            raise ChainFailed(f"{e}; resume with: {_resume_hint(result)}", result) from e
        p.run = run
        chosen[link.step] = run


def _ancestry(resolver: _Resolver, step: str) -> set[str]:
    """The step and every step upstream of it."""
    out = {step}
    for up in resolver.pipeline.get(step).upstream:
        out |= _ancestry(resolver, up)
    return out


def _failed_run(resolver: _Resolver, req: Request) -> Run | None:
    flt = f"tags.`relay.fingerprint` = {quote(req.fingerprint)} AND attributes.status = 'FAILED'"
    found = resolver.store.search([req.step], flt, limit=1)
    return Run(resolver.settings, found[0]) if found else None


def _resume_hint(result: Chain) -> str:
    parts = []
    for p in result.steps:
        if p.run is not None and p.status != FAILED and not p.run.upstream_ids:
            parts.append(f"{p.step}={p.variant}@{p.run.key.time}")
        else:
            parts.append(f"{p.step}={p.variant}")
    return "relay chain " + " ".join(parts) + " (same -P options)"


def lineage(run: Run | str, *, project: Project = None, depth: int = 20) -> Lineage:
    """The upstream and downstream trees of a run (``relay lineage``).

    Args:
        run: a Run or a reference.
        project: the project (when ``run`` is a reference).
        depth: how deep to walk each way.

    Example:
        >>> keys = lineage("training/logreg@latest").keys("upstream")
        >>> [k.split("@")[0] for k in keys]
        ['training/logreg', 'processing/plain', 'load/transactions']
    """
    return run_lineage(run if isinstance(run, Run) else get(run, project=project), depth=depth)
