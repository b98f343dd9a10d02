"""MLflow's fluent API follows the project's store, even when MLflow is imported later.

relayml points MLflow's process-wide tracking and registry URIs at the store a command uses
(:meth:`relayml.store.Store.activate`), for the code that loads or logs models through
``mlflow.*``. Reads no longer import MLflow, so when it is not loaded yet the activation waits
for its import: a one-shot import hook runs it right after the ``mlflow`` package has loaded.
This module must not import MLflow.

Example:
    >>> follow(store)  # doctest: +SKIP
    >>> import mlflow; mlflow.get_tracking_uri()  # doctest: +SKIP
    'sqlite:////work/fraud/.relay/mlflow.db'
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

__all__ = ["follow"]

_FOLLOWED: list[Any] = []  # the store MLflow's fluent API is to point at


def follow(store: Any) -> None:
    """Point MLflow's process-wide (fluent) API at ``store``: now when MLflow is loaded, else
    as soon as something imports it (model loading, serving), so reads stay MLflow-free."""
    _FOLLOWED[:] = [store]
    if "mlflow" in sys.modules:
        store.activate()
    elif not any(isinstance(f, _ActivateOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ActivateOnImport())


class _ActivateOnImport(importlib.abc.MetaPathFinder):
    """Runs :meth:`Store.activate` of the followed store right after ``mlflow`` is imported."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "mlflow":
            return None
        sys.meta_path.remove(self)  # once: find the real package below
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ActivatingLoader(spec.loader)
        return spec


class _ActivatingLoader(importlib.abc.Loader):
    """MLflow's own loader, plus the activation after the package has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # resource readers, get_data, is_package, ...
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        if _FOLLOWED:
            _FOLLOWED[0].activate()
