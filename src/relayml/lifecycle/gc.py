"""``relay gc``: purge what was deleted by other means (the MLflow UI, ``MlflowClient``),
withdrawn runs and orphan snapshots.

Purging goes through :class:`relayml.store.Store`; on a tracking server the server's own
``mlflow gc`` purges instead (``relay server --gc``).

Example:
    >>> parse_age("90m")
    5400.0
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.errors import UsageError
from relayml.lifecycle.purge import (
    holders,
    model_folder,
    purge_run,
    quiet,
    rmtree,
    run_bytes,
    soft_delete,
    user_steps,
    versions_of,
)
from relayml.readstore import RunRecord
from relayml.runs import Project, Run, open_project
from relayml.store import get_store

if TYPE_CHECKING:
    from mlflow.entities import Run as MlflowRun

__all__ = ["GcReport", "gc", "parse_age"]


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
        >>> report = relay.gc(older_than="30d", dry_run=True)
        >>> report.runs, report.bytes, report.dry_run
        ([], 0, True)
    """
    age_s = parse_age(older_than)
    settings = open_project(project)
    store = get_store(settings)
    store.check_purge()
    cutoff_ms = int((time.time() - age_s) * 1000)
    report = GcReport(dry_run=dry_run)
    exps = store.step_experiments()
    names = {i: s for s, i in exps.items()}
    old_deleted = set(store.deleted_run_ids(older_than_ms=int(age_s * 1000)))
    targets: list[tuple[MlflowRun | RunRecord, str]] = []
    for e in store.search(None, deleted=True):
        if e.info.run_id in old_deleted:
            targets.append((e, "deleted"))
    for e in store.search(user_steps(store), f"tags.`{tag.WITHDRAWN}` LIKE '%'"):
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
        for e in store.search(user_steps(store)):
            if e.info.run_id not in targeted:
                used.update(holders(e.data.tags))
        for e in store.search([tag.SNAPSHOTS_EXPERIMENT]):
            if e.info.run_id not in used and e.info.start_time <= cutoff_ms:
                targets.append((e, "orphan snapshot"))
    for e, why in targets:
        run_id = e.info.run_id
        key = e.data.tags.get(tag.KEY, e.info.run_name or run_id)
        if tag.KEY in e.data.tags:
            versions = versions_of(store, [Run(settings, e)])
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
        report.bytes += run_bytes(store, settings, run_id)
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
        soft_delete(store, e.info.run_id)
    for e in order:
        fresh = store.get_run(e.info.run_id)
        if fresh is None or fresh.info.lifecycle_stage != "deleted":
            continue
        purge_run(store, fresh)
    for model in store.deleted_logged_models(older_than_ms=int(age_s * 1000)):
        if model.experiment_id in names:
            rmtree(store, model_folder(model.artifact_location), model.artifact_location)
            quiet(lambda m=model: store.hard_delete_logged_model(m.model_id))
    return report
