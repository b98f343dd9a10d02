"""``relay refresh``: the regular retraining. A new load, the champion's chain and every
candidate on it, everything scored on the same fresh rows, and a promotion only when a
challenger wins by a margin (the rule: :func:`relayml.lifecycle.decision.refresh_decision`).

Runs steps through :mod:`relayml.runner`; the registry through
:func:`relayml.lifecycle.registry.promote` and :class:`relayml.store.Store`.

Example:
    >>> RefreshReport("kept", "test_roc_auc", [], None, "0" * 32, None).to_dict()["decision"]
    'kept'
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relayml import tags as tag
from relayml.config import Settings
from relayml.errors import NotFound, RefreshBusy, UsageError
from relayml.lifecycle.compare import compare
from relayml.lifecycle.decision import refresh_decision
from relayml.lifecycle.purge import quiet
from relayml.lifecycle.registry import Promotion, champion_of, promote
from relayml.lifecycle.reproduce import chain_of
from relayml.lifecycle.scoring import score_fresh, served_diff
from relayml.pipeline import Pipeline
from relayml.runner import execute, pipeline_of, prepare
from relayml.runs import Project, Run, get, open_project
from relayml.runstart import Heartbeat
from relayml.store import Store, get_store, quote

__all__ = ["RefreshReport", "canonical_json", "refresh"]


@dataclass
class RefreshReport:
    """What one :func:`refresh` did.

    Attributes:
        decision: ``first champion``, ``promoted`` (a challenger), ``refreshed`` (the
            champion's recipe retrained on fresh data), ``kept`` (the served model) or
            ``held: drift`` (a promotion refused by ``max_drift``).
        metric: the metric compared.
        entries: one dict per trained model: ``role`` (champion/challenger), ``key``,
            ``variant``, ``params``, ``value``, ``delta`` (vs the champion).
        promoted: the promotion, when one happened.
        record: the id of the decision run in ``<project>/refresh``.
        data_version: the new data version everything was scored on.
        previous: the version the alias pointed at before.
        served: the served model scored on the fresh rows (``version``, ``value``,
            ``rows``) or why it could not be (``note``).
        data_diff: ``relay diff`` of the served model's data and the fresh data.
        max_drift: ``{"column", "psi", "limit"}`` of the feature that drifted most.
    """

    decision: str
    metric: str
    entries: list[dict[str, Any]]
    promoted: Promotion | None
    record: str
    data_version: str | None
    previous: int | None = None
    margin: float = 0.0
    served: dict[str, Any] = field(default_factory=dict)
    data_diff: dict[str, Any] | None = None
    max_drift: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "served": self.served,
            "data_diff": self.data_diff,
            "max_drift": self.max_drift,
            "decision": self.decision,
            "metric": self.metric,
            "margin": self.margin,
            "entries": self.entries,
            "record": self.record,
            "data_version": self.data_version,
            "previous": self.previous,
            "promoted": self.promoted.to_dict() if self.promoted else None,
        }


def refresh(
    *,
    alias: str = "champion",
    candidates: Sequence[str] | None = None,
    metric: str | None = None,
    margin: float = 0.0,
    lower_is_better: bool = False,
    params: Mapping[str, Any] | None = None,
    echo: Callable[[str], None] | None = None,
    max_drift: float | None = None,
    project: Project = None,
) -> RefreshReport:
    """The regular retraining: new data, the champion's chain and challengers, a fair vote.

    1. A claim in ``<project>/refresh`` (a RUNNING run with a heartbeat) makes overlapping
       refreshes of the same alias safe: the later one stops before doing anything.
    2. A new load now, with the champion's load variant and params.
    3. Every later step with the champion's variants and params; the last step also with
       each candidate variant (default params + ``params`` it accepts), all on the same new
       processing run, so every model is scored on the same new test data.
    4. The served model (the alias's bundle, on raw rows), the retrained champion and the
       challengers are scored on the same fresh test rows: the rows of the new processing
       run's ``test_rows`` output that the served model's data did not hold (matched on the
       load variant's ``key``). See :func:`refresh_decision`: the best challenger takes the
       alias if it beats the incumbent by more than ``margin``; else a retrained champion at
       least as good as the served model replaces it; else the served model stays. Without
       a champion, the best candidate becomes it. A new load whose checks fail stops the
       refresh before any training.
    5. ``relay diff`` of the served model's data and the new data is reported; with
       ``max_drift`` no model is promoted when a feature's PSI exceeds it.
    6. The decision is logged as a run in ``<project>/refresh`` with tags and metrics
       linking everything compared.

    Args:
        alias: the registry alias of the champion (model name = the project).
        candidates: variant names of the last step (default: all its variants).
        metric: the metric to compare (default: the one the last refresh of this alias used).
        margin: how much a challenger must beat the champion by.
        lower_is_better: smaller metric values are better.
        params: params for the candidates, applied where a variant declares them
            (e.g. ``{"cv": 2}``).
        echo: called with progress lines.
        max_drift: refuse to promote when a feature's PSI (served data vs new) exceeds it.
        project: the project (default: around the working folder).

    Raises:
        RefreshBusy: another live refresh of the alias holds the claim.
        ChecksFailed: the new load failed its data checks; nothing was trained.
        UsageError: no metric known, an unknown candidate, a negative margin.

    Example:
        >>> report = relay.refresh(
        ...     alias="nightly", candidates=["logreg"], metric="test_roc_auc", params={"cv": 2}
        ... )
        >>> report.decision, report.promoted.alias
        ('first champion', 'nightly')
        >>> again = relay.refresh(alias="nightly", params={"cv": 2}, candidates=["logreg"])
        >>> again.metric, again.decision in ("kept", "refreshed", "promoted")
        ('test_roc_auc', True)
    """
    settings = open_project(project)
    store = get_store(settings)
    say = echo or (lambda line: None)
    if margin < 0 or math.isnan(margin):
        raise UsageError(f"--margin must be zero or positive, got {margin}")
    if max_drift is not None and not max_drift >= 0:
        raise UsageError(f"--max-drift must be a PSI >= 0 (e.g. 0.25), got {max_drift}")
    pipeline = pipeline_of(settings)
    last = pipeline.order[-1]
    variants = list(pipeline.get(last).variants)
    chosen = list(candidates or variants)
    for c in chosen:
        pipeline.variant(last, c)  # UnknownName with suggestions
    champ = champion_of(settings, alias)
    metric = metric or _last_metric(store, settings, alias)
    if not metric:
        raise UsageError("name the metric to compare with --metric NAME (remembered afterwards)")
    chain = {r.step: r for r in chain_of(champ[1])} if champ else {}
    recipes = {  # decided before anything is written
        step: (chain[step].variant, _recorded_params(chain[step]))
        if step in chain
        else (_default_variant(settings, pipeline, step), {})
        for step in pipeline.order[:-1]
    }
    record = _claim(store, settings, alias)
    job = _Job(
        settings=settings,
        store=store,
        pipeline=pipeline,
        record=record,
        alias=alias,
        candidates=chosen,
        metric=metric,
        margin=margin,
        lower=lower_is_better,
        params=dict(params or {}),
        champ=champ,
        recipes=recipes,
        max_drift=max_drift,
        say=say,
    )
    try:
        with Heartbeat(store, record, settings.stale_after):
            _check_claim(store, settings, alias, record)
            report = _run(job)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt | RefreshBusy) else "FAILED"
        message = str(e)[:4000] or type(e).__name__
        quiet(lambda: store.set_tag(record, tag.ERROR, message))
        quiet(lambda: store.finish(record, status))
        raise
    store.finish(record, "FINISHED")
    return report


@dataclass
class _Job:
    """One refresh, as decided before anything is written."""

    settings: Settings
    store: Store
    pipeline: Pipeline
    record: str  # the claim, then the decision run
    alias: str
    candidates: list[str]
    metric: str
    margin: float
    lower: bool
    params: dict[str, Any]
    champ: tuple[int, Run] | None  # (version, training run) the alias points at
    recipes: dict[str, tuple[str, dict[str, str]]]  # step -> (variant, params) before the last
    max_drift: float | None
    say: Callable[[str], None]


@dataclass
class _Trained:
    """The new runs of a refresh: every step before the last, then the models."""

    new: dict[str, Run]
    ups: dict[str, Run]  # the last step's upstream runs
    models: list[tuple[str, Run]]  # (role: champion / challenger, run)


def _train(job: _Job) -> _Trained:
    """A new load and chain with the champion's recipes, then the champion and each
    challenger on the same new processing run."""
    settings, pipeline = job.settings, job.pipeline
    last = pipeline.order[-1]
    new: dict[str, Run] = {}
    for step in pipeline.order[:-1]:
        variant, ps = job.recipes[step]
        ups = {u: new[u] for u in pipeline.get(step).upstream}
        job.say(f"running {step}/{variant} ...")
        new[step] = execute(
            prepare(step, variant, ps, upstream=ups, project=settings), show_progress=False
        )
    ups = {u: new[u] for u in pipeline.get(last).upstream}
    models: list[tuple[str, Run]] = []
    recipes: list[tuple[str, dict[str, Any]]] = []
    if job.champ:
        champ_run = job.champ[1]
        job.say(f"retraining the champion {champ_run.key} ...")
        req = prepare(
            last, champ_run.variant, _recorded_params(champ_run), upstream=ups, project=settings
        )
        models.append(("champion", execute(req, show_progress=False)))
        recipes.append((champ_run.variant, dict(req.params)))
    for c in job.candidates:
        declared = pipeline.variant(last, c).params
        wanted = {k: v for k, v in job.params.items() if k in declared}
        req = prepare(last, c, wanted, upstream=ups, project=settings)
        if (c, dict(req.params)) in recipes:  # the champion's own recipe: trained already
            continue
        job.say(f"training challenger {c} ...")
        models.append(("challenger", execute(req, show_progress=False)))
        recipes.append((c, dict(req.params)))
    return _Trained(new, ups, models)


def _run(job: _Job) -> RefreshReport:
    """Train, score everything on the same rows, decide, promote, record the decision."""
    settings, store, metric = job.settings, job.store, job.metric
    trained = _train(job)
    ranking = compare(
        metric=metric,
        refs=[r for _, r in trained.models],
        lower_is_better=job.lower,
        project=settings,
    )
    role = {r.run_id: who for who, r in trained.models}
    value = {r.run_id: r.metrics.get(metric) for _, r in trained.models}
    champion_run = next((r for who, r in trained.models if who == "champion"), None)
    served: dict[str, Any] = {}
    data_diff: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    fresh_load = next((r for r in trained.new.values() if not r.upstream_ids), None)
    if job.champ is not None:
        served, fresh = score_fresh(
            settings, job.champ, trained.models, trained.ups, metric, job.say
        )
        value.update(fresh)  # every model on the same fresh rows when that was possible
        if fresh_load is not None:
            data_diff, drift = served_diff(
                settings, job.champ[1], fresh_load, served, job.max_drift
            )
    base = value.get(champion_run.run_id) if champion_run else None
    sign = -1.0 if job.lower else 1.0
    challengers = sorted(
        (r for _, r in trained.models if role[r.run_id] == "challenger"),
        key=lambda r: (value[r.run_id] is None, -sign * (value[r.run_id] or 0.0)),
    )
    fresher = job.champ is not None and (
        fresh_load is not None and fresh_load.data_version != job.champ[1].data_version
    )
    decision, pick = refresh_decision(
        served=served.get("value"),
        champion=base,
        challengers=[(r.run_id, value[r.run_id]) for r in challengers],
        margin=job.margin,
        lower_is_better=job.lower,
        fresher_data=fresher,
        drift=drift["psi"] if drift else None,
        max_drift=job.max_drift,
        has_champion=job.champ is not None,
    )
    by_id = {r.run_id: r for _, r in trained.models}
    winner = champion_run if pick == "champion" else by_id.get(pick or "")
    promoted = None
    if winner is not None:
        _check_claim(store, settings, job.alias, job.record)  # still ours right before promoting
        promoted = promote(winner, job.alias, project=settings)
        job.say(f"promoted {winner.key} as {settings.project} v{promoted.version} @{job.alias}")
    entries = []
    for r in ranking.runs + list(ranking.missing):
        v = value.get(r.run_id)
        entries.append(
            {
                "role": role[r.run_id],
                "key": str(r.key),
                "run_id": r.run_id,
                "variant": r.variant,
                "params": r.params,
                "value": v,
                "delta": None if v is None or base is None else v - base,
                "promoted": winner is not None and r.run_id == winner.run_id,
            }
        )
    report = RefreshReport(
        decision,
        metric,
        entries,
        promoted,
        job.record,
        ranking.data_version,
        job.champ[0] if job.champ else None,
        job.margin,
        served,
        data_diff,
        drift,
    )
    best = challengers[0] if challengers else None
    _log_decision(job, report, trained, value, winner, base, best)
    return report


def _log_decision(
    job: _Job,
    report: RefreshReport,
    trained: _Trained,
    value: Mapping[str, float | None],
    winner: Run | None,
    base: float | None,
    best: Run | None,
) -> None:
    """Tags and metrics on the decision run linking everything compared; the metric is
    remembered on the registered model for the next refresh of the alias."""
    store, metric, drift = job.store, job.metric, report.max_drift
    tags = {
        tag.REFRESH_DECISION: report.decision,
        tag.REFRESH_METRIC: metric,
        tag.REFRESH_MARGIN: repr(job.margin),
        tag.REFRESH_LOWER_IS_BETTER: str(job.lower).lower(),
        tag.DATA: report.data_version or "",
        tag.REFRESH_CHAMPION: str(job.champ[1].key) if job.champ else "",
        tag.REFRESH_CHAMPION_VERSION: str(report.previous or ""),
        tag.REFRESH_WINNER: str(winner.key) if winner else "",
        tag.REFRESH_VERSION: str(report.promoted.version) if report.promoted else "",
    }
    if report.served:
        tags[tag.REFRESH_SERVED] = canonical_json(report.served)[:5000]
    if report.data_diff is not None:
        data_diff = report.data_diff
        tags[tag.REFRESH_DIFF] = canonical_json(
            {k: data_diff[k] for k in ("a", "b", "rows", "added", "removed", "changed")}
        )
        text = json.dumps(data_diff, indent=1, default=str)
        store.log_text(job.record, text, "refresh/diff.json")
    if drift is not None:
        tags[tag.REFRESH_DRIFT] = canonical_json(drift)
    for step, r in trained.new.items():
        tags[tag.upstream(step)] = r.run_id
        tags[tag.upstream_key(step)] = str(r.key)
    for i, (who, r) in enumerate(trained.models):
        tags[tag.refresh_run(i)] = f"{who}:{r.key}:{r.run_id}"
    metrics = {
        f"{who}_{i}_{metric}": v
        for i, (who, r) in enumerate(trained.models)
        if (v := value[r.run_id]) is not None
    }
    metrics["promoted"] = 1.0 if winner is not None else 0.0
    if report.served.get("value") is not None:
        metrics[f"served_{metric}"] = report.served["value"]
    if drift is not None:
        metrics["max_drift_psi"] = drift["psi"]
    if base is not None:
        metrics[f"champion_{metric}"] = base
    if best is not None and (v := value[best.run_id]) is not None:
        metrics[f"best_challenger_{metric}"] = v
    store.log(job.record, tags=tags, metrics=metrics)
    quiet(
        lambda: store.set_registered_model_tag(
            job.settings.project, tag.refresh_metric(job.alias), metric
        )
    )


def canonical_json(value: Any) -> str:
    """Compact JSON for a tag value.

    Example:
        >>> canonical_json({"b": 1, "a": [1.5]})
        '{"a":[1.5],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _recorded_params(r: Run) -> dict[str, str]:
    return {k: v for k, v in r.params.items() if k != "as_of"}


def _default_variant(settings: Settings, pipeline: Any, step: str) -> str:
    names = list(pipeline.get(step).variants)
    if len(names) == 1:
        return names[0]
    try:  # the variant the team ran last, else the first declared one
        return get(f"{step}@latest", project=settings).variant
    except NotFound:
        return names[0]


def _last_metric(store: Store, settings: Settings, alias: str) -> str | None:
    """The metric the last refresh of this alias compared (a registered model tag)."""
    return store.registered_model_tags(settings.project).get(tag.refresh_metric(alias))


def _claim(store: Store, settings: Settings, alias: str) -> str:
    """Create this refresh's claim (a RUNNING run), then look for older live claims.

    Create-then-search: of two overlapping refreshes, whichever searches last sees both, and
    the younger one (later start time, then larger run id) stands down.
    """
    now = time.time()
    entity = store.create_run(
        tag.REFRESH_EXPERIMENT,
        start_ms=int(now * 1000),
        run_name=f"refresh {time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}",
        tags={
            tag.PROJECT: settings.project,
            tag.REFRESH_ALIAS: alias,
            tag.HEARTBEAT: f"{now:.3f}",
        },
    )
    run_id = entity.info.run_id
    try:
        _check_claim(store, settings, alias, run_id)
    except RefreshBusy as e:
        message = str(e)
        quiet(lambda: store.set_tag(run_id, tag.ERROR, message))
        store.finish(run_id, "KILLED")
        raise
    return run_id


def _check_claim(store: Store, settings: Settings, alias: str, run_id: str) -> None:
    me = store.get_run(run_id)
    if me is None:
        raise RefreshBusy(f"the claim of this refresh (run {run_id}) was deleted meanwhile")
    mine = (me.info.start_time, run_id)
    flt = f"attributes.status = 'RUNNING' AND tags.`{tag.REFRESH_ALIAS}` = {quote(alias)}"
    for e in store.search([tag.REFRESH_EXPERIMENT], flt):
        if e.info.run_id == run_id:
            continue
        beat = float(e.data.tags.get(tag.HEARTBEAT, e.info.start_time / 1000))
        if time.time() - beat > settings.stale_after:
            continue  # a crashed refresh
        if (e.info.start_time, e.info.run_id) < mine:
            store.set_tag(run_id, tag.REFRESH_DECISION, "skipped")
            raise RefreshBusy(
                f"another refresh of alias {alias!r} is running (run {e.info.run_id}, "
                "started earlier); this one stopped before changing anything"
            )
