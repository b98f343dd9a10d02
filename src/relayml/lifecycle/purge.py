"""What :mod:`~relayml.lifecycle.delete` and :mod:`~relayml.lifecycle.gc` share: which runs
use a snapshot, how many bytes a run holds, and purging a run marked deleted for good.

Purging goes through :class:`relayml.store.Store` (which isolates MLflow's private purge
calls); files are removed here, the row last.

Example:
    >>> holders({"relay.snapshot.load": "0123456789abcdef0123456789abcdef"})
    {'0123456789abcdef0123456789abcdef': {'load'}}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.config import Settings
from relayml.outputs import cache_dir
from relayml.readstore import RunRecord
from relayml.runs import Run, visible
from relayml.store import Store, local_path, quote

if TYPE_CHECKING:
    from mlflow.entities import Run as MlflowRun

__all__ = [
    "dir_bytes",
    "holders",
    "model_folder",
    "parent_uri",
    "purge_run",
    "quiet",
    "rmtree",
    "run_bytes",
    "run_folder",
    "snapshot_users",
    "soft_delete",
    "user_steps",
    "versions_of",
]

_SNAPSHOT_SUFFIXES = (".digest", ".rows", ".bytes", ".source")


def soft_delete(store: Store, run_id: str) -> None:
    """Mark a run deleted (ending it KILLED first when it still runs); gone ones are skipped."""
    entity = store.get_run(run_id)
    if entity is not None and entity.info.lifecycle_stage == "active":
        if entity.info.status == "RUNNING":
            quiet(lambda: store.finish(run_id, "KILLED"))
        store.delete_run(run_id)


def versions_of(store: Store, found: Iterable[Run]) -> list[dict[str, Any]]:
    """``{name, version, aliases, run}`` of the registered versions made from these runs."""
    return [{**v, "run": str(r.key)} for r in found for v in store.model_versions(r.run_id)]


def holders(tags: Mapping[str, str]) -> dict[str, set[str]]:
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


def user_steps(store: Store) -> list[str]:
    """The project's steps that hold user runs (not relay's own bookkeeping experiments)."""
    return [s for s in store.step_experiments() if s not in tag.INTERNAL_STEPS]


def snapshot_users(store: Store, holder: str, names: Iterable[str]) -> list[Run]:
    """Live runs that use a snapshot holder (by output manifest or snapshot tag)."""
    steps = user_steps(store)
    found: dict[str, MlflowRun] = {}
    flts = [f"tags.`{tag.OUTPUTS}` LIKE {quote('%snapshot:' + holder + '%')}"]
    flts += [f"tags.`{tag.SNAPSHOT}{n}` = {quote(holder)}" for n in names if "`" not in n]
    for flt in flts:
        for e in store.search(steps, flt):
            found[e.info.run_id] = e
    settings = store.settings
    return [Run(settings, e) for e in found.values() if visible(e)]


def run_folder(artifact_uri: str, run_id: str) -> Path | None:
    """The local folder of a run's files (``.../<run id>``), or None where they are remote."""
    path = local_path(artifact_uri)
    if path is None:
        return None
    if path.name == "artifacts" and path.parent.name == run_id:
        return path.parent
    return path


def model_folder(location: str) -> Path | None:
    """The local folder of a logged model's files, or None where they are remote."""
    path = local_path(location)
    if path is None:
        return None
    return path.parent if path.name == "artifacts" else path


def dir_bytes(path: Path | None) -> int:
    """Bytes of the files under a path (0 when it is missing)."""
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


def run_bytes(store: Store, settings: Settings, run_id: str) -> int:
    """Bytes a run's purge frees: its artifacts, logged models and local cache."""
    entity = store.get_run(run_id)
    if entity is None:
        return 0
    total = dir_bytes(cache_dir(settings.root, run_id))
    folder = run_folder(entity.info.artifact_uri, run_id)
    if folder is not None:
        total += dir_bytes(folder)
    else:
        total += sum(size for _, size in quiet(lambda: store.run_artifacts(run_id)) or [])
    for m in store.logged_models(run_id):
        folder = model_folder(m.artifact_location)
        if folder is not None:
            total += dir_bytes(folder)
        else:
            files = quiet(lambda m=m: store.artifact_files(parent_uri(m.artifact_location)))
            total += sum(size for _, size in files or [])
    return total


def purge_run(store: Store, entity: MlflowRun | RunRecord) -> int:
    """Remove a run marked deleted for good: logged models, artifacts, cache, row.

    Files first, row last: a crash in between leaves a row marked deleted that ``gc``
    finishes. Returns the bytes freed.
    """
    store.check_purge()
    run_id = entity.info.run_id
    freed = 0
    for m in store.logged_models(run_id):
        folder = model_folder(m.artifact_location)
        quiet(lambda m=m: store.delete_logged_model(m.model_id))
        freed += rmtree(store, folder, m.artifact_location)
        store.hard_delete_logged_model(m.model_id)
    uri = entity.info.artifact_uri
    freed += rmtree(store, run_folder(uri, run_id), uri)
    freed += rmtree(store, cache_dir(store.settings.root, run_id), None)
    store.hard_delete_run(run_id)  # False: purged meanwhile by another process
    return freed


def rmtree(store: Store, path: Path | None, uri: str | None) -> int:
    """Delete a local folder or file (returns its bytes), else the remote folder at ``uri``
    through MLflow's artifact repository (s3, gs, ...; returns 0)."""
    if path is None:
        if uri:
            quiet(lambda: store.delete_artifacts(uri))
        return 0
    size = dir_bytes(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
    return size


def parent_uri(uri: str) -> str:
    """``.../<id>`` of ``.../<id>/artifacts`` (MLflow keeps a run's or model's files there)."""
    stripped = uri.rstrip("/")
    return stripped.rsplit("/", 1)[0] if stripped.endswith("/artifacts") else stripped


def quiet(fn: Callable[[], Any]) -> Any:
    """``fn()``, or None when it raises (best-effort clean-up and bookkeeping)."""
    try:
        return fn()
    except Exception:
        return None
