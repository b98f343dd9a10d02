"""The lifecycle of runs: compare, promote, delete, gc, reproduce, refresh.

- :func:`compare` ranks runs by a metric, only between runs trained on the same data version.
- :func:`promote` registers a training run's bundle in the MLflow Model Registry (name = the
  project) and points an alias (``champion``) at it.
- :func:`delete` removes runs for good: their MLflow rows, artifact folders, logged models,
  registered versions (with ``cascade``) and local cache; shared snapshots stay while a live
  run still uses them.
- :func:`gc` purges what was deleted by other means (the MLflow UI, ``MlflowClient``),
  withdrawn runs and orphan snapshots.
- :func:`reproduce` re-runs a training run's chain from what was recorded (commit, diff,
  params, data snapshot) and checks the metrics.
- :func:`refresh` is the regular retraining: a new load, the champion's chain and every
  candidate on it, and a promotion only when a challenger wins by a margin.

Deletion order (crash safety): registry versions first (a version never points at a purged
model), then every run of the set is marked deleted in MLflow (the set is now recorded), then
each run's files are purged and its row hard-deleted. A crash at any point leaves runs that
are either live and whole, or marked deleted; ``relay gc`` (or running the same delete again)
finishes the job. Files of a live run are never touched.

This module talks to MLflow through :mod:`relayml.store` (and the store's client); it does
not import ``mlflow.tracking``.

Example:
    >>> import relayml as relay
    >>> relay.compare("training", metric="test_roc_auc", data="ab12cd34")  # doctest: +SKIP
    <Ranking test_roc_auc on 078f1cd8cf7b: 3 runs>
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.errors import MixedData, NotFound, RefreshBusy, RelayError, StepFailed, UsageError
from relayml.keys import parse_reference
from relayml.outputs import cache_dir
from relayml.runs import Project, Run, RunList, get, open_project, runs, visible
from relayml.store import Store, get_store, local_path, quote

if TYPE_CHECKING:
    from mlflow.entities import Run as MlflowRun

    from relayml.config import Settings

__all__ = [
    "DeletePlan",
    "GcReport",
    "MetricCheck",
    "MixedData",
    "Promotion",
    "Ranking",
    "RefreshReport",
    "Reproduction",
    "compare",
    "delete",
    "gc",
    "parse_age",
    "plan_delete",
    "promote",
    "refresh",
    "reproduce",
]

_SNAPSHOT_SUFFIXES = (".digest", ".rows", ".bytes", ".source")
_LOWER_HINTS = ("loss", "error", "rmse", "mse", "mae", "mape", "logloss")


# =============================================================================================
# compare
# =============================================================================================


@dataclass
class Ranking:
    """Runs on one data version, best first by one metric.

    Attributes:
        data_version: the data version shared by every run (None: runs without one).
        metric: the metric ranked on.
        runs: the runs that have the metric, best first.
        missing: runs on this data version that lack the metric.
        lower_is_better: True when smaller values rank first.
    """

    data_version: str | None
    metric: str
    runs: RunList
    missing: RunList = field(default_factory=RunList)
    lower_is_better: bool = False

    def __repr__(self) -> str:
        v = (self.data_version or "none")[:12]
        return f"<Ranking {self.metric} on {v}: {len(self.runs)} runs>"

    @property
    def best(self) -> Run | None:
        """The best run, or None when no run has the metric."""
        return self.runs[0] if self.runs else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``relay compare --json`` prints)."""
        return {
            "data_version": self.data_version,
            "metric": self.metric,
            "lower_is_better": self.lower_is_better,
            "runs": [
                {
                    "rank": i + 1,
                    "key": str(r.key),
                    "run_id": r.run_id,
                    "variant": r.variant,
                    "value": r.metrics[self.metric],
                    "params": r.params,
                    "upstream": r.to_dict()["upstream"],
                }
                for i, r in enumerate(self.runs)
            ],
            "missing_metric": [str(r.key) for r in self.missing],
        }


def compare(
    step: str | None = None,
    *,
    metric: str,
    refs: Sequence[str | Run] | None = None,
    data: str | None = None,
    by_data: bool = False,
    lower_is_better: bool | None = None,
    variant: str | None = None,
    limit: int | None = 1000,
    project: Project = None,
) -> Ranking | list[Ranking]:
    """Rank runs by a metric, only between runs trained on the same data version.

    Args:
        step: the step whose FINISHED runs are ranked (default: the pipeline's last step);
            ignored when ``refs`` are given.
        metric: the metric to rank on.
        refs: explicit runs (references or Runs) to rank instead of a step's runs.
        data: only runs on this data version (a digest, a unique digest prefix, or a reference
            to a run whose data version is used).
        by_data: runs span several data versions: return one ranking per version instead
            of refusing.
        lower_is_better: rank smaller values first (default: True for names that look like a
            loss or an error, else False).
        variant: only runs of this variant.
        limit: look at most at this many runs (newest first).
        project: the project (default: around the working folder).

    Returns:
        One :class:`Ranking`; a list of them (newest data version first) with ``by_data``.

    Raises:
        MixedData: the runs span several data versions and ``by_data`` is False; the message
            names each version with its number of runs and how to choose.
        UsageError: no run to rank, or none has the metric.

    Example:
        >>> ranking = relay.compare(  # doctest: +SKIP
        ...     "training", metric="test_roc_auc", data="load/transactions@latest"
        ... )
        >>> ranking.best.key  # doctest: +SKIP
        RunKey(step='training', variant='rf', time='20190210094501')
    """
    settings = open_project(project)
    if not metric:
        raise UsageError("name the metric to rank on with --metric NAME")
    lower = lower_is_better
    if lower is None:
        lower = any(h in metric.lower() for h in _LOWER_HINTS)
    if refs:
        found = RunList(r if isinstance(r, Run) else get(r, project=settings) for r in refs)
        what = "the given runs"
        if data:
            version = _resolve_data(data, settings, found[0].step)
            found = RunList(r for r in found if r.data_version == version)
    else:
        if step is None:
            from relayml.runner import pipeline_of

            step = pipeline_of(settings).order[-1]
        version = _resolve_data(data, settings, step) if data else None
        found = runs(
            step, variant=variant, status="FINISHED", data=version, limit=limit, project=settings
        )
        what = f"the finished runs of {step!r}"
        if version:
            what += f" on data {version[:12]}"
    if not found:
        raise UsageError(f"no runs to compare: {what} is empty")
    groups: dict[str | None, RunList] = {}
    for r in found:
        groups.setdefault(r.data_version, RunList()).append(r)
    if len(groups) > 1 and not by_data:
        raise MixedData(_mixed_message(groups, what, step))
    rankings = [_rank(v, rs, metric, lower) for v, rs in groups.items()]
    if all(not rk.runs for rk in rankings):
        have = sorted({m for r in found for m in r.metrics})
        raise UsageError(
            f"no run of {what} has the metric {metric!r} (metrics: {', '.join(have) or 'none'})"
        )
    return rankings if by_data else rankings[0]


def _rank(version: str | None, found: RunList, metric: str, lower: bool) -> Ranking:
    have = [r for r in found if metric in r.metrics and not math.isnan(r.metrics[metric])]
    have.sort(key=lambda r: r.metrics[metric], reverse=not lower)
    missing = RunList(r for r in found if r not in have)
    return Ranking(version, metric, RunList(have), missing, lower)


def _mixed_message(groups: Mapping[str | None, RunList], what: str, step: str | None) -> str:
    parts = []
    for v, rs in groups.items():
        loads = sorted({k for r in rs for k in r.data_keys})
        origin = f" from {', '.join(loads[:2])}{'...' if len(loads) > 2 else ''}" if loads else ""
        parts.append(f"{(v or 'none')[:12]} ({len(rs)} run{'s' * (len(rs) != 1)}{origin})")
    first = next((v for v in groups if v), None)
    cmd = f"relay compare {step} " if step else "relay compare "
    return (
        f"{what} span {len(groups)} data versions: {'; '.join(parts)}. Scores are only "
        f"comparable on the same data: pick one with '{cmd}--data {(first or '')[:12]} ...', "
        "or add --by-data for one ranking per data version"
    )


def _resolve_data(value: str, settings: Settings, step: str | None) -> str:
    """A full data version from a digest, a unique digest prefix, or a run reference."""
    if "@" in value or tag.is_run_id(value):
        if "@" in value:
            run = get(value, project=settings)
            if not run.data_version:
                raise UsageError(f"run {run.key} has no data version")
            return run.data_version
        return value
    if not re.match(r"^[0-9a-f]{4,31}$", value):
        raise UsageError(
            f"--data {value!r}: expected a data version (hex digest or prefix) or a run reference"
        )
    found = runs(step, limit=None, project=settings) if step else runs(limit=None, project=settings)
    versions = sorted({r.data_version for r in found if (r.data_version or "").startswith(value)})
    if not versions:
        raise NotFound(f"no run of {step or 'any step'!r} is on a data version starting {value!r}")
    if len(versions) > 1:
        raise UsageError(f"data version prefix {value!r} is ambiguous: {', '.join(versions)}")
    return versions[0]


# =============================================================================================
# promote
# =============================================================================================


@dataclass(frozen=True)
class Promotion:
    """A registered model version and the alias now pointing at it.

    Attributes:
        name: the registered model (the project's name).
        version: the new version number.
        alias: the alias set on it.
        run: the training run whose bundle was registered.
        model_uri: the bundle's URI.
        previous: the version the alias pointed at before, if any.
    """

    name: str
    version: int
    alias: str
    run: Run
    model_uri: str
    previous: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run": str(self.run.key),
            "run_id": self.run.run_id,
            "model_uri": self.model_uri,
            "previous": self.previous,
            "uri": f"models:/{self.name}@{self.alias}",
        }


def promote(ref: str | Run, alias: str = "champion", *, project: Project = None) -> Promotion:
    """Register a training run's bundle under the project's name and point an alias at it.

    Args:
        ref: a reference to a FINISHED run that logged a bundle (tag ``relay.model``).
        alias: the alias to set (``models:/<project>@<alias>`` then loads the bundle).
        project: the project (default: around the working folder).

    Returns:
        The :class:`Promotion`.

    Raises:
        UsageError: the run is not FINISHED, has no bundle, or the alias is malformed.

    Example:
        >>> p = relay.promote("training/rf@latest", alias="champion")  # doctest: +SKIP
        >>> p.to_dict()["uri"]  # doctest: +SKIP
        'models:/fraud@champion'
    """
    settings = open_project(project)
    run = ref if isinstance(ref, Run) else get(ref, project=settings)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_\-]*$", alias or "") or alias.lower() == "latest":
        raise UsageError(
            f"invalid alias {alias!r}: use letters, digits, '_' and '-' (not 'latest')"
        )
    if run.status != "FINISHED":
        raise UsageError(f"run {run.key} is {run.status}; only a FINISHED run can be promoted")
    if not run.model_uri:
        raise UsageError(
            f"run {run.key} logged no bundle (tag relay.model); promote a training run "
            "whose variant returns a 'model'"
        )
    store = get_store(settings)
    name = settings.project
    previous = _alias_version(store, name, alias)
    version = _register(store, run.model_uri, name, alias)
    client = store.client
    for k, v in {
        tag.KEY: str(run.key),
        tag.RUN_ID: run.run_id,
        tag.DATA: run.data_version or "",
    }.items():
        client.set_model_version_tag(name, str(version), k, v)
    return Promotion(name, version, alias, run, run.model_uri, previous)


def _register(store: Store, model_uri: str, name: str, alias: str) -> int:
    import mlflow

    mlflow.set_tracking_uri(store.settings.tracking_uri)
    mlflow.set_registry_uri(store.settings.tracking_uri)
    try:
        from relayml.bundle import register
    except ImportError:  # pragma: no cover - bundle.py always has it today
        mv = store.client.create_model_version(name, model_uri)
        store.client.set_registered_model_alias(name, alias, mv.version)
        return int(mv.version)
    return register(model_uri, name, alias)


def _alias_version(store: Store, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(store.client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _champion(settings: Settings, alias: str) -> tuple[int, Run] | None:
    """The version an alias points at and its training run, or None."""
    store = get_store(settings)
    from mlflow.exceptions import MlflowException

    try:
        mv = store.client.get_model_version_by_alias(settings.project, alias)
    except MlflowException:
        return None
    entity = store.get_run(mv.run_id) if mv.run_id else None
    if entity is None or tag.KEY not in entity.data.tags:
        raise RelayError(
            f"alias {alias!r} of {settings.project!r} points at version {mv.version}, whose run "
            f"{mv.run_id} is gone; set it again with 'relay promote REF --alias {alias}'"
        )
    return int(mv.version), Run(settings, entity)


# =============================================================================================
# deleting
# =============================================================================================


@dataclass
class DeletePlan:
    """What a delete removes, computed before anything is changed.

    Attributes:
        requested: the runs named by the user.
        runs: every run that goes (requested + their downstream tree with ``cascade``),
            downstream first.
        dependents: live downstream runs that are not part of the deletion (a refusal).
        versions: registered model versions of those runs: ``{name, version, aliases, run}``.
        snapshots: snapshot holder run ids that go with them (no other live user).
        kept_snapshots: ``{holder id: [keys of the live runs that still use it]}``.
        bytes: bytes of files freed (artifacts, logged models, unused snapshots, cache).
        remote: the store is a tracking server: files are deleted through it and its own
            ``mlflow gc`` purges the rows marked deleted.
        freed: after a delete on a tracking server, the bytes its artifact store freed.
    """

    settings: Settings
    requested: list[Run]
    runs: list[Run]
    dependents: list[Run]
    versions: list[dict[str, Any]]
    snapshots: list[str]
    kept_snapshots: dict[str, list[str]]
    bytes: int
    remote: bool
    freed: int | None = None

    @property
    def aliased(self) -> list[dict[str, Any]]:
        """The registered versions that carry an alias (deleting them needs ``force``)."""
        return [v for v in self.versions if v["aliases"]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "requested": [str(r.key) for r in self.requested],
            "runs": [{"key": str(r.key), "run_id": r.run_id} for r in self.runs],
            "dependents": [str(r.key) for r in self.dependents],
            "registered_versions": self.versions,
            "snapshots": self.snapshots,
            "kept_snapshots": self.kept_snapshots,
            "bytes": self.bytes,
            "remote": self.remote,
            "freed": self.freed,
        }


def plan_delete(
    refs: str | Run | Sequence[str | Run], *, cascade: bool = False, project: Project = None
) -> DeletePlan:
    """Compute what deleting runs would remove; nothing is changed.

    Runs already marked deleted (an interrupted delete) are found too, so that running the
    same delete again finishes it.

    Example:
        >>> plan = plan_delete("load/transactions@latest", cascade=True)  # doctest: +SKIP
        >>> [str(r.key) for r in plan.runs], plan.bytes  # doctest: +SKIP
    """
    settings = open_project(project)
    store = get_store(settings)
    items = [refs] if isinstance(refs, str | Run) else list(refs)
    if not items:
        raise UsageError("name at least one run to delete")
    requested: list[Run] = []
    for ref in items:
        r = ref if isinstance(ref, Run) else _resolve_any(ref, settings, store)
        if r not in requested:
            requested.append(r)
    tree = _descendants(store, settings, requested)
    # without cascade, live downstream runs block the delete; ones already marked deleted
    # (an interrupted delete) simply go with it
    dependents = [] if cascade else [r for r in tree if _active(r)]
    doomed = list(requested) + [r for r in tree if r not in dependents]
    doomed_ids = {r.run_id for r in doomed}
    versions = _versions_of(store, doomed)
    holders: dict[str, set[str]] = {}
    for r in doomed:
        for holder, names in _holders(r.tags).items():
            holders.setdefault(holder, set()).update(names)
    purge, kept = [], {}
    for holder, names in holders.items():
        users = [u for u in _snapshot_users(store, holder, names) if u.run_id not in doomed_ids]
        if users:
            kept[holder] = [str(u.key) for u in users]
        else:
            purge.append(holder)
    order = _downstream_first(doomed)
    nbytes = sum(_run_bytes(store, settings, r.run_id) for r in order)
    nbytes += sum(_run_bytes(store, settings, h) for h in purge)
    return DeletePlan(
        settings,
        requested,
        order,
        dependents,
        versions,
        purge,
        kept,
        nbytes,
        remote=not settings.is_local_store,
    )


def delete(
    refs: str | Run | Sequence[str | Run],
    *,
    cascade: bool = False,
    dry_run: bool = False,
    force: bool = False,
    confirm: Callable[[DeletePlan], bool] | None = None,
    project: Project = None,
) -> DeletePlan:
    """Delete runs for good: MLflow rows, artifact folders, logged models, local cache.

    Args:
        refs: one or more run references (or Runs).
        cascade: also delete the whole downstream tree and the registered model versions of
            the deleted runs; without it, a run with live downstream runs or registered
            versions is refused.
        dry_run: only compute and return the plan.
        force: also delete runs whose bundle (or a downstream bundle) a registry alias
            points at.
        confirm: called with the plan before anything changes; deletion happens only when it
            returns True (the CLI asks on the terminal).
        project: the project (default: around the working folder).

    Returns:
        The executed (or, with ``dry_run`` / a refused confirmation, the unexecuted) plan.

    Raises:
        UsageError: downstream runs or registered versions depend on the runs (without
            ``cascade``), an alias points at them (without ``force``), or no run matches.

    Example:
        >>> relay.delete("processing/plain@20190209101500", cascade=True)  # doctest: +SKIP
        >>> relay.delete("training/rf@latest", dry_run=True).bytes  # doctest: +SKIP
        1834201
    """
    plan = plan_delete(refs, cascade=cascade, project=project)
    check_delete(plan, cascade=cascade, force=force)
    if dry_run or (confirm is not None and not confirm(plan)):
        return plan
    _execute_delete(plan)
    return plan


def check_delete(plan: DeletePlan, *, cascade: bool, force: bool) -> None:
    """Raise UsageError when a plan must be refused (see :func:`delete`).

    Example:
        >>> check_delete(plan_delete("load@latest"), cascade=False, force=False)  # doctest: +SKIP
        Traceback (most recent call last):
        UsageError: ...
    """
    names = ", ".join(str(r.key) for r in plan.requested)
    if plan.dependents:
        listing = ", ".join(str(r.key) for r in plan.dependents[:10])
        more = f" and {len(plan.dependents) - 10} more" if len(plan.dependents) > 10 else ""
        raise UsageError(
            f"cannot delete {names}: {len(plan.dependents)} live downstream run(s) depend on it: "
            f"{listing}{more}; add --cascade to delete them too"
        )
    if plan.aliased and not force:
        listing = ", ".join(
            f"{v['name']} v{v['version']} @{','.join(v['aliases'])} ({v['run']})"
            for v in plan.aliased
        )
        raise UsageError(
            f"cannot delete {names}: registry aliases point at its bundle: {listing}; move the "
            "alias first (relay promote OTHER --alias ...) or add --force"
        )
    if plan.versions and not cascade:
        listing = ", ".join(f"{v['name']} v{v['version']} ({v['run']})" for v in plan.versions)
        raise UsageError(
            f"cannot delete {names}: registered model versions depend on it: {listing}; add "
            "--cascade to delete them too"
        )


def _execute_delete(plan: DeletePlan) -> None:
    settings = plan.settings
    store = get_store(settings)
    client = store.client
    from mlflow.exceptions import MlflowException

    for v in plan.versions:  # 1. the registry never points at a purged model
        with suppress(MlflowException):  # already gone
            client.delete_model_version(v["name"], str(v["version"]))
    for r in plan.runs:  # 2. the whole set is recorded as deleted
        _soft_delete(store, r.run_id)
    for holder in plan.snapshots:
        if not _snapshot_users(store, holder, _holder_names(plan, holder)):
            _soft_delete(store, holder)
    if plan.remote:  # 3'. files go through the server; its `mlflow gc` purges the rows
        plan.freed = 0
        for run_id in [r.run_id for r in plan.runs] + list(plan.snapshots):
            plan.freed += _free_on_server(store, run_id)
            shutil.rmtree(cache_dir(settings.root, run_id), ignore_errors=True)
        return
    done = 0
    for run_id in [r.run_id for r in plan.runs] + list(plan.snapshots):  # 3. purge
        entity = store.get_run(run_id)
        if entity is None or entity.info.lifecycle_stage != "deleted":
            continue  # already purged, or a holder that found a new user meanwhile
        _purge(store, entity)
        done += 1
        _crash_hook(done)


def _free_on_server(store: Store, run_id: str) -> int:
    """Delete a deleted run's logged models and artifact folder through the tracking server;
    returns the bytes freed. The run's row stays, marked deleted, for the server's gc."""
    client = store.client
    entity = store.get_run(run_id)
    if entity is None or entity.info.lifecycle_stage != "deleted":
        return 0  # a holder that found a new user meanwhile
    freed = 0
    for m in _logged_models(store, run_id):
        _quiet(lambda m=m: client.delete_logged_model(m.model_id))
        freed += _quiet(lambda m=m: store.delete_artifacts(_parent(m.artifact_location))) or 0
    uri = entity.info.artifact_uri
    run_uri = _parent(uri) if uri.rstrip("/").endswith(f"{run_id}/artifacts") else uri
    freed += _quiet(lambda: store.delete_artifacts(run_uri)) or 0
    return freed


def _parent(uri: str) -> str:
    """``.../<id>`` of ``.../<id>/artifacts`` (MLflow keeps a run's or model's files there)."""
    stripped = uri.rstrip("/")
    return stripped.rsplit("/", 1)[0] if stripped.endswith("/artifacts") else stripped


def _holder_names(plan: DeletePlan, holder: str) -> set[str]:
    names: set[str] = set()
    for r in plan.runs:
        names.update(_holders(r.tags).get(holder, set()))
    return names


def _crash_hook(done: int) -> None:
    """Tests: ``RELAY_TEST_CRASH_AFTER_PURGES=N`` SIGKILLs the process after N purges."""
    limit = os.environ.get("RELAY_TEST_CRASH_AFTER_PURGES")
    if limit and done >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def _soft_delete(store: Store, run_id: str) -> None:
    entity = store.get_run(run_id)
    if entity is not None and entity.info.lifecycle_stage == "active":
        if entity.info.status == "RUNNING":
            _quiet(lambda: store.finish(run_id, "KILLED"))
        store.delete_run(run_id)


def _active(r: Run) -> bool:
    return r.active


def _resolve_any(ref: str, settings: Settings, store: Store) -> Run:
    """A run by reference, also among runs already marked deleted (finishing a delete)."""
    try:
        return get(ref, project=settings)
    except NotFound as missing:
        parsed = parse_reference(ref)
        if parsed.run_id:
            e = store.get_run(parsed.run_id)
            if e is not None and visible(e):
                return Run(settings, e)
        elif parsed.time:
            flt = f"tags.`relay.key` = {quote(str(parsed.key))}"
            found = store.search([parsed.step], flt, limit=3, deleted=True)  # type: ignore[list-item]
            found = [e for e in found if visible(e)]
            if found:
                return Run(settings, found[0])
        raise NotFound(
            f"{missing}; if an earlier delete was interrupted, 'relay gc' finishes it"
        ) from None


def _descendants(store: Store, settings: Settings, roots: Iterable[Run]) -> list[Run]:
    """Every run downstream of ``roots`` (live and marked deleted), breadth first."""
    out: list[Run] = []
    seen = {r.run_id for r in roots}
    queue = list(roots)
    while queue:
        r = queue.pop(0)
        flt = f"tags.`relay.upstream.{r.step}` = {quote(r.run_id)}"
        for deleted in (False, True):
            for e in store.search(None, flt, deleted=deleted):
                if visible(e) and e.info.run_id not in seen:
                    seen.add(e.info.run_id)
                    child = Run(settings, e)
                    out.append(child)
                    queue.append(child)
    return out


def _downstream_first(found: list[Run]) -> list[Run]:
    depth: dict[str, int] = {}
    by_id = {r.run_id: r for r in found}

    def level(r: Run) -> int:
        if r.run_id not in depth:
            depth[r.run_id] = 0
            ups = [by_id[i] for i in r.upstream_ids.values() if i in by_id]
            depth[r.run_id] = 1 + max((level(u) for u in ups), default=-1)
        return depth[r.run_id]

    return sorted(found, key=lambda r: -level(r))


def _versions_of(store: Store, found: Iterable[Run]) -> list[dict[str, Any]]:
    out = []
    for r in found:
        try:
            versions = store.client.search_model_versions(f"run_id = {quote(r.run_id)}")
        except Exception:
            continue
        for v in versions:  # search results do not carry aliases; a get does
            full = _quiet(lambda v=v: store.client.get_model_version(v.name, v.version)) or v
            out.append(
                {
                    "name": v.name,
                    "version": int(v.version),
                    "aliases": sorted(full.aliases or []),
                    "run": str(r.key),
                }
            )
    return out


def _holders(tags: Mapping[str, str]) -> dict[str, set[str]]:
    """``{holder run id: {snapshot names}}`` a run refers to (tags and outputs manifest)."""
    out: dict[str, set[str]] = {}
    for k, v in tags.items():
        base = k.startswith(tag.SNAPSHOT) and not k.endswith(_SNAPSHOT_SUFFIXES)
        if base and tag.is_run_id(v):
            out.setdefault(v, set()).add(k.removeprefix(tag.SNAPSHOT))
    try:
        manifest = json.loads(tags.get(tag.OUTPUTS, "{}"))
    except ValueError:
        manifest = {}
    for how in manifest.values():
        if isinstance(how, str) and how.startswith("snapshot:"):
            out.setdefault(how.removeprefix("snapshot:"), set())
    return out


def _user_steps(store: Store) -> list[str]:
    return [s for s in store.step_experiments() if s not in tag.INTERNAL_STEPS]


def _snapshot_users(store: Store, holder: str, names: Iterable[str]) -> list[Run]:
    """Live runs that use a snapshot holder (by output manifest or snapshot tag)."""
    steps = _user_steps(store)
    found: dict[str, MlflowRun] = {}
    flts = [f"tags.`relay.outputs` LIKE {quote('%snapshot:' + holder + '%')}"]
    flts += [f"tags.`relay.snapshot.{n}` = {quote(holder)}" for n in names if "`" not in n]
    for flt in flts:
        for e in store.search(steps, flt):
            found[e.info.run_id] = e
    settings = store.settings
    return [Run(settings, e) for e in found.values() if visible(e)]


def _logged_models(store: Store, run_id: str) -> list[Any]:
    """Logged models (MLflow 3) whose source run is ``run_id``, in any experiment."""
    client = store.client
    exps = [e.experiment_id for e in client.search_experiments()]
    out = []
    for i in range(0, len(exps), 50):  # search_logged_models takes a bounded list
        try:
            page = client.search_logged_models(
                experiment_ids=exps[i : i + 50], filter_string=f"source_run_id = {quote(run_id)}"
            )
        except Exception:
            continue
        out.extend(page)
    return out


def _run_folder(artifact_uri: str, run_id: str) -> Path | None:
    path = local_path(artifact_uri)
    if path is None:
        return None
    if path.name == "artifacts" and path.parent.name == run_id:
        return path.parent
    return path


def _model_folder(location: str) -> Path | None:
    path = local_path(location)
    if path is None:
        return None
    return path.parent if path.name == "artifacts" else path


def _dir_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(folder, f)).st_size
    return total


def _run_bytes(store: Store, settings: Settings, run_id: str) -> int:
    entity = store.get_run(run_id)
    if entity is None:
        return 0
    total = _dir_bytes(cache_dir(settings.root, run_id))
    folder = _run_folder(entity.info.artifact_uri, run_id)
    if folder is not None:
        total += _dir_bytes(folder)
    else:
        total += sum(size for _, size in _quiet(lambda: store.run_artifacts(run_id)) or [])
    for m in _logged_models(store, run_id):
        folder = _model_folder(m.artifact_location)
        if folder is not None:
            total += _dir_bytes(folder)
        else:
            files = _quiet(lambda m=m: store.artifact_files(_parent(m.artifact_location)))
            total += sum(size for _, size in files or [])
    return total


def _backend(store: Store) -> Any:
    """The tracking store behind the client (for MLflow's own hard-delete path)."""
    backend = store.client._tracking_client.store
    if not hasattr(backend, "_hard_delete_run"):
        raise UsageError(
            f"the tracking store {store.settings.tracking_uri} cannot purge runs from this "
            "machine; on a tracking server run 'mlflow gc --backend-store-uri ...' on the server"
        )
    return backend


def _purge(store: Store, entity: MlflowRun) -> int:
    """Remove a run marked deleted for good: logged models, artifacts, cache, row.

    Files first, row last: a crash in between leaves a row marked deleted that ``gc``
    finishes. Returns the bytes freed.
    """
    from mlflow.exceptions import MlflowException

    backend = _backend(store)
    run_id = entity.info.run_id
    freed = 0
    for m in _logged_models(store, run_id):
        folder = _model_folder(m.artifact_location)
        _quiet(lambda m=m: store.client.delete_logged_model(m.model_id))
        freed += _rmtree(folder, m.artifact_location)
        with suppress(MlflowException):
            backend._hard_delete_logged_model(m.model_id)
    freed += _rmtree(_run_folder(entity.info.artifact_uri, run_id), entity.info.artifact_uri)
    freed += _rmtree(cache_dir(store.settings.root, run_id), None)
    with suppress(MlflowException):  # purged meanwhile by another process
        backend._hard_delete_run(run_id)
    return freed


def _rmtree(path: Path | None, uri: str | None) -> int:
    if path is None:
        if uri:  # a remote artifact store (s3, gs, ...): MLflow's repository deletes it
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            _quiet(lambda: get_artifact_repository(uri).delete_artifacts())
        return 0
    size = _dir_bytes(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
    return size


def _quiet(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


# =============================================================================================
# gc
# =============================================================================================

_AGE = re.compile(
    r"^(?:(?P<w>\d+(?:\.\d+)?)w)?(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)


def parse_age(text: str | float | None) -> float:
    """Seconds of an age like ``30d``, ``12h``, ``1d12h``, ``90m``, ``45s`` (None: 0).

    Raises:
        UsageError: a negative, empty or malformed age.

    Example:
        >>> parse_age("1d12h")
        129600.0
    """
    if text is None:
        return 0.0
    if isinstance(text, int | float):
        if text < 0:
            raise UsageError(f"--older-than must not be negative, got {text}")
        return float(text)
    m = _AGE.match(text.strip())
    if not text.strip() or not m or not any(m.groupdict().values()):
        raise UsageError(
            f"invalid --older-than {text!r}: expected a positive age like 30d, 12h, 1d12h, 90m"
        )
    unit = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(float(v) * unit[k] for k, v in m.groupdict().items() if v))


@dataclass
class GcReport:
    """What :func:`gc` purged (or, with ``dry_run``, would purge).

    Attributes:
        runs: ``{run_id, key, experiment, why}`` of every purged run.
        snapshots: ids of purged snapshot holders.
        kept: ``{run_id, key, why}`` of deleted runs kept on purpose.
        bytes: bytes of files freed.
        dry_run: nothing was changed.
    """

    runs: list[dict[str, str]] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    kept: list[dict[str, str]] = field(default_factory=list)
    bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "runs": self.runs,
            "snapshots": self.snapshots,
            "kept": self.kept,
            "bytes": self.bytes,
            "dry_run": self.dry_run,
        }


def gc(
    older_than: str | float | None = None, *, dry_run: bool = False, project: Project = None
) -> GcReport:
    """Purge runs marked deleted by other means, withdrawn runs and orphan snapshots.

    Runs deleted in the MLflow UI or with ``MlflowClient.delete_run`` keep their rows and
    files until purged; ``gc`` removes their artifact folders, logged models, local cache and
    rows (MLflow's own hard-delete path). A deleted run whose bundle is still a registered
    model version is kept (delete the version first). Snapshot holders that no live run uses
    are purged, except while a step is running (it may be about to use one).

    Args:
        older_than: only what was deleted (withdrawn, orphaned) at least this long ago, e.g.
            ``"30d"``; default: everything.
        dry_run: only report.
        project: the project (default: around the working folder).

    Raises:
        UsageError: a malformed age, or a tracking server (its own ``mlflow gc`` purges).

    Example:
        >>> report = relay.gc(older_than="30d")  # doctest: +SKIP
        >>> report.bytes  # doctest: +SKIP
        48211
    """
    age_s = parse_age(older_than)
    settings = open_project(project)
    store = get_store(settings)
    backend = _backend(store)
    cutoff_ms = int((time.time() - age_s) * 1000)
    report = GcReport(dry_run=dry_run)
    exps = store.step_experiments()
    names = {i: s for s, i in exps.items()}
    old_deleted = set(backend._get_deleted_runs(older_than=int(age_s * 1000)))
    targets: list[tuple[MlflowRun, str]] = []
    for e in store.search(None, deleted=True):
        if e.info.run_id in old_deleted:
            targets.append((e, "deleted"))
    for e in store.search(_user_steps(store), "tags.`relay.withdrawn` LIKE '%'"):
        if e.info.start_time <= cutoff_ms:
            targets.append((e, "withdrawn"))
    targeted = {e.info.run_id for e, _ in targets}
    live = store.search(None, "attributes.status = 'RUNNING'")
    busy = any(
        time.time() - float(e.data.tags.get(tag.HEARTBEAT, e.info.start_time / 1000))
        < settings.stale_after
        for e in live
        if tag.KEY in e.data.tags
    )
    if not busy and tag.SNAPSHOTS_EXPERIMENT in exps:
        used: set[str] = set()
        for e in store.search(_user_steps(store)):
            if e.info.run_id not in targeted:
                used.update(_holders(e.data.tags))
        for e in store.search([tag.SNAPSHOTS_EXPERIMENT]):
            if e.info.run_id not in used and e.info.start_time <= cutoff_ms:
                targets.append((e, "orphan snapshot"))
    for e, why in targets:
        run_id = e.info.run_id
        key = e.data.tags.get(tag.KEY, e.info.run_name or run_id)
        if tag.KEY in e.data.tags:
            versions = _versions_of(store, [Run(settings, e)])
            if versions:
                listing = ", ".join(f"{v['name']} v{v['version']}" for v in versions)
                report.kept.append(
                    {
                        "run_id": run_id,
                        "key": key,
                        "why": f"registered as {listing}; delete the version first",
                    }
                )
                continue
        report.bytes += _run_bytes(store, settings, run_id)
        row = {
            "run_id": run_id,
            "key": key,
            "experiment": names.get(e.info.experiment_id, ""),
            "why": why,
        }
        if why == "orphan snapshot":
            report.snapshots.append(run_id)
        else:
            report.runs.append(row)
    if dry_run:
        return report
    kept = {k["run_id"] for k in report.kept}
    order = [e for e, _ in targets if e.info.run_id not in kept]
    for e in order:  # first record the whole set as deleted
        _soft_delete(store, e.info.run_id)
    done = 0
    for e in order:
        fresh = store.get_run(e.info.run_id)
        if fresh is None or fresh.info.lifecycle_stage != "deleted":
            continue
        _purge(store, fresh)
        done += 1
        _crash_hook(done)
    for m in _quiet(lambda: backend._get_deleted_logged_models(older_than=int(age_s * 1000))) or []:
        model = _quiet(lambda m=m: backend.get_logged_model(m, allow_deleted=True))
        if model is not None and model.experiment_id in names:
            _rmtree(_model_folder(model.artifact_location), model.artifact_location)
            _quiet(lambda m=m: backend._hard_delete_logged_model(m))
    return report


# =============================================================================================
# reproduce
# =============================================================================================


@dataclass(frozen=True)
class MetricCheck:
    """One metric of a reproduced run next to the recorded one."""

    step: str
    name: str
    recorded: float | None
    reproduced: float | None
    agrees: bool


@dataclass
class Reproduction:
    """The result of :func:`reproduce`.

    Attributes:
        run: the recorded run that was reproduced.
        reproduced: ``{step: run}`` of the new runs (tagged ``relay.reproduces``).
        checks: every metric, recorded vs reproduced.
        data: with ``refetch``: ``{recorded, refetched, agrees, run}`` of the repeated load.
        notes: what was done differently (HEAD instead of a missing commit, ...).
    """

    run: Run
    reproduced: dict[str, Run]
    checks: list[MetricCheck]
    data: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def differing(self) -> list[str]:
        """Names (``step.metric``) that do not agree, plus ``data`` when the digest moved."""
        out = [f"{c.step}.{c.name}" for c in self.checks if not c.agrees]
        if self.data is not None and not self.data["agrees"]:
            out.append("data digest")
        return out

    @property
    def ok(self) -> bool:
        """Everything agrees."""
        return not self.differing

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "run": str(self.run.key),
            "reproduced": {s: str(r.key) for s, r in self.reproduced.items()},
            "checks": [c.__dict__ for c in self.checks],
            "data": self.data,
            "ok": self.ok,
            "differing": self.differing,
            "notes": self.notes,
        }


def reproduce(
    ref: str | Run,
    *,
    tolerance: float = 1e-9,
    refetch: bool = False,
    allow_head: bool = False,
    echo: Callable[[str], None] | None = None,
    project: Project = None,
) -> Reproduction:
    """Re-run a run's chain from what was recorded and compare the metrics.

    The recorded load run is re-used as the data (its snapshot, not a fresh query); every
    later step of the chain is run again with the recorded params, at the recorded commit
    (in a temporary ``git worktree`` when it differs from the working tree) with the recorded
    uncommitted diff applied. Each step runs in a subprocess (``relay run``) against the same
    tracking store; the new runs are tagged ``relay.reproduces=<run id>``.

    Args:
        ref: the run to reproduce (usually a training run).
        tolerance: relative and absolute tolerance of a metric match.
        refetch: also repeat the load as of its recorded retrieval time and check that the
            data digest still matches (rows changed or deleted in the source show here).
        allow_head: a recorded commit that no longer exists: use the current code instead.
        echo: called with progress lines.
        project: the project (default: around the working folder).

    Raises:
        UsageError: the recorded commit no longer exists (without ``allow_head``).
        StepFailed: a reproduced step failed.

    Example:
        >>> result = relay.reproduce("training/logreg@latest")  # doctest: +SKIP
        >>> result.ok, result.differing  # doctest: +SKIP
        (True, [])
    """
    settings = open_project(project)
    run = ref if isinstance(ref, Run) else get(ref, project=settings)
    say = echo or (lambda line: None)
    chain = _chain_of(run)
    roots = [r for r in chain if not r.upstream_ids]
    again = [r for r in chain if r.upstream_ids]
    if not again and not refetch:
        raise UsageError(f"{run.key} is a load run: nothing to re-run; use --refetch")
    notes: list[str] = []
    todo = again + (roots if refetch else [])
    code = {r.run_id: _code_of(r, settings, allow_head, notes) for r in todo}
    result = Reproduction(run, {}, [], notes=notes)
    store = get_store(settings)
    with ExitStack() as stack:
        places: dict[Any, Path] = {}

        def place(r: Run) -> Path:
            spec = code[r.run_id]
            if spec not in places:
                places[spec] = _checkout(stack, settings, spec, say)
            return places[spec]

        if refetch:
            for r in roots:
                result.data = _refetch(store, settings, r, place(r), say)
        mapping = {r.run_id: r.run_id for r in roots}
        for r in again:
            ups = {s: mapping.get(i, i) for s, i in r.upstream_ids.items()}
            say(f"re-running {r.key} ...")
            new = _relay_run(settings, place(r), r, ups, as_of=None)
            store.set_tag(new.run_id, tag.REPRODUCES, r.run_id)
            mapping[r.run_id] = new.run_id
            result.reproduced[r.step] = new.refresh()
            result.checks += _checks(r, new, tolerance)
    return result


def _chain_of(run: Run) -> list[Run]:
    """The run and its ancestors, upstream first."""
    seen: dict[str, Run] = {}

    def visit(r: Run) -> None:
        if r.run_id in seen:
            return
        for u in r.upstream.values():
            visit(u)
        missing = set(r.upstream_ids) - set(r.upstream)
        if missing:
            raise UsageError(
                f"{r.key}: its upstream run(s) of {', '.join(sorted(missing))} were deleted; "
                "the chain cannot be reproduced"
            )
        seen[r.run_id] = r

    visit(run)
    return list(seen.values())


@dataclass(frozen=True)
class _Code:
    commit: str | None  # None: the working tree as it is
    diff_run: str | None  # run holding code/uncommitted.diff


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def _code_of(r: Run, settings: Settings, allow_head: bool, notes: list[str]) -> _Code:
    commit = r.tags.get(tag.GIT_COMMIT)
    dirty = r.tags.get(tag.GIT_DIRTY) == "true"
    if not commit:
        if not allow_head:
            raise UsageError(
                f"{r.key} recorded no git commit (the project was not a git repository); "
                "add --allow-head to reproduce with the current code"
            )
        notes.append(f"{r.key}: no commit recorded; used the current code")
        return _Code(None, None)
    exists = _git(settings.root, "cat-file", "-e", f"{commit}^{{commit}}", check=False)
    if exists.returncode != 0:
        if not allow_head:
            raise UsageError(
                f"{r.key} was run at commit {commit[:12]}, which no longer exists in "
                f"{settings.root} (rebased or garbage-collected?); add --allow-head to "
                "reproduce with the current code (HEAD) instead"
            )
        notes.append(f"{r.key}: commit {commit[:12]} is gone; used the current code (HEAD)")
        return _Code(None, None)
    from relayml.codeinfo import code_state

    now = code_state(settings.root)
    if now.commit == commit and not dirty and not now.dirty:
        return _Code(None, None)  # the working tree is exactly the recorded code
    return _Code(commit, r.run_id if dirty else None)


def _checkout(
    stack: ExitStack, settings: Settings, spec: _Code, say: Callable[[str], None]
) -> Path:
    """The project folder to run in: the working tree, or a temporary worktree."""
    if spec.commit is None:
        return settings.root
    top = Path(_git(settings.root, "rev-parse", "--show-toplevel").stdout.strip())
    rel = settings.root.resolve().relative_to(top.resolve())
    tmp = Path(tempfile.mkdtemp(prefix="relay-reproduce-"))
    tree = tmp / "tree"
    say(f"checking out {spec.commit[:12]} in a temporary worktree")
    _git(top, "worktree", "add", "--detach", "--quiet", str(tree), spec.commit)

    def cleanup() -> None:
        _git(top, "worktree", "remove", "--force", str(tree), check=False)
        _git(top, "worktree", "prune", check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    stack.callback(cleanup)
    folder = tree / rel
    if spec.diff_run:
        store = get_store(settings)
        got = store.download(spec.diff_run, "code/uncommitted.diff", tmp / "diff")
        proc = _git(tree, "apply", "--whitespace=nowarn", str(got), check=False)
        if proc.returncode != 0:
            raise RelayError(
                f"the recorded uncommitted diff does not apply on {spec.commit[:12]}: "
                f"{proc.stderr.strip()[:300]}"
            )
    for entry in settings.root.iterdir():  # untracked data files, .env, ... (not .relay)
        target = folder / entry.name
        if entry.name not in {".relay", ".git"} and not target.exists():
            target.symlink_to(entry, target_is_directory=entry.is_dir())
    return folder


def _relay_run(
    settings: Settings, cwd: Path, r: Run, upstream: Mapping[str, str], *, as_of: str | None
) -> Run:
    """``relay run`` of the recorded variant and params, in a subprocess."""
    params = {k: v for k, v in r.params.items() if k != "as_of"}
    args = [sys.executable, "-m", "relayml", "run", r.step, r.variant, "--json"]
    for k, v in params.items():
        args += ["-P", f"{k}={v}"]
    for up in upstream.values():
        args += ["--from", up]
    if as_of:
        args += ["--as-of", as_of]
    env = {k: v for k, v in os.environ.items() if k not in {"RELAY_PROJECT", "MLFLOW_TRACKING_URI"}}
    env["RELAY_TRACKING_URI"] = settings.tracking_uri
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise StepFailed(f"reproducing {r.key} failed: {tail[0]}")
    try:
        info = json.loads(proc.stdout)
    except ValueError as e:
        raise RelayError(f"reproducing {r.key}: unreadable output {proc.stdout[-300:]!r}") from e
    return get(info["run_id"], project=settings)


def _checks(old: Run, new: Run, tolerance: float) -> list[MetricCheck]:
    out = []
    fresh = new.refresh().metrics
    for name, value in sorted(old.metrics.items()):
        got = fresh.get(name)
        agrees = got is not None and (
            math.isclose(value, got, rel_tol=tolerance, abs_tol=tolerance)
            or (math.isnan(value) and math.isnan(got))
        )
        out.append(MetricCheck(old.step, name, value, got, agrees))
    return out


def _refetch(
    store: Store, settings: Settings, load: Run, cwd: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    when = load.tags.get(tag.RETRIEVAL_TIME) or load.tags.get(tag.AS_OF)
    if not when:
        raise UsageError(f"{load.key} recorded no retrieval time; it cannot be fetched again")
    say(f"repeating {load.key} as of {when} ...")
    new = _relay_run(settings, cwd, load, {}, as_of=when)
    store.set_tag(new.run_id, tag.REPRODUCES, load.run_id)
    return {
        "load": str(load.key),
        "run": str(new.key),
        "recorded": load.data_version,
        "refetched": new.data_version,
        "agrees": load.data_version == new.data_version,
        "retrieval_time": when,
    }


# =============================================================================================
# refresh
# =============================================================================================


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
        >>> report = relay.refresh(  # doctest: +SKIP
        ...     candidates=["logreg", "rf"], metric="test_roc_auc", margin=0.005
        ... )
        >>> report.decision  # doctest: +SKIP
        'kept'
    """
    from relayml.runner import execute, pipeline_of, prepare
    from relayml.runstart import Heartbeat as _Heartbeat

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
    champ = _champion(settings, alias)
    metric = metric or _last_metric(store, settings, alias)
    if not metric:
        raise UsageError("name the metric to compare with --metric NAME (remembered afterwards)")
    chain = {r.step: r for r in _chain_of(champ[1])} if champ else {}
    recipes = {  # decided before anything is written
        step: (chain[step].variant, _recorded_params(chain[step]))
        if step in chain
        else (_default_variant(settings, pipeline, step), {})
        for step in pipeline.order[:-1]
    }
    record = _claim(store, settings, alias)
    beat = _Heartbeat(store, record, settings.stale_after)
    try:
        with beat:
            _pause_hook()
            _check_claim(store, settings, alias, record)
            report = _refresh_body(
                settings,
                store,
                pipeline,
                record,
                alias,
                chosen,
                metric,
                margin,
                lower_is_better,
                dict(params or {}),
                champ,
                recipes,
                say,
                prepare,
                execute,
                max_drift,
            )
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt | RefreshBusy) else "FAILED"
        message = str(e)[:4000] or type(e).__name__
        _quiet(lambda: store.set_tag(record, tag.ERROR, message))
        _quiet(lambda: store.finish(record, status))
        raise
    store.finish(record, "FINISHED")
    return report


def _refresh_body(
    settings: Settings,
    store: Store,
    pipeline: Any,
    record: str,
    alias: str,
    chosen: list[str],
    metric: str,
    margin: float,
    lower: bool,
    params: dict[str, Any],
    champ: tuple[int, Run] | None,
    recipes_before: dict[str, tuple[str, dict[str, str]]],
    say: Callable[[str], None],
    prepare: Callable[..., Any],
    execute: Callable[..., Run],
    max_drift: float | None = None,
) -> RefreshReport:
    last = pipeline.order[-1]
    new: dict[str, Run] = {}
    for step in pipeline.order[:-1]:
        variant, ps = recipes_before[step]
        ups = {u: new[u] for u in pipeline.get(step).upstream}
        say(f"running {step}/{variant} ...")
        new[step] = execute(
            prepare(step, variant, ps, upstream=ups, project=settings), show_progress=False
        )
    ups = {u: new[u] for u in pipeline.get(last).upstream}
    trained: list[tuple[str, Run]] = []
    recipes: list[tuple[str, dict[str, Any]]] = []
    if champ:
        recipe = (champ[1].variant, _recorded_params(champ[1]))
        say(f"retraining the champion {champ[1].key} ...")
        req = prepare(last, recipe[0], recipe[1], upstream=ups, project=settings)
        trained.append(("champion", execute(req, show_progress=False)))
        recipes.append((recipe[0], dict(req.params)))
    for c in chosen:
        declared = pipeline.variant(last, c).params
        req = prepare(
            last,
            c,
            {k: v for k, v in params.items() if k in declared},
            upstream=ups,
            project=settings,
        )
        if (c, dict(req.params)) in recipes:  # the champion's own recipe: trained already
            continue
        say(f"training challenger {c} ...")
        trained.append(("challenger", execute(req, show_progress=False)))
        recipes.append((c, dict(req.params)))
    ranking = compare(
        metric=metric, refs=[r for _, r in trained], lower_is_better=lower, project=settings
    )
    assert isinstance(ranking, Ranking)
    role = {r.run_id: who for who, r in trained}
    value = {r.run_id: r.metrics.get(metric) for _, r in trained}
    champion_run = next((r for who, r in trained if who == "champion"), None)
    sign = -1.0 if lower else 1.0
    previous = champ[0] if champ else None
    served: dict[str, Any] = {}
    data_diff: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    fresh_load = next((r for r in new.values() if not r.upstream_ids), None)
    if champ is not None:
        served, fresh = _score_fresh(settings, champ, trained, ups, metric, say)
        value.update(fresh)  # every model on the same fresh rows when that was possible
        if fresh_load is not None:
            data_diff, drift = _served_diff(settings, champ[1], fresh_load, served, max_drift)
    base = value.get(champion_run.run_id) if champion_run else None
    challengers = sorted(
        (r for _, r in trained if role[r.run_id] == "challenger"),
        key=lambda r: (value[r.run_id] is None, -sign * (value[r.run_id] or 0.0)),
    )
    best = challengers[0] if challengers else None
    promoted = None
    if champ is None:
        decision, winner = "first champion", ranking.best
    else:
        fresher = fresh_load is not None and fresh_load.data_version != champ[1].data_version
        decision, pick = refresh_decision(
            served=served.get("value"),
            champion=base,
            challengers=[(r.run_id, value[r.run_id]) for r in challengers],
            margin=margin,
            lower_is_better=lower,
            fresher_data=fresher,
            drift=drift["psi"] if drift else None,
            max_drift=max_drift,
        )
        by_id = {r.run_id: r for _, r in trained}
        winner = champion_run if pick == "champion" else by_id.get(pick or "")
    if winner is not None:
        _check_claim(store, settings, alias, record)  # still ours right before promoting
        promoted = promote(winner, alias, project=settings)
        say(f"promoted {winner.key} as {settings.project} v{promoted.version} @{alias}")
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
    tags = {
        tag.REFRESH_DECISION: decision,
        tag.REFRESH_METRIC: metric,
        tag.REFRESH_MARGIN: repr(margin),
        tag.REFRESH_LOWER_IS_BETTER: str(lower).lower(),
        tag.DATA: ranking.data_version or "",
        tag.REFRESH_CHAMPION: str(champ[1].key) if champ else "",
        tag.REFRESH_CHAMPION_VERSION: str(previous or ""),
        tag.REFRESH_WINNER: str(winner.key) if winner else "",
        tag.REFRESH_VERSION: str(promoted.version) if promoted else "",
    }
    if served:
        tags[tag.REFRESH_SERVED] = canonical_json(served)[:5000]
    if data_diff is not None:
        tags[tag.REFRESH_DIFF] = canonical_json(
            {k: data_diff[k] for k in ("a", "b", "rows", "added", "removed", "changed")}
        )
        store.log_text(record, json.dumps(data_diff, indent=1, default=str), "refresh/diff.json")
    if drift is not None:
        tags[tag.REFRESH_DRIFT] = canonical_json(drift)
    for step, r in new.items():
        tags[tag.upstream(step)] = r.run_id
        tags[tag.upstream_key(step)] = str(r.key)
    for i, (who, r) in enumerate(trained):
        tags[tag.refresh_run(i)] = f"{who}:{r.key}:{r.run_id}"
    metrics = {
        f"{who}_{i}_{metric}": value[r.run_id]
        for i, (who, r) in enumerate(trained)
        if value[r.run_id] is not None
    }
    metrics["promoted"] = 1.0 if winner is not None else 0.0
    if served.get("value") is not None:
        metrics[f"served_{metric}"] = served["value"]
    if drift is not None:
        metrics["max_drift_psi"] = drift["psi"]
    if base is not None:
        metrics[f"champion_{metric}"] = base
    if best is not None and value[best.run_id] is not None:
        metrics[f"best_challenger_{metric}"] = value[best.run_id]
    store.log(record, tags=tags, metrics=metrics)
    _quiet(
        lambda: store.client.set_registered_model_tag(
            settings.project, tag.refresh_metric(alias), metric
        )
    )
    return RefreshReport(
        decision,
        metric,
        entries,
        promoted,
        record,
        ranking.data_version,
        previous,
        margin,
        served,
        data_diff,
        drift,
    )


def canonical_json(value: Any) -> str:
    """Compact JSON for a tag value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def refresh_decision(
    *,
    served: float | None,
    champion: float | None,
    challengers: Sequence[tuple[str, float | None]],
    margin: float,
    lower_is_better: bool = False,
    fresher_data: bool = True,
    drift: float | None = None,
    max_drift: float | None = None,
) -> tuple[str, str | None]:
    """Who gets the alias after a refresh (pure: scores in, decision out).

    The *incumbent* is the retrained champion when it scores at least as well as the served
    model on the fresh rows (or when the served model could not be scored and the data is
    fresher), else the served model. The best challenger takes the alias when it beats the
    incumbent by more than ``margin``; otherwise a retrained incumbent replaces the served
    model; otherwise nothing changes. A promotion is held when ``drift`` exceeds
    ``max_drift``.

    Args:
        served: the served model's score on the fresh rows (None: not scored).
        champion: the retrained champion's score (None: none).
        challengers: ``(id, score)`` of each challenger.
        margin: how much a challenger must beat the incumbent by.
        lower_is_better: smaller scores are better.
        fresher_data: the fresh data differs from the served model's.
        drift: the largest feature PSI between the served model's data and the fresh data.
        max_drift: the largest PSI accepted for a promotion (None: no limit).

    Returns:
        ``(decision, winner)``: ``("promoted", challenger id)``, ``("refreshed",
        "champion")``, ``("kept", None)`` or ``("held: drift", None)``.

    Example:
        >>> refresh_decision(served=0.90, champion=0.91, challengers=[("rf", 0.912)],
        ...                  margin=0.005)
        ('refreshed', 'champion')
        >>> refresh_decision(served=0.90, champion=0.91, challengers=[("rf", 0.93)],
        ...                  margin=0.005)
        ('promoted', 'rf')
        >>> refresh_decision(served=0.95, champion=0.91, challengers=[], margin=0.0)
        ('kept', None)
        >>> refresh_decision(served=0.90, champion=0.91, challengers=[], margin=0.0,
        ...                  drift=0.4, max_drift=0.25)
        ('held: drift', None)
    """
    sign = -1.0 if lower_is_better else 1.0
    if served is not None:
        retrained_wins = champion is not None and sign * (champion - served) >= 0
        incumbent, inc_value = ("champion", champion) if retrained_wins else ("served", served)
    elif champion is not None and fresher_data:
        incumbent, inc_value = "champion", champion
    else:
        incumbent, inc_value = "served", champion
    scored = [(c, v) for c, v in challengers if v is not None]
    best = max(scored, key=lambda cv: sign * cv[1]) if scored else None
    if best is not None and (inc_value is None or sign * (best[1] - inc_value) > margin):
        decision, winner = "promoted", best[0]
    elif incumbent == "champion":
        decision, winner = "refreshed", "champion"
    else:
        return "kept", None
    if drift is not None and max_drift is not None and drift > max_drift:
        return "held: drift", None
    return decision, winner


_METRICS = {  # metric name (after a "test_"/"val_" prefix) -> (uses the score, function name)
    "roc_auc": (True, "roc_auc_score"),
    "auc": (True, "roc_auc_score"),
    "average_precision": (True, "average_precision_score"),
    "f1": (False, "f1_score"),
    "precision": (False, "precision_score"),
    "recall": (False, "recall_score"),
    "accuracy": (False, "accuracy_score"),
}


def _metric_fn(metric: str) -> tuple[bool, Callable[..., float]] | None:
    import sklearn.metrics

    name = re.sub(r"^(test|val|valid|holdout)_", "", metric)
    if name not in _METRICS:
        return None
    uses_score, fn = _METRICS[name]
    return uses_score, getattr(sklearn.metrics, fn)


def _score_bundle(uri: str, rows: Any, target: str, metric: str) -> float:
    """A bundle's metric on raw rows holding the target column."""
    from relayml.bundle import load_bundle

    found = _metric_fn(metric)
    assert found is not None
    uses_score, fn = found
    bundle = load_bundle(uri)
    out = bundle.predict(rows[bundle.columns])
    if hasattr(out, "columns") and "score" in out.columns:
        predicted = out["score"] if uses_score else out["label"]
    else:
        predicted = out
    kwargs = {} if uses_score or fn.__name__ == "accuracy_score" else {"zero_division": 0}
    return float(fn(rows[target], predicted, **kwargs))


def _score_fresh(
    settings: Settings,
    champ: tuple[int, Run],
    trained: list[tuple[str, Run]],
    ups: Mapping[str, Run],
    metric: str,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the served model and every retrained model on the same fresh raw test rows.

    The rows: the new processing run's ``test_rows`` output (raw rows of its test split),
    less those the served model's load held (matched on the load variant's key), so no
    model is scored on rows it was trained on. Returns ``(served, {run_id: score})``;
    ``served["note"]`` says why nothing was scored when that was not possible.
    """
    from relayml.datadiff import rows_not_in, snapshot_of
    from relayml.outputs import load_output

    version, served_run = champ
    served: dict[str, Any] = {"version": version, "key": str(served_run.key)}
    holder = next((r for r in ups.values() if "test_rows" in r.outputs), None)
    if _metric_fn(metric) is None:
        served["note"] = f"relay cannot compute {metric!r} itself (roc_auc, f1, ...)"
        return served, {}
    if holder is None or not served_run.data_keys:
        served["note"] = "the processing run has no 'test_rows' output (raw test rows)"
        return served, {}
    old = snapshot_of(served_run.data_keys[0], settings)
    rows = load_output(holder, "test_rows")
    if not old.key or not set(old.key) <= set(rows.columns):
        served["note"] = "no key= declared on the load variant (or not in test_rows)"
        return served, {}
    fresh = rows_not_in(rows, old.path, old.key)
    served["rows"] = len(fresh)
    processed = load_output(holder, "test") if "test" in holder.outputs else None
    models = [(r.run_id, r.model_uri) for _, r in trained if r.model_uri]
    if not served_run.model_uri or processed is None or len(fresh) == 0:
        served["note"] = "no fresh test rows the served model never saw"
        return served, {}
    from relayml.bundle import load_bundle

    inputs = set(load_bundle(served_run.model_uri).columns)
    targets = [c for c in processed.columns if c not in inputs and c in fresh.columns]
    if len(targets) != 1:
        served["note"] = f"cannot tell the target column (candidates: {targets})"
        return served, {}
    target = targets[0]
    if fresh[target].nunique() < 2 and _metric_fn(metric)[0]:
        served["note"] = f"the {len(fresh)} fresh rows hold one class only"
        return served, {}
    say(f"scoring the served model v{version} and the retrained models on {len(fresh)} fresh rows")
    served["value"] = _score_bundle(served_run.model_uri, fresh, target, metric)
    served["target"] = target
    return served, {rid: _score_bundle(uri, fresh, target, metric) for rid, uri in models}


def _served_diff(
    settings: Settings,
    served_run: Run,
    fresh_load: Run,
    served: Mapping[str, Any],
    max_drift: float | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``relay diff`` of the served model's data and the fresh data; the largest feature PSI."""
    from relayml.datadiff import diff

    if not served_run.data_keys:
        return None, None
    try:
        d = diff(served_run.data_keys[0], str(fresh_load.key), project=settings)
    except RelayError as e:
        return {"error": str(e)}, None
    features = None
    if served_run.model_uri:
        from relayml.bundle import load_bundle

        with suppress(RelayError):
            features = set(load_bundle(served_run.model_uri).columns)
    psis = {
        c: v["value"]
        for c, v in d.drift.items()
        if v["measure"] == "psi" and (features is None or c in features)
    }
    worst = max(psis, key=psis.__getitem__) if psis else None
    drift = None if worst is None else {"column": worst, "psi": psis[worst], "limit": max_drift}
    return d.to_dict(), drift


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
    try:
        model = store.client.get_registered_model(settings.project)
    except Exception:
        return None
    return (model.tags or {}).get(tag.refresh_metric(alias))


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
        _quiet(lambda: store.set_tag(run_id, tag.ERROR, message))
        store.finish(run_id, "KILLED")
        raise
    return run_id


def _check_claim(store: Store, settings: Settings, alias: str, run_id: str) -> None:
    me = store.get_run(run_id)
    assert me is not None
    mine = (me.info.start_time, run_id)
    flt = f"attributes.status = 'RUNNING' AND tags.`relay.refresh.alias` = {quote(alias)}"
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


def _pause_hook() -> None:
    """Tests: ``RELAY_TEST_REFRESH_PAUSE=seconds`` holds the claim a while."""
    pause = os.environ.get("RELAY_TEST_REFRESH_PAUSE")
    if pause:
        time.sleep(float(pause))
