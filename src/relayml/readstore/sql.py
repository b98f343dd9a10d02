"""The read path on an MLflow tracking database: read-only SQL through the database's driver.

MLflow's own SQLAlchemy store costs about a second to import and builds ORM objects; relayml's
reads are a handful of indexed queries on a few tables (``runs``, ``tags``, ``params``,
``latest_metrics``, ``experiments``, ``inputs``, ``datasets``), so this reader runs them
directly through the DB-API driver (``sqlite3``, psycopg 3) with bound parameters, on
connections that cannot write (SQLite ``PRAGMA query_only``, PostgreSQL
``default_transaction_read_only``). Not importing SQLAlchemy either keeps a read under half a
second. It answers only for the schema versions it was checked against (MLflow's
``alembic_version``); on any other version :func:`open_sql_reader` returns None and the store
uses MLflow's client. It must not import MLflow.

Example:
    >>> reader = open_sql_reader("sqlite:///.relay/mlflow.db")
    >>> sorted(reader.experiments("fraud/"))[:2]
    ['fraud/chains', 'fraud/load']
    >>> reader.close()
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relayml.readstore.filters import ATTRIBUTES, Clause, parse, parse_order
from relayml.readstore.records import (
    DatasetRecord,
    RunData,
    RunInfo,
    RunRecord,
    Unsupported,
    sorted_datasets,
)

__all__ = ["KNOWN_SCHEMAS", "SqlReader", "open_sql_reader"]

# MLflow schema heads (alembic revisions) whose tables this reader was checked against; a
# test fails when the installed MLflow creates a head missing here.
KNOWN_SCHEMAS = frozenset({"dc11669786a5"})
_CHUNK = 500  # ids per IN list
_RUN_COLUMNS = (
    "run_uuid, name, status, start_time, end_time, lifecycle_stage, artifact_uri, experiment_id"
)
_OPS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "LIKE": "LIKE"}


def open_sql_reader(uri: str) -> SqlReader | None:
    """A reader on the tracking database ``uri``, or None when its schema is not known.

    None also for a SQLite file that does not exist yet (MLflow's client creates it).

    Example:
        >>> open_sql_reader("sqlite:////nonexistent/mlflow.db") is None
        True
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            return None
    elif not uri.startswith("postgresql"):
        return None
    reader = SqlReader(uri)
    try:
        version = reader.schema_version()
    except Exception:
        reader.close()
        return None
    if version not in KNOWN_SCHEMAS:
        reader.close()
        return None
    return reader


class SqlReader:
    """Read-only queries on an MLflow tracking database (see the module's docstring).

    One connection per thread, opened on first use; SQL is written with ``?`` placeholders
    and bound by the driver (``%s`` for psycopg).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.sqlite = uri.startswith("sqlite")
        self._local = threading.local()
        self._open: list[Any] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the connections."""
        with self._lock:
            for con in self._open:
                with contextlib.suppress(Exception):  # a finished thread's: nothing to release
                    con.close()
            self._open.clear()
        self._local = threading.local()

    def _connection(self) -> Any:
        con = getattr(self._local, "con", None)
        if con is None:
            con = _connect_sqlite(self.uri) if self.sqlite else _connect_postgres(self.uri)
            self._local.con = con
            with self._lock:
                self._open.append(con)
        return con

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read-only query written with ``?`` placeholders.

        Example:
            >>> reader = open_sql_reader("sqlite:///.relay/mlflow.db")
            >>> reader.rows("SELECT COUNT(*) FROM experiments WHERE name = ?", ["fraud/load"])
            [(1,)]
            >>> reader.close()
        """
        con = self._connection()
        if self.sqlite:
            return list(con.execute(sql, tuple(params)).fetchall())
        with con.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            return list(cur.fetchall())

    def schema_version(self) -> str | None:
        """MLflow's schema revision (``alembic_version``), None when there is none."""
        rows = self.rows("SELECT version_num FROM alembic_version")
        return rows[0][0] if len(rows) == 1 else None

    # -- experiments -----------------------------------------------------------------------

    def experiments(self, prefix: str) -> dict[str, str]:
        """``{name: id}`` of active experiments whose name starts with ``prefix``."""
        pattern = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
        found = self.rows(
            "SELECT name, experiment_id FROM experiments"
            " WHERE lifecycle_stage = 'active' AND name LIKE ? ESCAPE '/'",
            [pattern],
        )
        return {name: str(i) for name, i in found if name.startswith(prefix)}

    def experiment(self, name: str) -> tuple[str, str] | None:
        """``(id, lifecycle stage)`` of the experiment named ``name``, or None."""
        found = self.rows(
            "SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ?", [name]
        )
        return (str(found[0][0]), found[0][1]) if found else None

    # -- runs ------------------------------------------------------------------------------

    def search(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        *,
        order_by: Sequence[str] = (),
        limit: int | None = None,
        deleted: bool = False,
    ) -> list[RunRecord]:
        """Runs of the experiments matching the filter, newest first (MLflow's order).

        Raises:
            Unsupported: a filter or order outside what :mod:`.filters` understands.
        """
        clauses = parse(filter_string)
        parse_order(list(order_by))
        ids = [int(i) for i in experiment_ids]
        if not ids:
            return []
        where = [f"experiment_id IN ({_marks(ids)})", "lifecycle_stage = ?"]
        params: list[Any] = [*ids, "deleted" if deleted else "active"]
        for c in clauses:
            sql, values = _condition(c)
            where.append(sql)
            params += values
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)}"
            " ORDER BY start_time IS NULL, start_time DESC, run_uuid"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._records(self.rows(sql, params))

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id (active or deleted), or None."""
        found = self._records(
            self.rows(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_uuid = ?", [run_id])
        )
        return found[0] if found else None

    def newest_tagged(
        self,
        experiment_ids: Sequence[int],
        key: str,
        value: str,
        *,
        limit: int,
        cap: int,
        common: bool = False,
    ) -> tuple[list[str], int]:
        """Ids of the newest active runs tagged ``key = value`` (at most ``limit``) and how
        many there are (counted up to ``cap``): two indexed queries, no run loaded.

        ``common``: the value is held by a large share of the runs: walk the runs newest
        first instead of sorting every match.
        """
        match = (
            " FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid WHERE t.key = ?"
            " AND t.value = ? AND r.lifecycle_stage = 'active'"
            f" AND r.experiment_id IN ({_marks(experiment_ids)})"
        )
        bound = [key, value, *experiment_ids]
        # "+ 0": sort the few matching rows rather than let SQLite walk the experiment's runs
        # by start time probing each one's tags (2 s at 10,000 runs); common values: walk
        order = f" ORDER BY r.start_time{'' if common else ' + 0'} DESC LIMIT ?"
        run_ids = [row[0] for row in self.rows(f"SELECT t.run_uuid{match}{order}", [*bound, limit])]
        total = len(run_ids)
        if total == limit:
            counted = self.rows(
                f"SELECT COUNT(*) FROM (SELECT 1{match} LIMIT ?) AS found", [*bound, cap]
            )
            total = int(counted[0][0])
        return run_ids, total

    def _records(self, rows: list[tuple[Any, ...]]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [row[0] for row in rows]
        tags = self._by_run("tags", ids)
        params = self._by_run("params", ids)
        metrics = self._metrics(ids)
        datasets = self._datasets(ids)
        out = []
        for run_id, name, status, start, end, stage, artifact_uri, experiment_id in rows:
            info = RunInfo(
                run_id, str(experiment_id), name, status, start, end, stage, artifact_uri
            )
            data = RunData(tags.get(run_id, {}), params.get(run_id, {}), metrics.get(run_id, {}))
            out.append(RunRecord(info, data, sorted_datasets(datasets.get(run_id, []))))
        return out

    def _by_run(self, table: str, ids: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for chunk in _chunks(ids):
            sql = f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({_marks(chunk)})"
            for run_id, key, value in self.rows(sql, chunk):
                out.setdefault(run_id, {})[key] = value
        return out

    def _metrics(self, ids: list[str]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for chunk in _chunks(ids):
            sql = (
                "SELECT run_uuid, key, value, is_nan FROM latest_metrics"
                f" WHERE run_uuid IN ({_marks(chunk)})"
            )
            for run_id, key, value, is_nan in self.rows(sql, chunk):
                out.setdefault(run_id, {})[key] = math.nan if is_nan else float(value)
        return out

    def _datasets(self, ids: list[str]) -> dict[str, list[DatasetRecord]]:
        out: dict[str, list[DatasetRecord]] = {}
        for chunk in _chunks(ids):
            sql = (
                "SELECT i.destination_id, d.name, d.digest, d.dataset_source_type,"
                " d.dataset_source, (SELECT it.value FROM input_tags it"
                " WHERE it.input_uuid = i.input_uuid AND it.name = 'mlflow.data.context')"
                " FROM inputs i JOIN datasets d ON d.dataset_uuid = i.source_id"
                " WHERE i.destination_type = 'RUN' AND i.source_type = 'DATASET'"
                f" AND i.destination_id IN ({_marks(chunk)})"
            )
            for run_id, name, digest, stype, source, ctx in self.rows(sql, chunk):
                out.setdefault(run_id, []).append(DatasetRecord(name, digest, stype, source, ctx))
        return out

    # -- registry --------------------------------------------------------------------------

    def model_versions(self, run_id: str) -> list[dict[str, Any]]:
        """``{name, version, aliases}`` of registered model versions made from the run."""
        found = self.rows(
            "SELECT name, version FROM model_versions"
            " WHERE run_id = ? AND current_stage != 'Deleted_Internal' ORDER BY name, version",
            [run_id],
        )
        out = []
        for name, version in found:
            aliases = self.rows(
                "SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ?",
                [name, version],
            )
            out.append(
                {"name": name, "version": int(version), "aliases": sorted(x for (x,) in aliases)}
            )
        return out


def _condition(c: Clause) -> tuple[str, list[Any]]:
    """SQL (``?`` placeholders) and values of one filter clause on the runs table."""
    if c.kind == "attributes":
        return _compare(ATTRIBUTES[c.key][0], c.op, c.value)
    if c.kind == "metrics":
        sql, values = _compare("value", c.op, c.value)
        return (
            "run_uuid IN (SELECT run_uuid FROM latest_metrics"
            f" WHERE key = ? AND {sql} AND is_nan = ?)",
            [c.key, *values, False],
        )
    if c.kind not in ("tags", "params"):
        raise Unsupported(f"filter on {c.kind}")
    sql, values = _compare("value", c.op, c.value)
    return f"run_uuid IN (SELECT run_uuid FROM {c.kind} WHERE key = ? AND {sql})", [c.key, *values]


def _compare(column: str, op: str, value: Any) -> tuple[str, list[Any]]:
    """``column <op> ?``; ILIKE as MLflow's stores run it (lower-cased LIKE)."""
    if op == "ILIKE":
        return f"LOWER({column}) LIKE LOWER(?)", [value]
    if op not in _OPS:
        raise Unsupported(f"operator {op}")
    return f"{column} {_OPS[op]} ?", [value]


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _connect_sqlite(uri: str) -> sqlite3.Connection:
    """A connection that refuses writes, with MLflow's LIKE semantics (case-sensitive)."""
    con = sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=30, check_same_thread=False)
    con.execute("PRAGMA query_only = ON")
    con.execute("PRAGMA case_sensitive_like = true")
    return con


def _connect_postgres(uri: str) -> Any:
    """A psycopg 3 connection in read-only autocommit mode (each query sees the newest rows)."""
    import psycopg

    scheme, rest = uri.split("://", 1)
    if scheme not in ("postgresql", "postgresql+psycopg", "postgres"):
        raise Unsupported(f"driver {scheme}")
    return psycopg.connect(
        f"postgresql://{rest}", autocommit=True, options="-c default_transaction_read_only=on"
    )
