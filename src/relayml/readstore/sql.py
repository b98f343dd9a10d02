"""The read path on an MLflow tracking database: read-only SQL with SQLAlchemy Core.

MLflow's own SQLAlchemy store costs about a second to import and builds ORM objects; relayml's
reads are a handful of indexed queries on five tables (``runs``, ``tags``, ``params``,
``latest_metrics``, ``experiments``), so this reader runs them directly, with bound
parameters, on connections that cannot write (SQLite ``PRAGMA query_only``, PostgreSQL
``default_transaction_read_only``). It answers only for the schema versions it was checked
against (MLflow's ``alembic_version``); on any other version :func:`open_sql_reader` returns
None and the store uses MLflow's client. It must not import MLflow.

Example:
    >>> reader = open_sql_reader("sqlite:////work/fraud/.relay/mlflow.db")  # doctest: +SKIP
    >>> reader.experiments("fraud/")  # doctest: +SKIP
    {'fraud/load': '1', 'fraud/processing': '2'}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml.readstore.filters import ATTRIBUTES, parse, parse_order
from relayml.readstore.records import (
    DatasetRecord,
    RunData,
    RunInfo,
    RunRecord,
    Unsupported,
    sorted_datasets,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["KNOWN_SCHEMAS", "SqlReader", "open_sql_reader"]

# MLflow schema heads (alembic revisions) whose tables this reader was checked against; a
# test fails when the installed MLflow creates a head missing here.
KNOWN_SCHEMAS = frozenset({"dc11669786a5"})
_CHUNK = 500  # ids per IN list


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
    """Read-only queries on an MLflow tracking database (see the module's docstring)."""

    def __init__(self, uri: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.uri = uri
        if uri.startswith("sqlite"):
            self.engine = sa.create_engine(uri, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_read_only)
        else:
            self.engine = sa.create_engine(
                uri,
                connect_args={"options": "-c default_transaction_read_only=on"},
                pool_pre_ping=False,
            )
        self._t: dict[str, sa.TableClause] = {}

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    def _table(self, name: str, *columns: str) -> sa.TableClause:
        if name not in self._t:
            self._t[name] = self._sa.table(name, *(self._sa.column(c) for c in columns))
        return self._t[name]

    def _rows(self, query: Any) -> list[Any]:
        with self.engine.connect() as con:
            if self.uri.startswith("sqlite"):
                con.exec_driver_sql("PRAGMA case_sensitive_like = true")  # as MLflow's store
            return list(con.execute(query))

    def schema_version(self) -> str | None:
        """MLflow's schema revision (``alembic_version``), None when there is none."""
        t = self._table("alembic_version", "version_num")
        rows = self._rows(self._sa.select(t.c.version_num))
        return rows[0][0] if len(rows) == 1 else None

    # -- experiments -----------------------------------------------------------------------

    def experiments(self, prefix: str) -> dict[str, str]:
        """``{name: id}`` of active experiments whose name starts with ``prefix``."""
        sa = self._sa
        e = self._experiments()
        query = sa.select(e.c.name, e.c.experiment_id).where(
            e.c.lifecycle_stage == "active", e.c.name.startswith(prefix, autoescape=True)
        )
        return {name: str(i) for name, i in self._rows(query) if name.startswith(prefix)}

    def experiment(self, name: str) -> tuple[str, str] | None:
        """``(id, lifecycle stage)`` of the experiment named ``name``, or None."""
        e = self._experiments()
        rows = self._rows(
            self._sa.select(e.c.experiment_id, e.c.lifecycle_stage).where(e.c.name == name)
        )
        return (str(rows[0][0]), rows[0][1]) if rows else None

    def _experiments(self) -> sa.TableClause:
        return self._table("experiments", "experiment_id", "name", "lifecycle_stage")

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
        sa = self._sa
        clauses = parse(filter_string)
        parse_order(list(order_by))
        r = self._runs()
        conditions = [
            r.c.experiment_id.in_([int(i) for i in experiment_ids]),
            r.c.lifecycle_stage == ("deleted" if deleted else "active"),
        ]
        for c in clauses:
            conditions.append(self._condition(r, c))
        query = (
            sa.select(*r.c)
            .where(*conditions)
            .order_by(r.c.start_time.is_(None), r.c.start_time.desc(), r.c.run_uuid)
        )
        if limit is not None:
            query = query.limit(limit)
        return self._records(self._rows(query))

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id (active or deleted), or None."""
        r = self._runs()
        found = self._records(self._rows(self._sa.select(*r.c).where(r.c.run_uuid == run_id)))
        return found[0] if found else None

    def _runs(self) -> sa.TableClause:
        return self._table(
            "runs", "run_uuid", "name", "status", "start_time", "end_time",
            "lifecycle_stage", "artifact_uri", "experiment_id",
        )  # fmt: skip

    def _condition(self, r: sa.TableClause, c: Any) -> Any:
        sa = self._sa
        if c.kind == "attributes":
            column = r.c[ATTRIBUTES[c.key][0]]
            return _compare(column, c.op, c.value)
        if c.kind == "metrics":
            m = self._table("latest_metrics", "run_uuid", "key", "value", "is_nan")
            sub = sa.select(m.c.run_uuid).where(
                m.c.key == c.key, _compare(m.c.value, c.op, c.value), m.c.is_nan == sa.false()
            )
            return r.c.run_uuid.in_(sub)
        t = self._table(c.kind, "run_uuid", "key", "value")
        sub = sa.select(t.c.run_uuid).where(t.c.key == c.key, _compare(t.c.value, c.op, c.value))
        return r.c.run_uuid.in_(sub)

    def _records(self, rows: list[Any]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [row.run_uuid for row in rows]
        tags = self._by_run("tags", ids)
        params = self._by_run("params", ids)
        metrics = self._metrics(ids)
        datasets = self._datasets(ids)
        out = []
        for row in rows:
            info = RunInfo(
                row.run_uuid, str(row.experiment_id), row.name, row.status, row.start_time,
                row.end_time, row.lifecycle_stage, row.artifact_uri,
            )  # fmt: skip
            data = RunData(
                tags.get(row.run_uuid, {}),
                params.get(row.run_uuid, {}),
                metrics.get(row.run_uuid, {}),
            )
            out.append(RunRecord(info, data, sorted_datasets(datasets.get(row.run_uuid, []))))
        return out

    def _by_run(self, table: str, ids: list[str]) -> dict[str, dict[str, str]]:
        t = self._table(table, "run_uuid", "key", "value")
        out: dict[str, dict[str, str]] = {}
        for chunk in _chunks(ids):
            for run_id, key, value in self._rows(
                self._sa.select(t.c.run_uuid, t.c.key, t.c.value).where(t.c.run_uuid.in_(chunk))
            ):
                out.setdefault(run_id, {})[key] = value
        return out

    def _metrics(self, ids: list[str]) -> dict[str, dict[str, float]]:
        m = self._table("latest_metrics", "run_uuid", "key", "value", "is_nan")
        out: dict[str, dict[str, float]] = {}
        for chunk in _chunks(ids):
            query = self._sa.select(m.c.run_uuid, m.c.key, m.c.value, m.c.is_nan).where(
                m.c.run_uuid.in_(chunk)
            )
            for run_id, key, value, is_nan in self._rows(query):
                out.setdefault(run_id, {})[key] = math.nan if is_nan else float(value)
        return out

    def _datasets(self, ids: list[str]) -> dict[str, list[DatasetRecord]]:
        sa = self._sa
        i = self._table(
            "inputs", "input_uuid", "source_type", "source_id", "destination_type", "destination_id"
        )
        d = self._table(
            "datasets", "dataset_uuid", "name", "digest", "dataset_source_type", "dataset_source"
        )
        it = self._table("input_tags", "input_uuid", "name", "value")
        context = (
            sa.select(it.c.value)
            .where(it.c.input_uuid == i.c.input_uuid, it.c.name == "mlflow.data.context")
            .scalar_subquery()
        )
        out: dict[str, list[DatasetRecord]] = {}
        for chunk in _chunks(ids):
            query = (
                sa.select(
                    i.c.destination_id,
                    d.c.name,
                    d.c.digest,
                    d.c.dataset_source_type,
                    d.c.dataset_source,
                    context,
                )
                .select_from(i.join(d, d.c.dataset_uuid == i.c.source_id))
                .where(
                    i.c.destination_type == "RUN",
                    i.c.source_type == "DATASET",
                    i.c.destination_id.in_(chunk),
                )
            )
            for run_id, name, digest, stype, source, ctx in self._rows(query):
                out.setdefault(run_id, []).append(DatasetRecord(name, digest, stype, source, ctx))
        return out

    # -- registry --------------------------------------------------------------------------

    def model_versions(self, run_id: str) -> list[dict[str, Any]]:
        """``{name, version, aliases}`` of registered model versions made from the run."""
        sa = self._sa
        v = self._table("model_versions", "name", "version", "run_id", "current_stage")
        a = self._table("registered_model_aliases", "alias", "version", "name")
        rows = self._rows(
            sa.select(v.c.name, v.c.version)
            .where(v.c.run_id == run_id, v.c.current_stage != "Deleted_Internal")
            .order_by(v.c.name, v.c.version)
        )
        out = []
        for name, version in rows:
            aliases = self._rows(
                sa.select(a.c.alias).where(a.c.name == name, a.c.version == version)
            )
            out.append(
                {"name": name, "version": int(version), "aliases": sorted(x for (x,) in aliases)}
            )
        return out


def _compare(column: Any, op: str, value: Any) -> Any:
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == "LIKE":
        return column.like(value)
    if op == "ILIKE":
        return column.ilike(value)
    if op == "<":
        return column < value
    if op == "<=":
        return column <= value
    if op == ">":
        return column > value
    if op == ">=":
        return column >= value
    raise Unsupported(f"operator {op}")


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _sqlite_read_only(dbapi_connection: Any, record: Any) -> None:
    """Every SQLite connection of the reader refuses writes."""
    dbapi_connection.execute("PRAGMA query_only = ON")
