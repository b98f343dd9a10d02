"""A summary of a data version, computed while its snapshot streams (one pass, bounded memory).

:class:`Summarizer` is fed the canonical record batches a snapshot writes (see
:func:`relayml.data.snapshot_query`'s ``observe``) and returns a JSON-ready dict: rows, schema
and, per column, nulls, min, max, mean, standard deviation, approximate quantiles and an
approximate distinct count. It never holds more than one batch plus small sketches:

* min, max, mean and standard deviation: ``pyarrow.compute`` kernels over each batch's whole
  columns (``min_max``, ``mean``, ``variance``), merged exactly (Chan's parallel formula);
* quantiles: a uniform sample of at most ``sample_rows`` rows, shared by every column
  (bottom-k on a random priority, so every row has the same chance to be kept);
* distinct count: a k-minimum-values sketch over a 64-bit hash of each value (exact below
  ``sketch_size`` distinct values, about 2 % relative error above); a batch is deduplicated
  in Arrow while the sketch fills, then only hashes below the sketch's largest enter it.

:meth:`Summarizer.update` also returns each batch's :class:`ColumnStats` (nulls, NaN, min,
max), so that checks skip the row-level work on a batch that cannot break them.

It does no I/O and no MLflow tracking; callers store what :meth:`Summarizer.result` returns.

Example:
    >>> import pyarrow as pa
    >>> s = Summarizer()
    >>> _ = s.update(pa.record_batch({"x": [1.0, 2.0, None], "c": ["a", "b", "a"]}))
    >>> out = s.result()
    >>> out["rows"], out["columns"]["x"]["nulls"], out["columns"]["x"]["mean"]
    (3, 1, 1.5)
    >>> out["columns"]["c"]["distinct"]
    2
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["QUANTILES", "ColumnStats", "Summarizer", "format_summary_rows"]

#: The quantiles every numeric column reports.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_TWO64 = float(2**64)


class ColumnStats(NamedTuple):
    """What one batch held in one column, as :meth:`Summarizer.update` returns it.

    Checks read it to skip the row-level work on a batch that cannot break them (no null, no
    value outside a range). ``valid`` counts the values neither null nor NaN; ``min`` and
    ``max`` are the column's own Python values over them (``None`` without one, and for types
    the summary keeps no bounds of, such as strings).

    Example:
        >>> ColumnStats(nulls=0, nan=0, valid=2, min=1, max=3).min
        1
    """

    nulls: int
    nan: int
    valid: int
    min: Any
    max: Any


def _sorted_unique(h: np.ndarray, *, presorted: bool = False) -> np.ndarray:
    """The distinct values of a small array of hashes, sorted."""
    h = h if presorted else np.sort(h)
    return h[np.concatenate(([True], h[1:] != h[:-1]))] if len(h) > 1 else h


def _kind(t: pa.DataType) -> str:
    """``numeric`` (stats), ``temporal`` (min/max/quantiles as times) or ``other``."""
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return "numeric"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "temporal"
    return "other"


def _hash64(arr: pa.Array) -> np.ndarray:
    """A 64-bit hash of every value of ``arr`` (no nulls; same value, same hash)."""
    t = arr.type
    if pa.types.is_boolean(t):
        arr = arr.cast(pa.uint8())
    if pa.types.is_date(t):
        arr = arr.cast(pa.int32())
    if _kind(t) != "other":
        values = arr.to_numpy(zero_copy_only=False)
        if values.dtype.itemsize != 8:
            values = values.astype(np.int64)
        h = values.view(np.uint64) * _MIX1
        h ^= h >> np.uint64(32)
        h *= _MIX2
        return h
    import pandas as pd  # strings and the like: only the distinct values of a batch get here

    return pd.util.hash_array(arr.to_numpy(zero_copy_only=False))


class _Column:
    """The running state of one column."""

    def __init__(self, name: str, type_: pa.DataType, sketch_size: int) -> None:
        self.name, self.type, self.kind = name, type_, _kind(type_)
        self.count = 0  # non-null (and non-NaN) values
        self.nulls = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.nan = 0
        self.min: Any = None
        self.max: Any = None
        self.k = sketch_size
        self.sketch = np.empty(0, np.uint64)  # the k smallest distinct hashes, sorted
        self.dedupe = False  # batches repeat values: deduplicate them before hashing

    def update(self, arr: pa.Array) -> ColumnStats:
        nulls = arr.null_count
        self.nulls += nulls
        if nulls == len(arr) or pa.types.is_null(arr.type):
            return ColumnStats(nulls, 0, 0, None, None)
        valid = arr.drop_null() if nulls else arr
        nan, lo, hi = 0, None, None
        if self.kind == "numeric":
            valid, nan, lo, hi = self._moments(valid)
        elif self.kind == "temporal":
            values = valid.to_numpy(zero_copy_only=False)  # datetime64: numpy's min is fast
            lo, hi = pa.array(np.array([values.min(), values.max()])).cast(valid.type).to_pylist()
            self._bounds(lo, hi)
            self.count += len(valid)
        else:
            self.count += len(valid)
        if len(valid):
            self._distinct(valid)
        return ColumnStats(nulls, nan, len(valid), lo, hi)

    def _moments(self, valid: pa.Array) -> tuple[pa.Array, int, Any, Any]:
        """Count, mean and M2 of one batch's valid values merged in (Chan's formula)."""
        if pa.types.is_boolean(valid.type):
            valid = valid.cast(pa.uint8())
        mean = pc.mean(valid).as_py()
        nan = 0
        if mean is not None and math.isnan(mean):  # NaN: counted, and left out of the stats
            is_nan = pc.is_nan(valid)
            nan = pc.sum(is_nan).as_py()
            valid = valid.filter(pc.invert(is_nan))
            self.nan += nan
            if len(valid) == 0:
                return valid, nan, None, None
            mean = pc.mean(valid).as_py()
        n = len(valid)
        values = valid.to_numpy(zero_copy_only=False)  # no null left: zero-copy
        lo, hi = values.min().item(), values.max().item()  # numpy's are ~10x Arrow's min_max
        m2 = pc.variance(valid, ddof=0).as_py() * n
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self._bounds(float(lo), float(hi))
        return valid, nan, lo, hi

    def _bounds(self, lo: Any, hi: Any) -> None:
        self.min = lo if self.min is None or lo < self.min else self.min
        self.max = hi if self.max is None or hi > self.max else self.max

    def _distinct(self, valid: pa.Array) -> None:
        """A k-minimum-values sketch: the k smallest distinct hashes seen.

        A column of many distinct values hashes every value and keeps the few hashes below
        the sketch's largest; a column whose batches repeat values (or strings, whose hashing
        is dearer) is deduplicated by Arrow's hash table first.
        """
        k = self.k
        if self.dedupe or self.kind == "other":
            valid = pc.unique(valid)
        h = _hash64(valid)
        if len(self.sketch) >= k:
            h = h[h < self.sketch[-1]]
        if len(h) > 4 * k:
            smallest = _sorted_unique(np.partition(h, 4 * k - 1)[: 4 * k])
            if len(smallest) >= k or self.dedupe:
                h = smallest[:k]  # every one of h's k smallest distinct hashes is among them
            else:  # values repeat within the batch: Arrow's hash table from now on
                self.dedupe = True
                h = _hash64(pc.unique(valid))
        if len(h):  # sorted candidates inserted into the sorted sketch: no full re-sort
            h = _sorted_unique(h)
            merged = np.insert(self.sketch, np.searchsorted(self.sketch, h), h)
            self.sketch = _sorted_unique(merged, presorted=True)[:k]

    def distinct(self) -> int:
        if len(self.sketch) < self.k:
            return len(self.sketch)
        return round((self.k - 1) * _TWO64 / (float(self.sketch[-1]) + 1.0))

    def result(self, sample: pa.Array | None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": str(self.type), "nulls": self.nulls}
        if self.kind == "numeric" and self.count:
            out["min"], out["max"] = self.min, self.max
            out["mean"] = self.mean
            out["std"] = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
            if self.nan:
                out["nan"] = self.nan
        elif self.kind == "temporal" and self.min is not None:
            out["min"], out["max"] = _iso(self.min), _iso(self.max)
        if sample is not None and self.kind != "other":
            out["quantiles"] = _quantiles(sample, self.kind)
        out["distinct"] = self.distinct()
        return out


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _quantiles(sample: pa.Array, kind: str) -> dict[str, Any]:
    values = sample.drop_null()
    if kind == "temporal":
        ints = values.cast(pa.int64() if pa.types.is_timestamp(values.type) else pa.int32())
        numbers = ints.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        numbers = values.to_numpy(zero_copy_only=False).astype(np.float64)
        numbers = numbers[~np.isnan(numbers)]
    if len(numbers) == 0:
        return {}
    qs = np.quantile(numbers, QUANTILES)
    if kind == "numeric":
        return {str(q): float(v) for q, v in zip(QUANTILES, qs, strict=True)}
    back = pa.array(np.round(qs).astype(np.int64)).cast(ints.type).cast(values.type)
    return {str(q): _iso(v) for q, v in zip(QUANTILES, back.to_pylist(), strict=True)}


class Summarizer:
    """Streams record batches into a data summary (see the module docstring).

    Args:
        sample_rows: rows kept in the uniform sample the quantiles are read from.
        sketch_size: size of each column's distinct-count sketch.
        seed: seed of the sample's random priorities (the same data gives the same summary).

    Example:
        >>> import pyarrow as pa
        >>> s = Summarizer()
        >>> for start in range(0, 1000, 100):
        ...     _ = s.update(pa.record_batch({"v": list(range(start, start + 100))}))
        >>> col = s.result()["columns"]["v"]
        >>> col["min"], col["max"], col["distinct"], col["quantiles"]["0.5"]
        (0.0, 999.0, 1000, 499.5)
    """

    def __init__(self, sample_rows: int = 5_000, sketch_size: int = 2048, seed: int = 0) -> None:
        self.sample_rows, self.sketch_size = sample_rows, sketch_size
        self.rows = 0
        self._rng = np.random.default_rng(seed)
        self._columns: list[_Column] | None = None
        self._schema: pa.Schema | None = None
        self._parts: list[pa.RecordBatch] = []
        self._part_keys: list[np.ndarray] = []
        self._threshold = 1.0

    def update(self, batch: pa.RecordBatch) -> dict[str, ColumnStats]:
        """Feed the next batch (the canonical batches a snapshot writes).

        Every statistic is a ``pyarrow.compute`` kernel over the batch's whole columns (no
        per-value Python).

        Returns:
            Column name -> :class:`ColumnStats` of this batch alone (what
            :meth:`relayml.checks.Checker.update` reads to skip work).

        Example:
            >>> s = Summarizer()
            >>> s.update(pa.record_batch({"a": [1, 2]}))["a"]
            ColumnStats(nulls=0, nan=0, valid=2, min=1, max=2)
            >>> s.rows
            2
        """
        if self._columns is None:
            self._schema = batch.schema
            self._columns = [_Column(f.name, f.type, self.sketch_size) for f in batch.schema]
        stats = {
            col.name: col.update(arr) for col, arr in zip(self._columns, batch.columns, strict=True)
        }
        self._update_sample(batch)
        self.rows += batch.num_rows
        return stats

    def _update_sample(self, batch: pa.RecordBatch) -> None:
        """Bottom-k sampling: candidates (key below the k-th smallest so far) are appended
        as they come; the sample is cut back to k rows only when twice as large."""
        n = batch.num_rows
        if n == 0:
            return
        keys = self._rng.random(n)
        chosen = np.flatnonzero(keys < self._threshold)
        if len(chosen) == 0:
            return
        self._parts.append(batch.take(pa.array(chosen)))
        self._part_keys.append(keys[chosen])
        if sum(len(k) for k in self._part_keys) > 2 * self.sample_rows:
            self._compact()

    def _compact(self) -> None:
        if not self._parts:
            return
        table = pa.Table.from_batches(self._parts)
        keys = np.concatenate(self._part_keys)
        if len(keys) > self.sample_rows:
            keep = np.sort(np.argpartition(keys, self.sample_rows - 1)[: self.sample_rows])
            table, keys = table.take(pa.array(keep)), keys[keep]
            self._threshold = float(keys.max())
        table = table.combine_chunks()
        self._parts, self._part_keys = table.to_batches(), [keys]

    def result(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict: ``rows``, ``columns`` (name -> statistics).

        Example:
            >>> Summarizer().result()
            {'rows': 0, 'columns': {}}
        """
        self._compact()
        sample = pa.Table.from_batches(self._parts) if self._parts else None
        columns: dict[str, Any] = {}
        for col in self._columns or []:
            sample_col = sample.column(col.name).combine_chunks() if sample else None
            columns[col.name] = col.result(sample_col)
        return {"rows": self.rows, "columns": columns}

    @property
    def schema(self) -> pa.Schema | None:
        """The schema of the batches fed (``None`` before the first one)."""
        return self._schema


def format_summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One display row per column of a summary (for tables and DataFrames).

    Args:
        summary: what :meth:`Summarizer.result` returned (or ``run.data_summary[name]``).

    Returns:
        Dicts with ``column``, ``type``, ``nulls``, ``min``, ``max``, ``mean``, ``std``,
        ``median`` and ``distinct`` (``None`` where not defined).

    Example:
        >>> s = Summarizer()
        >>> _ = s.update(pa.record_batch({"x": [1.0, 3.0]}))
        >>> format_summary_rows(s.result())[0]["median"]
        2.0
    """
    rows = []
    for name, col in summary.get("columns", {}).items():
        rows.append(
            {
                "column": name,
                "type": col.get("type"),
                "nulls": col.get("nulls"),
                "min": col.get("min"),
                "max": col.get("max"),
                "mean": col.get("mean"),
                "std": col.get("std"),
                "median": col.get("quantiles", {}).get("0.5"),
                "distinct": col.get("distinct"),
            }
        )
    return rows
