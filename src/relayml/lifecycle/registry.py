"""``relay promote``: register a training run's bundle in MLflow's Model Registry (model name
= the project) and point an alias (``champion``) at it.

Talks to the registry only through :class:`relayml.store.Store`.

Example:
    >>> p = relay.promote("training/logreg@latest", alias="staging")
    >>> p.alias, p.run.step
    ('staging', 'training')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from relayml import tags as tag
from relayml.config import Settings
from relayml.errors import RelayError, UsageError
from relayml.runs import Project, Run, get, open_project
from relayml.store import get_store

__all__ = ["Promotion", "champion_of", "promote"]


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
        >>> p = relay.promote("training/logreg@latest", alias="staging")
        >>> p.to_dict()["uri"], p.version >= 1
        ('models:/fraud@staging', True)
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
    before = store.model_version_by_alias(name, alias)
    version = store.register_model_version(run.model_uri, name)
    store.set_registered_model_alias(name, alias, version)
    store.set_model_version_tags(
        name,
        version,
        {tag.KEY: str(run.key), tag.RUN_ID: run.run_id, tag.DATA: run.data_version or ""},
    )
    previous = before["version"] if before else None
    return Promotion(name, version, alias, run, run.model_uri, previous)


def champion_of(settings: Settings, alias: str) -> tuple[int, Run] | None:
    """The version an alias points at and its training run, or None when it is not set.

    Raises:
        RelayError: the alias points at a version whose run was deleted.

    Example:
        >>> champion_of(relay.open_project(), "no-such-alias") is None
        True
    """
    found = get_store(settings).model_version_by_alias(settings.project, alias)
    if found is None:
        return None
    version, run_id = found["version"], found["run_id"]
    entity = get_store(settings).get_run(run_id) if run_id else None
    if entity is None or tag.KEY not in entity.data.tags:
        raise RelayError(
            f"alias {alias!r} of {settings.project!r} points at version {version}, whose run "
            f"{run_id} is gone; set it again with 'relay promote REF --alias {alias}'"
        )
    return version, Run(settings, entity)
