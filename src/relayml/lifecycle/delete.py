"""``relay delete``: remove runs for good: their MLflow rows, artifact folders, logged models,
registered versions (with ``cascade``) and local cache; shared snapshots stay while a live
run still uses them.

Deletion order (crash safety): registry versions first (a version never points at a purged
model), then every run of the set is marked deleted in MLflow (the set is now recorded), then
each run's files are purged and its row hard-deleted. A crash at any point leaves runs that
are either live and whole, or marked deleted; ``relay gc`` (or running the same delete again)
finishes the job. Files of a live run are never touched.

Example:
    >>> plan = relay.delete("training/logreg@latest", dry_run=True)
    >>> [r.step for r in plan.runs], plan.dependents
    (['training'], [])
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from relayml import tags as tag
from relayml.config import Settings
from relayml.errors import NotFound, UsageError
from relayml.keys import parse_reference
from relayml.lifecycle.purge import (
    holders,
    parent_uri,
    purge_run,
    quiet,
    run_bytes,
    snapshot_users,
    soft_delete,
    versions_of,
)
from relayml.outputs import cache_dir
from relayml.runs import Project, Run, get, open_project, visible
from relayml.store import Store, get_store, quote

__all__ = ["DeletePlan", "check_delete", "delete", "plan_delete"]


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
        >>> plan = plan_delete("load/transactions@latest", cascade=True)
        >>> [r.step for r in plan.runs], plan.bytes > 0
        (['training', 'processing', 'load'], True)
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
    versions = versions_of(store, doomed)
    held: dict[str, set[str]] = {}
    for r in doomed:
        for holder, names in holders(r.tags).items():
            held.setdefault(holder, set()).update(names)
    purge, kept = [], {}
    for holder, names in held.items():
        users = [u for u in snapshot_users(store, holder, names) if u.run_id not in doomed_ids]
        if users:
            kept[holder] = [str(u.key) for u in users]
        else:
            purge.append(holder)
    order = _downstream_first(doomed)
    nbytes = sum(run_bytes(store, settings, r.run_id) for r in order)
    nbytes += sum(run_bytes(store, settings, h) for h in purge)
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
        >>> plan = relay.delete("processing/plain@latest", cascade=True, dry_run=True)
        >>> [r.step for r in plan.runs], plan.remote
        (['training', 'processing'], False)
        >>> relay.delete("processing/plain@latest", dry_run=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        relayml.errors.UsageError: cannot delete processing/plain@...; add --cascade to ...
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
        >>> check_delete(plan_delete("training@latest"), cascade=False, force=False)
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
    for v in plan.versions:  # 1. the registry never points at a purged model
        store.delete_model_version(v["name"], v["version"])  # False: already gone
    for r in plan.runs:  # 2. the whole set is recorded as deleted
        soft_delete(store, r.run_id)
    for holder in plan.snapshots:
        if not snapshot_users(store, holder, _holder_names(plan, holder)):
            soft_delete(store, holder)
    if plan.remote:  # 3'. files go through the server; its `mlflow gc` purges the rows
        plan.freed = 0
        for run_id in [r.run_id for r in plan.runs] + list(plan.snapshots):
            plan.freed += _free_on_server(store, run_id)
            shutil.rmtree(cache_dir(settings.root, run_id), ignore_errors=True)
        return
    for run_id in [r.run_id for r in plan.runs] + list(plan.snapshots):  # 3. purge
        entity = store.get_run(run_id)
        if entity is None or entity.info.lifecycle_stage != "deleted":
            continue  # already purged, or a holder that found a new user meanwhile
        purge_run(store, entity)


def _free_on_server(store: Store, run_id: str) -> int:
    """Delete a deleted run's logged models and artifact folder through the tracking server;
    returns the bytes freed. The run's row stays, marked deleted, for the server's gc."""
    entity = store.get_run(run_id)
    if entity is None or entity.info.lifecycle_stage != "deleted":
        return 0  # a holder that found a new user meanwhile
    freed = 0
    for m in store.logged_models(run_id):
        quiet(lambda m=m: store.delete_logged_model(m.model_id))
        freed += quiet(lambda m=m: store.delete_artifacts(parent_uri(m.artifact_location))) or 0
    uri = entity.info.artifact_uri
    run_uri = parent_uri(uri) if uri.rstrip("/").endswith(f"{run_id}/artifacts") else uri
    freed += quiet(lambda: store.delete_artifacts(run_uri)) or 0
    return freed


def _holder_names(plan: DeletePlan, holder: str) -> set[str]:
    names: set[str] = set()
    for r in plan.runs:
        names.update(holders(r.tags).get(holder, set()))
    return names


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
            flt = f"tags.`{tag.KEY}` = {quote(str(parsed.key))}"
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
        flt = f"tags.`{tag.upstream(r.step)}` = {quote(r.run_id)}"
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
