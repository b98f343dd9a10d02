"""The MLflow boundary: the only package that imports ``mlflow.tracking``, creates an
``MlflowClient``, calls the model registry or sets a tracking URI.

- :mod:`relayml.store.tracking`: :class:`Store` (experiments by name, run search, writes,
  artifacts) and :func:`get_store`;
- :mod:`relayml.store.registry`: registered models, versions, aliases, logged models;
- :mod:`relayml.store.deletion`: deleting artifacts and purging rows marked deleted (the
  one place that calls MLflow's private purge methods);
- :mod:`relayml.store.backend`: the backend database (schema, relay's indexes, ``mlflow
  gc``) and how values are written (quoting, redaction).

Everything relayml writes is plain MLflow: tags under ``relay.``, params, metrics, artifacts,
dataset inputs, models and registry aliases.

Example:
    >>> from relayml.store import get_store
    >>> store = get_store(relay.open_project())
    >>> store.experiment_id("load") == store.step_experiments()["load"]
    True
"""

from __future__ import annotations

from relayml.readstore.files import local_path
from relayml.store.backend import (
    EXPERIMENT_KIND,
    PAGE,
    ensure_indexes,
    experiment_description,
    param_value,
    prepare_backend,
    purge_deleted,
    quote,
)
from relayml.store.tracking import _STORES as _STORES  # bench/resolve.py clears it
from relayml.store.tracking import Store, activate_uris, active_uris, current_store, get_store

__all__ = [
    "EXPERIMENT_KIND",
    "PAGE",
    "Store",
    "activate_uris",
    "active_uris",
    "current_store",
    "ensure_indexes",
    "experiment_description",
    "get_store",
    "local_path",
    "param_value",
    "prepare_backend",
    "purge_deleted",
    "quote",
]
