"""Checks declared on a load variant, run while its snapshot streams.

``@load.variant("transactions", checks=relay.checks(...), key=["id"])`` declares what a good
load looks like. :class:`Checker` sees every canonical batch the snapshot writes: row-level
checks (``not_null``, ``ranges``, ``schema``) count failing rows batch by batch and keep a few
examples; aggregate checks (``min_rows``, ``unique``, ``max_null_ratio``) are decided at the
end from the summary and a compact set of key hashes. Given the summary's statistics of each
batch (:class:`~relayml.data_summary.ColumnStats`: nulls, NaN, min, max), a batch that cannot
break ``not_null`` or a range is decided from them without looking at its rows; only
``unique`` needs a pass of its own. Without declared checks the defaults
still apply: a load of 0 rows fails (``min_rows=1``).

This module decides; it does no tracking. The runner logs the :class:`CheckReport` and ends a
failed load run FAILED (:class:`~relayml.errors.ChecksFailed`, exit code 1).

Steps modules import this module through ``relay.checks``: it loads numpy, pandas and pyarrow
only when data is checked, so reading declarations from the pipeline cache stays light.

Example:
    >>> import pyarrow as pa
    >>> c = Checker(checks(not_null=["a"], ranges={"a": (0, None)}))
    >>> c.update(pa.record_batch({"a": [1, None, -2]}))
    >>> report = c.finish({"rows": 3, "columns": {}})
    >>> [(r.name, r.failed_rows) for r in report.failures]
    [('not_null', 1), ('ranges', 1)]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relayml.check_keys import EXAMPLES, KeySet, duplicates, json_rows
from relayml.errors import ConfigError

if TYPE_CHECKING:  # numpy, pandas and pyarrow load when data is checked, not when declared
    import pyarrow as pa

    from relayml.data_summary import ColumnStats

__all__ = ["CheckReport", "CheckResult", "Checker", "Checks", "checks"]


#: Short type names accepted in ``schema=`` and the canonical type they mean.
TYPE_ALIASES = {
    "int": "int64",
    "integer": "int64",
    "float": "double",
    "float64": "double",
    "str": "large_string",
    "string": "large_string",
    "bool": "bool",
    "boolean": "bool",
    "datetime": "timestamp[us]",
    "timestamp": "timestamp[us]",
    "date": "date32[day]",
}


@dataclass(frozen=True)
class Checks:
    """What a good load looks like. Build it with :func:`checks`.

    Attributes:
        min_rows: the fewest rows accepted (default 1: an empty load fails).
        not_null: columns that must hold no null (nor NaN).
        unique: columns (or tuples of columns, a composite key) whose values must be unique.
        ranges: column -> ``(low, high)`` inclusive bounds; ``None`` leaves a side open.
        schema: column -> type (``"int64"``, ``"double"``, ``"large_string"``,
            ``"timestamp[us]"`` or a short alias such as ``"int"``, ``"float"``, ``"str"``);
            ``None`` as a type only requires the column.
        max_null_ratio: column -> the largest share of nulls accepted (0..1).

    Example:
        >>> Checks().min_rows  # the default: an empty load fails
        1
        >>> import pyarrow as pa
        >>> spec = Checks(not_null=("Amount",), ranges={"Amount": (0, None)})
        >>> c = Checker(spec)
        >>> c.update(pa.record_batch({"Amount": [12.5, -3.0, None]}))
        >>> [(r.name, r.failed_rows) for r in c.finish({"rows": 3}).failures]
        [('not_null', 1), ('ranges', 1)]
    """

    min_rows: int = 1
    not_null: tuple[str, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()
    ranges: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    schema: Mapping[str, str | None] = field(default_factory=dict)
    max_null_ratio: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what the run records and the pipeline cache holds).

        Example:
            >>> checks(unique=["id"]).to_dict()["unique"]
            [['id']]
        """
        return {
            "min_rows": self.min_rows,
            "not_null": list(self.not_null),
            "unique": [list(u) for u in self.unique],
            "ranges": {c: list(b) for c, b in self.ranges.items()},
            "schema": dict(self.schema),
            "max_null_ratio": dict(self.max_null_ratio),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checks:
        """The inverse of :meth:`to_dict`.

        Example:
            >>> c = checks(ranges={"a": (0, None)})
            >>> Checks.from_dict(c.to_dict()) == c
            True
        """
        return checks(
            min_rows=data.get("min_rows", 1),
            not_null=data.get("not_null", ()),
            unique=[tuple(u) for u in data.get("unique", ())],
            ranges={c: tuple(b) for c, b in data.get("ranges", {}).items()},
            schema=data.get("schema") or None,
            max_null_ratio=data.get("max_null_ratio") or None,
        )


def checks(
    *,
    min_rows: int = 1,
    not_null: Iterable[str] = (),
    unique: Iterable[str | Sequence[str]] = (),
    ranges: Mapping[str, tuple[Any, Any]] | None = None,
    schema: Mapping[str, str | None] | Iterable[str] | None = None,
    max_null_ratio: Mapping[str, float] | None = None,
) -> Checks:
    """Declare the checks of a load variant (see :class:`Checks` for each argument).

    Raises:
        ConfigError: a negative ``min_rows``, a range that is not a pair, an unknown type
            name, or a null ratio outside 0..1.

    Example:
        >>> import relayml as relay
        >>> c = relay.checks(min_rows=100, not_null=["Amount"], unique=["id"],
        ...                  ranges={"Amount": (0, None)}, schema={"id": "int"})
        >>> c.schema
        {'id': 'int64'}
    """
    if not isinstance(min_rows, int) or min_rows < 0:
        raise ConfigError(f"checks: min_rows must be an integer >= 0, got {min_rows!r}")
    pairs: dict[str, tuple[Any, Any]] = {}
    for col, bounds in (ranges or {}).items():
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            raise ConfigError(
                f"checks: ranges[{col!r}] must be a pair (low, high) with None for an open "
                f"side, got {bounds!r}"
            )
        pairs[col] = (bounds[0], bounds[1])
    if schema is not None and not isinstance(schema, Mapping):
        schema = {c: None for c in schema}
    types: dict[str, str | None] = {}
    for col, t in (schema or {}).items():
        types[col] = None if t is None else TYPE_ALIASES.get(str(t), str(t))
        if types[col] is not None and not _known_type(types[col]):
            raise ConfigError(
                f"checks: schema[{col!r}] = {t!r} is not a type name; use one of "
                f"{sorted(set(TYPE_ALIASES) | set(TYPE_ALIASES.values()))}"
            )
    ratios = dict(max_null_ratio or {})
    for col, r in ratios.items():
        if not 0 <= float(r) <= 1:
            raise ConfigError(f"checks: max_null_ratio[{col!r}] must be in 0..1, got {r!r}")
    keys = tuple((u,) if isinstance(u, str) else tuple(u) for u in unique)
    return Checks(min_rows, tuple(not_null), keys, pairs, types, ratios)


def _known_type(name: str) -> bool:
    known = {"int64", "uint64", "double", "bool", "large_string", "large_binary"}
    return name in known or name.startswith(("timestamp[", "date32", "time64", "duration["))


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check (``min_rows``, ``not_null``, ``unique``, ``ranges``, ``schema``,
            ``max_null_ratio``).
        column: the column(s) it looked at (``None`` for ``min_rows``).
        passed: whether it held.
        failed_rows: how many rows broke it.
        detail: one readable line.
        examples: a few failing rows (or values).
    """

    name: str
    column: str | None
    passed: bool
    failed_rows: int = 0
    detail: str = ""
    examples: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "check": self.name,
            "column": self.column,
            "passed": self.passed,
            "failed_rows": self.failed_rows,
            "detail": self.detail,
            "examples": self.examples,
        }


@dataclass
class CheckReport:
    """Every check of one snapshot.

    Example:
        >>> CheckReport("t", [CheckResult("min_rows", None, True)]).ok
        True
    """

    snapshot: str
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        """True when every check held."""
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that failed."""
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the ``checks/<snapshot>.json`` artifact)."""
        return {
            "snapshot": self.snapshot,
            "passed": self.ok,
            "results": [r.to_dict() for r in self.results],
        }

    def text(self) -> str:
        """A readable report: one line per check, failing rows' examples underneath.

        Example:
            >>> r = CheckResult("min_rows", None, False, 0, "0 rows, expected at least 1")
            >>> print(CheckReport("transactions", [r]).text())
            checks of transactions: 1 failed
              FAILED min_rows: 0 rows, expected at least 1
        """
        failed = len(self.failures)
        lines = [f"checks of {self.snapshot}: " + (f"{failed} failed" if failed else "all passed")]
        for r in sorted(self.results, key=lambda r: r.passed):  # failures first
            where = f" [{r.column}]" if r.column else ""
            lines.append(f"  {'passed' if r.passed else 'FAILED'} {r.name}{where}: {r.detail}")
            for ex in r.examples:
                lines.append(f"      e.g. {json.dumps(ex, default=str)}")
        return "\n".join(lines)


class Checker:
    """Runs :class:`Checks` over a stream of canonical batches.

    Args:
        spec: the checks (default: :func:`checks` with no argument: at least one row).
        key: the variant's declared key; its columns must be unique too.

    Example:
        >>> import pyarrow as pa
        >>> c = Checker(checks(unique=["id"]))
        >>> c.update(pa.record_batch({"id": [1, 2]}))
        >>> c.update(pa.record_batch({"id": [2, 3]}))
        >>> c.finish({"rows": 4, "columns": {}}).failures[0].detail
        '1 row(s) repeat a value of an earlier row'
    """

    def __init__(self, spec: Checks | None = None, key: Sequence[str] = ()) -> None:
        self.spec = spec or Checks()
        uniques = list(self.spec.unique)
        if key and tuple(key) not in uniques:
            uniques.append(tuple(key))
        self.uniques = uniques
        self._schema: pa.Schema | None = None
        self._missing: set[str] = set()
        self._rows = 0
        self._counts: dict[tuple[str, str], int] = {}
        self._examples: dict[tuple[str, str], list[Any]] = {}
        self._keys = {u: KeySet(u) for u in uniques}
        self._bounds: dict[str, tuple[pa.Scalar | None, pa.Scalar | None]] = {}

    def update(self, batch: pa.RecordBatch, stats: Mapping[str, ColumnStats] | None = None) -> None:
        """Check one batch (row-level checks) and remember its key hashes.

        Args:
            batch: the next canonical batch.
            stats: what :meth:`relayml.data_summary.Summarizer.update` returned for it: a
                column with no null (nor NaN), or whose min and max lie within its range,
                is then decided from them without looking at its rows.

        Example:
            >>> import pyarrow as pa
            >>> c = Checker(checks(not_null=["a"]))
            >>> c.update(pa.record_batch({"a": [None]}))
            >>> c.finish({"rows": 1, "columns": {}}).ok
            False
        """
        import pyarrow as pa

        if self._schema is None:
            self._start(batch.schema)
        stats = stats or {}
        for col in self.spec.not_null:
            if col in self._missing:
                continue
            st = stats.get(col)
            if st is not None and st.nulls == 0 and st.nan == 0:
                continue
            arr = batch.column(col)
            if arr.null_count == 0 and not pa.types.is_floating(arr.type):
                continue
            self._count("not_null", col, batch, _null_or_nan(arr))
        for col, (lo, hi) in self._bounds.items():
            if col in self._missing or pa.types.is_null(batch.schema.field(col).type):
                continue  # a column of only nulls (an empty SQLite result) breaks no range
            st = stats.get(col)
            if st is not None and _within(st, lo, hi):
                continue
            self._count("ranges", col, batch, _outside(batch.column(col), lo, hi))
        for u in self.uniques:
            if not set(u) & self._missing:
                self._keys[u].add(batch)
        self._rows += batch.num_rows

    def _start(self, schema: pa.Schema) -> None:
        """Note the first batch's columns and check the range bounds against their types."""
        self._schema = schema
        wanted = set(self.spec.not_null) | set(self.spec.ranges) | set(self.spec.schema)
        wanted |= {c for u in self.uniques for c in u} | set(self.spec.max_null_ratio)
        self._missing = wanted - set(schema.names)
        import pyarrow as pa

        for col, (lo, hi) in self.spec.ranges.items():
            if col in self._missing:
                continue
            t = schema.field(col).type
            if pa.types.is_null(t):
                self._bounds[col] = (None, None)
                continue
            self._bounds[col] = tuple(  # type: ignore[assignment]
                None if b is None else _scalar(b, t, col) for b in (lo, hi)
            )

    def _count(self, check: str, col: str, batch: pa.RecordBatch, bad: pa.Array) -> None:
        import pyarrow.compute as pc

        n = pc.sum(bad).as_py() or 0
        if not n:
            return
        k = (check, col)
        self._counts[k] = self._counts.get(k, 0) + n
        have = self._examples.setdefault(k, [])
        if len(have) < EXAMPLES:
            rows = batch.filter(bad).slice(0, EXAMPLES - len(have))
            key = [c for c in (self.uniques[0] if self.uniques else ()) if c != col]
            if key and not set(key) & self._missing:
                rows = rows.select([*key, col])
            have.extend(json_rows(rows))

    def finish(self, summary: Mapping[str, Any], path: Path | None = None) -> CheckReport:
        """Decide every check; ``path`` (the written snapshot) gives duplicates' examples.

        Args:
            summary: the snapshot's summary (:meth:`relayml.data_summary.Summarizer.result`).
            path: the snapshot's Parquet file, read again (key columns only) when a
                uniqueness check failed, to show a few duplicated values.

        Returns:
            The :class:`CheckReport` (``snapshot`` is filled by the caller).
        """
        s = self.spec
        rows = int(summary.get("rows", self._rows))
        out = [
            CheckResult(
                "min_rows",
                None,
                rows >= s.min_rows,
                0,
                f"{rows:,} rows, expected at least {s.min_rows:,}",
            )
        ]
        types = {f.name: str(f.type) for f in self._schema or []}
        for col, want in s.schema.items():
            got = types.get(col)
            # "null": no value told the type (an empty SQLite result); min_rows reports that
            ok = got is not None and (want is None or got in (want, "null"))
            expect = "present" if want is None else want
            out.append(CheckResult("schema", col, ok, 0, f"{got or 'missing'}, expected {expect}"))
        for col in self._missing - set(s.schema):
            out.append(CheckResult("schema", col, False, 0, "column missing from the data"))
        for check, cols in (("not_null", s.not_null), ("ranges", list(s.ranges))):
            for col in cols:
                if col in self._missing:
                    continue
                n = self._counts.get((check, col), 0)
                what = "null or NaN" if check == "not_null" else _range_text(s.ranges.get(col))
                out.append(
                    CheckResult(
                        check,
                        col,
                        n == 0,
                        n,
                        f"{n:,} row(s) {what}",
                        self._examples.get((check, col), []),
                    )
                )
        for col, limit in s.max_null_ratio.items():
            if col in self._missing:
                continue
            nulls = int(summary.get("columns", {}).get(col, {}).get("nulls", 0))
            ratio = nulls / rows if rows else 0.0
            out.append(
                CheckResult(
                    "max_null_ratio",
                    col,
                    ratio <= limit,
                    nulls if ratio > limit else 0,
                    f"{ratio:.2%} null, at most {limit:.2%} accepted",
                )
            )
        for u in self.uniques:
            if set(u) & self._missing:
                continue
            out.append(self._unique(u, path))
        return CheckReport("", out)

    def _unique(self, cols: tuple[str, ...], path: Path | None) -> CheckResult:
        rows, values, hashes = self._keys[cols].finish()
        name = ",".join(cols)
        if not rows:
            return CheckResult("unique", name, True, 0, "no duplicated value")
        if values is not None:
            examples = [{cols[0]: int(v)} for v in values[:EXAMPLES]]
        else:
            examples = duplicates(path, cols, hashes) if path is not None else []
        detail = f"{rows:,} row(s) repeat a value of an earlier row"
        return CheckResult("unique", name, False, rows, detail, examples)


def _scalar(bound: Any, t: pa.DataType, col: str) -> pa.Scalar:
    import pyarrow as pa

    try:
        return pa.scalar(bound).cast(t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise ConfigError(
            f"checks: the range bound {bound!r} of column {col!r} does not compare with its "
            f"type {t} ({e})"
        ) from None


def _null_or_nan(arr: pa.Array) -> pa.Array:
    """True where a value is null or NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = arr.is_null()
    if pa.types.is_floating(arr.type):
        bad = pc.or_(bad, pc.fill_null(pc.is_nan(arr), False))
    return bad


def _outside(arr: pa.Array, lo: pa.Scalar | None, hi: pa.Scalar | None) -> pa.Array:
    """True where a value lies outside ``[lo, hi]`` (nulls and NaN never do)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    bad = pa.array(np.zeros(len(arr), bool))
    for bound, op in ((lo, pc.less), (hi, pc.greater)):
        if bound is not None:
            bad = pc.or_(bad, pc.fill_null(op(arr, bound), False))
    return bad


def _within(stats: ColumnStats, lo: pa.Scalar | None, hi: pa.Scalar | None) -> bool:
    """True when a batch's min and max show that no value of it is outside ``[lo, hi]``."""
    if stats.valid == 0:
        return True  # only nulls and NaN: nothing to compare
    if stats.min is None or stats.max is None:
        return False  # a type the summary keeps no bounds of: look at the rows
    try:
        return (lo is None or stats.min >= lo.as_py()) and (hi is None or stats.max <= hi.as_py())
    except TypeError:  # Python cannot compare them: look at the rows
        return False


def _range_text(bounds: tuple[Any, Any] | None) -> str:
    lo, hi = bounds or (None, None)
    if lo is not None and hi is not None:
        return f"outside [{lo}, {hi}]"
    return f"below {lo}" if lo is not None else f"above {hi}"
