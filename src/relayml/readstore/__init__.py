"""Read paths that need no MLflow import: part of the store boundary, used only by
:mod:`relayml.store`.

``relay runs``, ``show``, ``lineage``, ``compare`` and chain resolution only read. Importing
MLflow's client and its SQLAlchemy store costs seconds, so the store reads through a
:class:`Reader` instead when it can:

* a tracking server (``http://``, ``https://``): MLflow's REST API with httpx
  (:mod:`relayml.readstore.rest`);
* a tracking database (SQLite, PostgreSQL) of a known schema version: read-only SQL with
  SQLAlchemy Core (:mod:`relayml.readstore.sql`).

Anything else (another database, an unknown schema, a query a reader cannot run exactly)
goes to MLflow's client, as do all writes. ``RELAY_READ_PATH=mlflow`` turns the read path off.

Example:
    >>> open_reader("file:///tmp/mlruns") is None
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from relayml.readstore.records import DatasetRecord, RunData, RunInfo, RunRecord, Unsupported

__all__ = [
    "DatasetRecord",
    "Reader",
    "RunData",
    "RunInfo",
    "RunRecord",
    "Unsupported",
    "open_reader",
]


class Reader(Protocol):
    """What a read path answers; every method may raise :class:`Unsupported`."""

    def experiments(self, prefix: str) -> dict[str, str]:
        """``{name: id}`` of active experiments whose name starts with ``prefix``."""

    def experiment(self, name: str) -> tuple[str, str] | None:
        """``(id, lifecycle stage)`` of an experiment by name, or None."""

    def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        *,
        order_by: Sequence[str] = (),
        limit: int | None = None,
        deleted: bool = False,
    ) -> list[RunRecord]:
        """Runs of the experiments matching an MLflow filter, newest first."""

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run by id (active or deleted), or None."""

    def model_versions(self, run_id: str) -> list[dict[str, Any]]:
        """``{name, version, aliases}`` of the registered versions made from a run."""


def open_reader(uri: str) -> Reader | None:
    """The read path for a tracking URI, or None where only MLflow's client can read.

    Example:
        >>> type(open_reader("http://127.0.0.1:5000")).__name__
        'RestReader'
    """
    if os.environ.get("RELAY_READ_PATH", "").lower() == "mlflow":
        return None
    if uri.startswith(("http://", "https://")):
        from relayml.readstore.rest import RestReader

        return RestReader(uri)
    if uri.startswith(("sqlite:///", "postgresql")):
        from relayml.readstore.sql import open_sql_reader

        return open_sql_reader(uri)
    return None
