"""What changed between two data versions: rows, schema and per-column drift.

:func:`diff_files` compares two Parquet snapshots out of core with DuckDB (memory is bounded by
DuckDB's limit, not by the size of the data) and reads each file once for the rows:

* Rows, with a key: one query scans each version once (its key and one hash of each row's
  values), joins them on the key (FULL OUTER JOIN) and aggregates the rows added, removed and
  changed (a change is any difference in a common column) and the smallest keys of each kind
  together, with their positions; only the row groups holding those few example rows are
  read again.
  Without a key: the rows found only in one version, as multisets of row hashes (a changed
  row is then one removed and one added).
* Sidecars: a snapshot written with a key keeps its rows' hashes beside it
  (``NAME.rowhash.parquet`` beside ``NAME.parquet``, :mod:`relayml.data_rowhash`). When both
  versions have one that matches the key, the columns (both versions have the same schema)
  and the snapshot's digest, the keyed query reads the two sidecars (key + 8 bytes a row)
  instead of decoding and hashing every value; the examples and the drift still read the
  snapshots. Otherwise (an older snapshot, a file from elsewhere) it hashes the snapshots:
  the result is the same either way.
* Schema changes.
* Drift: the population stability index (PSI) of numeric and time columns binned on the first
  version's deciles (nulls are a bin of their own), and for other columns the share of the
  second version's rows holding a value the first never held. On versions of more than
  400,000 rows the PSI is measured on whole Parquet row groups spread evenly over each file,
  at least 200,000 rows (a relay snapshot holds one row group per fetched batch; PSI's
  sampling noise there is about 10 bins / 200,000 rows: far below any threshold worth
  setting); deciles and histograms are numpy over those values.

:func:`diff` resolves references (load runs, or digests) to their snapshots and reads the
key declared on the load variant (``key=[...]``). It writes nothing.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> from relayml.data import snapshot_frame
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> a = snapshot_frame(pd.DataFrame({"id": [1, 2, 3], "v": [1.0, 2.0, 3.0]}), d / "a.pq")
    >>> b = snapshot_frame(pd.DataFrame({"id": [2, 3, 4], "v": [2.0, 9.0, 4.0]}), d / "b.pq")
    >>> result = diff_files(a.path, b.path, key=["id"])
    >>> result.added, result.removed, result.changed
    (1, 1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml import tags as tag
from relayml.data_rowhash import HASH_COLUMN, sidecar_for
from relayml.datadrift import drift, ident, is_binned, psi
from relayml.errors import NotFound, UsageError

if TYPE_CHECKING:
    import duckdb

    from relayml.runs import Project

__all__ = ["DataDiff", "Version", "diff", "diff_files", "psi", "rows_not_in", "snapshot_of"]

EXAMPLES = 5


@dataclass(frozen=True)
class Version:
    """One side of a diff.

    Attributes:
        label: what the user named (a run key or a digest).
        digest: the snapshot's content digest.
        path: the local Parquet file.
        key: the key columns declared on the load variant (empty when unknown).
    """

    label: str
    digest: str
    path: Path
    key: tuple[str, ...] = ()


@dataclass
class DataDiff:
    """The differences between two data versions (see the module docstring).

    Attributes:
        a: the first (older) version's label; ``b`` the second's.
        rows: ``{"a": n, "b": n}``.
        key: the key rows were matched on (empty: rows compared as wholes).
        added: rows in ``b`` only; ``removed``: in ``a`` only; ``changed``: same key,
            different values (``None`` without a key).
        examples: up to 5 rows of each kind (``changed`` shows ``{column: [old, new]}``).
        schema: ``added``/``removed`` columns (name -> type) and ``changed`` types.
        drift: column -> ``{"measure": "psi" | "new_categories", "value": float}``.

    Example:
        >>> d = relay.diff("load/transactions@latest", "load/transactions@latest")
        >>> d.to_dict()["key"], d.schema["added"], d.examples["changed"]
        (['id'], {}, [])
        >>> d.drift["Amount"]
        {'measure': 'psi', 'value': 0.0}
        >>> DataDiff("a", "b", {"a": 1, "b": 1}).to_dict()["rows"]
        {'a': 1, 'b': 1}
    """

    a: str
    b: str
    rows: dict[str, int]
    digests: dict[str, str] = field(default_factory=dict)
    key: list[str] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    changed: int | None = None
    examples: dict[str, list[Any]] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def max_drift(self) -> tuple[str | None, float]:
        """The column that drifted most by PSI, and its PSI (``(None, 0.0)`` without one).

        Example:
            >>> DataDiff("a", "b", {}, drift={"x": {"measure": "psi", "value": 0.3}}).max_drift
            ('x', 0.3)
        """
        psis = [(c, d["value"]) for c, d in self.drift.items() if d["measure"] == "psi"]
        return max(psis, key=lambda cv: cv[1]) if psis else (None, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``relay diff --json`` prints)."""
        return {
            "a": self.a,
            "b": self.b,
            "digests": self.digests,
            "rows": self.rows,
            "key": self.key,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "examples": self.examples,
            "schema": self.schema,
            "drift": self.drift,
        }


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _connect(memory_limit: str, threads: int | None) -> duckdb.DuckDBPyConnection:
    import os
    import tempfile

    import duckdb

    con = duckdb.connect(config={"memory_limit": memory_limit})
    con.execute(f"SET threads = {int(threads or min(4, os.cpu_count() or 1))}")
    con.execute(f"SET temp_directory = {_literal(Path(tempfile.gettempdir()) / 'relay-duckdb')}")
    con.execute("SET preserve_insertion_order = false")
    return con


def diff_files(
    a: Path,
    b: Path,
    *,
    key: Sequence[str] = (),
    labels: tuple[str, str] | None = None,
    memory_limit: str = "512MB",
    threads: int | None = None,
) -> DataDiff:
    """Compare two Parquet snapshots out of core (see the module docstring).

    Args:
        a: the first (reference) snapshot.
        b: the second (new) snapshot.
        key: columns identifying a row in both; empty compares whole rows.
        labels: names shown for ``a`` and ``b`` (default: the file names).
        memory_limit: DuckDB's memory limit (it spills to a temporary folder beyond it).
        threads: DuckDB threads (default: up to 4).

    Returns:
        The :class:`DataDiff`.

    Raises:
        UsageError: a key column missing from either snapshot.

    Example:
        >>> import pandas as pd, tempfile, pathlib
        >>> from relayml.data import snapshot_frame
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = snapshot_frame(pd.DataFrame({"c": ["x", "y"]}), d / "a.pq")
        >>> _ = snapshot_frame(pd.DataFrame({"c": ["x", "z", "z", "x"]}), d / "b.pq")
        >>> diff_files(d / "a.pq", d / "b.pq").drift["c"]
        {'measure': 'new_categories', 'value': 0.5}
    """
    con = _connect(memory_limit, threads)
    try:
        con.execute(f"CREATE VIEW a AS SELECT * FROM read_parquet({_literal(Path(a))})")
        con.execute(f"CREATE VIEW b AS SELECT * FROM read_parquet({_literal(Path(b))})")
        types = {v: _types(con, v) for v in ("a", "b")}
        la, lb = labels or (Path(a).name, Path(b).name)
        key = list(key)
        for side, label in (("a", la), ("b", lb)):
            missing = [k for k in key if k not in types[side]]
            if missing:
                raise UsageError(
                    f"key column(s) {missing} are not in {label} (its columns: "
                    f"{', '.join(types[side])}); declare key=[...] on the load variant or "
                    "pass --key"
                )
        rows = {v: con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] for v in ("a", "b")}
        common = [c for c in types["a"] if c in types["b"] and types["a"][c] == types["b"][c]]
        out = DataDiff(la, lb, rows, key=key, schema=_schema_changes(types))
        values = [c for c in common if c not in key]
        binned = [c for c in values if is_binned(types["a"][c])]
        if key:
            same = list(types["a"].items()) == list(types["b"].items())
            sides = [sidecar_for(Path(p), key, values) if same else None for p in (a, b)]
            _keyed(con, out, key, values, (a, b), sides if None not in sides else None)
        else:
            _unkeyed(con, out, common)
        others = [c for c in values if c not in binned]
        paths = {"a": Path(a), "b": Path(b)}
        out.drift = drift(con, paths, binned, others, types["a"], rows)
        return out
    finally:
        con.close()


def _types(con: duckdb.DuckDBPyConnection, view: str) -> dict[str, str]:
    return {row[0]: row[1] for row in con.execute(f"DESCRIBE {view}").fetchall()}


def _schema_changes(types: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    a, b = types["a"], types["b"]
    return {
        "added": {c: t for c, t in b.items() if c not in a},
        "removed": {c: t for c, t in a.items() if c not in b},
        "changed": {c: [a[c], b[c]] for c in a if c in b and a[c] != b[c]},
    }


def _row_hash(alias: str, columns: Sequence[str]) -> str:
    if not columns:
        return "0"
    return "hash(" + ", ".join(f"{alias}.{ident(c)}" for c in columns) + ")"


def _keyed(
    con: duckdb.DuckDBPyConnection,
    out: DataDiff,
    key: list[str],
    values: list[str],
    paths: Sequence[Path],
    sidecars: Sequence[Path | None] | None = None,
) -> None:
    """Rows added, removed and changed, and a few of each, in one pass over each version.

    One query scans each version once (its key, one hash of each row's values and the row's
    position, read from the two sidecars when both serve, else computed over the snapshot),
    joins them on the key (FULL OUTER JOIN, DuckDB's hash join) and aggregates the three
    counts and the smallest keys of each kind (``min(key, n)``) with their positions together:
    no temporary table, no second join. The example rows are then read by position, each
    Parquet row group that holds one decoded once.
    """
    keys = ", ".join(ident(k) for k in key)
    on = " AND ".join(f"x.{ident(k)} = y.{ident(k)}" for k in key)
    kx = ", ".join(f"x.{ident(k)}" for k in key)
    ky = ", ".join(f"y.{ident(k)}" for k in key)
    files = [_literal(Path(p)) for p in (sidecars or paths)]
    side = {  # a sidecar holds its snapshot's rows in the snapshot's order
        v: f"SELECT {keys}, {HASH_COLUMN if sidecars else _row_hash(v, values)} AS h__, "
        f"file_row_number AS p__ FROM read_parquet({f}, file_row_number = true) {v}"
        for v, f in zip(("a", "b"), files, strict=True)
    }
    added, removed, changed, ex_added, ex_removed, ex_changed = con.execute(
        f"""SELECT count(*) FILTER (WHERE x.h__ IS NULL),
                   count(*) FILTER (WHERE y.h__ IS NULL),
                   count(*) FILTER (WHERE x.h__ <> y.h__),
                   min(row({ky}, y.p__), {EXAMPLES}) FILTER (WHERE x.h__ IS NULL),
                   min(row({kx}, x.p__), {EXAMPLES}) FILTER (WHERE y.h__ IS NULL),
                   min(row({kx}, x.p__, y.p__), {EXAMPLES}) FILTER (WHERE x.h__ <> y.h__)
            FROM ({side["a"]}) x FULL OUTER JOIN ({side["b"]}) y ON {on}"""
    ).fetchone()
    out.added, out.removed, out.changed = int(added), int(removed), int(changed)
    n = len(key)
    adds, removes, changes = _tuples(ex_added), _tuples(ex_removed), _tuples(ex_changed)
    old = _rows_at(paths[0], [t[n] for t in removes] + [t[n] for t in changes])
    new = _rows_at(paths[1], [t[n] for t in adds] + [t[n + 1] for t in changes])
    out.examples = {
        "added": [new[t[n]] for t in adds],
        "removed": [old[t[n]] for t in removes],
        "changed": [
            {
                "key": {k: old[t[n]][k] for k in key},
                "changes": {
                    c: [old[t[n]][c], new[t[n + 1]][c]]
                    for c in values
                    if old[t[n]][c] != new[t[n + 1]][c]
                },
            }
            for t in changes
        ],
    }


def _tuples(keys: list[Any] | None) -> list[tuple[Any, ...]]:
    """The rows ``min(row(...), n)`` returned, as tuples (``None``: no row of that kind)."""
    return [tuple(k.values()) if isinstance(k, dict) else tuple(k) for k in keys or []]


def _rows_at(path: Path, positions: list[int]) -> dict[int, dict[str, Any]]:
    """The rows of a Parquet file at these positions: only the row groups holding them are read.

    Example:
        >>> import pandas as pd, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.parquet"
        >>> pd.DataFrame({"id": [7, 8, 9]}).to_parquet(p, row_group_size=2)
        >>> _rows_at(p, [2, 0])
        {0: {'id': 7}, 2: {'id': 9}}
    """
    import bisect

    import pyarrow.parquet as pq

    if not positions:
        return {}
    pf = pq.ParquetFile(path)
    starts = [0]
    for i in range(pf.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
    wanted: dict[int, list[int]] = {}
    for p in sorted(set(positions)):
        wanted.setdefault(bisect.bisect_right(starts, p) - 1, []).append(p)
    names = pf.schema_arrow.names
    found: dict[int, dict[str, Any]] = {}
    for group, rows in wanted.items():
        table = pf.read_row_group(group).take([p - starts[group] for p in rows])
        for p, row in zip(rows, table.to_pylist(), strict=True):
            found[p] = {n: _plain(row[n]) for n in names}
    return found


def _unkeyed(con: duckdb.DuckDBPyConnection, out: DataDiff, common: list[str]) -> None:
    """Rows found only in one version (as multisets of row hashes), in one pass of each."""
    both = f"SELECT {_row_hash('a', common)} AS h__, 0 AS s__ FROM a UNION ALL " + (
        f"SELECT {_row_hash('b', common)}, 1 FROM b"
    )
    added, removed = con.execute(
        f"""SELECT coalesce(sum(greatest(nb - na, 0)), 0), coalesce(sum(greatest(na - nb, 0)), 0)
            FROM (SELECT count(*) FILTER (WHERE s__ = 0) AS na,
                         count(*) FILTER (WHERE s__ = 1) AS nb
                  FROM ({both}) GROUP BY h__)"""
    ).fetchone()
    out.added, out.removed, out.changed = int(added), int(removed), None


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return str(value)


def rows_not_in(frame: Any, path: Path, key: Sequence[str]) -> Any:
    """The rows of a DataFrame whose key is absent from a Parquet snapshot (DuckDB anti-join).

    Args:
        frame: a pandas DataFrame holding the key columns.
        path: the snapshot.
        key: the key columns.

    Returns:
        The matching rows of ``frame``, in their order, index reset.

    Example:
        >>> import pandas as pd, tempfile, pathlib
        >>> from relayml.data import snapshot_frame
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.pq"
        >>> _ = snapshot_frame(pd.DataFrame({"id": [1, 2]}), p)
        >>> rows_not_in(pd.DataFrame({"id": [2, 3], "v": [0.1, 0.2]}), p, ["id"])["id"].tolist()
        [3]
    """
    con = _connect("512MB", None)
    try:
        con.register("fresh", frame.reset_index(drop=True))
        keys = ", ".join(ident(k) for k in key)
        on = " AND ".join(f"f.{ident(k)} = s.{ident(k)}" for k in key)
        return (
            con.execute(
                f"SELECT f.* FROM (SELECT *, row_number() OVER () AS rn__ FROM fresh) f ANTI JOIN "
                f"(SELECT {keys} FROM read_parquet({_literal(Path(path))})) s ON {on} ORDER BY rn__"
            )
            .df()
            .drop(columns="rn__")
        )
    finally:
        con.close()


# -- references -------------------------------------------------------------------------------


def diff(
    a: str,
    b: str | None = None,
    *,
    key: Sequence[str] | None = None,
    snapshot: str | None = None,
    project: Project = None,
) -> DataDiff:
    """Compare two data versions, each a load run's reference or a data version digest.

    Args:
        a: the reference version: a run key or reference (``load/transactions@latest``), a
            run id, or a digest (or a prefix of 8+ hex digits).
        b: the new version, likewise. Without it, ``a`` is the new version and the reference
            is the load run of the same variant just before it.
        key: the columns matching rows (default: ``key=[...]`` declared on the load variant).
        snapshot: which snapshot of a load run that took several (default: the first).
        project: the project (default: around the working folder).

    Returns:
        The :class:`DataDiff`.

    Raises:
        NotFound: no load run or snapshot matches a reference or digest, or no load before
            ``a`` when ``b`` is not given.
        UsageError: a run that is not a load run, or a key column missing.

    Example:
        >>> d = relay.diff("load/transactions@latest", "load/transactions@latest")
        >>> d.key, (d.added, d.removed, d.changed), d.rows["a"] == d.rows["b"] > 0
        (['id'], (0, 0, 0), True)
        >>> d.max_drift[1]
        0.0

        Without ``b``, ``a`` is compared with the load of the same variant just before it
        (here there is none):

        >>> relay.diff("load/transactions@latest")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relayml.errors.NotFound: no finished load of load/transactions before ...
    """
    from relayml.runs import open_project

    settings = open_project(project)
    if b is None:
        a, b = _previous_load(a, settings), a
    va, vb = snapshot_of(a, settings, snapshot), snapshot_of(b, settings, snapshot)
    chosen = list(key) if key else list(va.key or vb.key)
    out = diff_files(va.path, vb.path, key=chosen, labels=(va.label, vb.label))
    out.digests = {"a": va.digest, "b": vb.digest}
    return out


def _previous_load(ref: str, settings: Any) -> str:
    """The key of the FINISHED load run of the same variant just before ``ref``."""
    from relayml.runs import get, runs

    run = get(ref, project=settings)
    before = [
        r
        for r in runs(run.step, variant=run.variant, status="FINISHED", project=settings)
        if r.key.time < run.key.time and r.data_version
    ]
    if not before:
        raise NotFound(
            f"no finished load of {run.step}/{run.variant} before {run.key}; name both "
            "versions: relay diff A B"
        )
    return str(before[0].key)


def _load_by_digest(ref: str, settings: Any) -> str:
    """The run id of a finished load run whose data version starts with ``ref``."""
    from relayml.store import get_store, quote

    if len(ref) < 8:
        raise UsageError(f"data version {ref!r} is too short; give at least 8 hex digits")
    flt = f"tags.`{tag.DATA}` LIKE {quote(ref + '%')} AND attributes.status = 'FINISHED'"
    found = [e for e in get_store(settings).search(None, flt) if tag.KEY in e.data.tags]
    loads = [e for e in found if not any(k.startswith(tag.UPSTREAM) for k in e.data.tags)]
    if not loads:
        raise NotFound(f"no load run has data version {ref!r}; list them with 'relay runs load'")
    return str(loads[0].info.run_id)


def snapshot_of(ref: str, settings: Any, snapshot: str | None = None) -> Version:
    """The snapshot behind a load run reference or a digest, as a :class:`Version`.

    Raises:
        NotFound: no load run or snapshot matches.
        UsageError: the run took no snapshot.

    Example:
        >>> v = snapshot_of("load/transactions@latest", relay.open_project())
        >>> v.key, v.path.suffix, len(v.digest)
        (('id',), '.parquet', 32)
    """
    from relayml.outputs import snapshot_path, snapshot_sidecar
    from relayml.runs import get

    is_digest = "@" not in ref and "/" not in ref and all(ch in "0123456789abcdef" for ch in ref)
    run = None
    if not is_digest or len(ref) == 32:
        try:
            run = get(ref, project=settings)
        except NotFound:
            if not is_digest:
                raise
    if run is None:
        run = get(_load_by_digest(ref, settings), project=settings)
    snaps = {
        k.removeprefix(tag.SNAPSHOT): v
        for k, v in run.tags.items()
        if k.startswith(tag.SNAPSHOT) and k.count(".") == 2
    }
    if not snaps:
        raise UsageError(
            f"run {run.key} holds no snapshot: relay diff compares load runs (or digests)"
        )
    name = snapshot or next(iter(sorted(snaps)))
    if name not in snaps:
        raise NotFound(f"run {run.key} has no snapshot {name!r} (it has: {', '.join(snaps)})")
    digest = run.tags.get(tag.snapshot(name, "digest"), "")
    key = tuple(k for k in run.tags.get(tag.DATA_KEY, "").split(",") if k)
    path = snapshot_path(run, snaps[name])
    if key:
        snapshot_sidecar(run, snaps[name])  # beside the snapshot, where diff_files looks
    return Version(str(run.key), digest, path, key)
