"""Drift between two data versions: the population stability index and new categories.

PSI of numeric and time columns is measured on the first version's deciles (nulls and NaN are
a bin of their own); for other columns, the share of the second version's rows holding a value
the first never held. On versions of more than ``2 * SAMPLE_ROWS`` rows the PSI is measured on
whole Parquet row groups spread evenly over each file (at least ``SAMPLE_ROWS`` rows; a relay
snapshot holds one row group per fetched batch), deciles and histograms in numpy.

Used by :mod:`relayml.datadiff`; it reads files and writes nothing.

Example:
    >>> psi([50, 50], [90, 10]) > 0.25
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import numpy as np

__all__ = ["BINS", "SAMPLE_ROWS", "drift", "ident", "is_binned", "psi"]

BINS = 10
#: Drift is measured on about this many rows of each version (a block sample of larger ones).
SAMPLE_ROWS = 200_000
_EPS = 1e-4
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UBIGINT", "FLOAT", "DOUBLE")


def ident(name: str) -> str:
    """A column name quoted for DuckDB SQL.

    Example:
        >>> print(ident("Amount (EUR)"))
        "Amount (EUR)"
    """
    return '"' + name.replace('"', '""') + '"'


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """The population stability index between two histograms over the same bins.

    Empty bins count as a share of 0.0001 so that the index stays finite.

    Args:
        expected: counts (or shares) per bin in the reference version.
        actual: counts (or shares) per bin in the new version.

    Returns:
        ``sum((a - e) * ln(a / e))`` over the bins' shares; 0 when both are alike, above
        0.25 usually read as a large shift.

    Example:
        >>> psi([50, 50], [50, 50])
        0.0
        >>> round(psi([50, 50], [90, 10]), 3)
        0.879
    """
    te, ta = float(sum(expected)) or 1.0, float(sum(actual)) or 1.0
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa_ = max(e / te, _EPS), max(a / ta, _EPS)
        total += (pa_ - pe) * math.log(pa_ / pe)
    return round(total, 6)


def drift(
    con: duckdb.DuckDBPyConnection,
    paths: Mapping[str, Path],
    binned: list[str],
    others: list[str],
    types: Mapping[str, str],
    rows: Mapping[str, int],
) -> dict[str, dict[str, Any]]:
    """PSI of binned columns on A's deciles (numpy over one read of each version's sample),
    and the share of new categories of the others (a DuckDB query over views ``a`` and ``b``).

    Args:
        con: a DuckDB connection holding the views ``a`` and ``b`` of the two versions.
        paths: ``{"a": path, "b": path}``, the Parquet files.
        binned: the columns measured by PSI (see :func:`is_binned`).
        others: the columns measured by their share of new values.
        types: column -> DuckDB type name (of version ``a``).
        rows: ``{"a": n, "b": n}``.

    Returns:
        Column -> ``{"measure": "psi" | "new_categories", "value": float}``, in column order.

    Example:
        >>> import duckdb, pandas as pd, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> pd.DataFrame({"x": range(100)}).to_parquet(d / "a.pq")
        >>> pd.DataFrame({"x": range(50, 150)}).to_parquet(d / "b.pq")
        >>> con = duckdb.connect()
        >>> for v in "ab":
        ...     _ = con.execute(f"CREATE VIEW {v} AS SELECT * FROM read_parquet('{d}/{v}.pq')")
        >>> drift(con, {"a": d / "a.pq", "b": d / "b.pq"}, ["x"], [], {"x": "BIGINT"},
        ...       {"a": 100, "b": 100})["x"]["value"] > 0.25
        True
    """
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    if binned:
        xa, xb = (_numbers(paths[v], binned, rows[v]) for v in ("a", "b"))
        # a large version's deciles come from every k-th value of its sample (50,000 values
        # place the cuts well enough; the histograms use the whole sample)
        step = 1 if rows["a"] <= 2 * SAMPLE_ROWS else max(1, SAMPLE_ROWS // 50_000)
        for c in binned:
            edges = _deciles(xa[c][~np.isnan(xa[c])][::step])
            out[c] = {
                "measure": "psi",
                "value": psi(_histogram(xa[c], edges), _histogram(xb[c], edges)),
            }
    for c in others:
        if types[c].endswith("[]"):
            continue
        new, total = con.execute(
            f"""SELECT count(*) FILTER (WHERE b.{ident(c)} IS NOT NULL AND s.v IS NULL), count(*)
                FROM b LEFT JOIN (SELECT DISTINCT {ident(c)} AS v FROM a) s
                ON b.{ident(c)} = s.v"""
        ).fetchone()
        out[c] = {"measure": "new_categories", "value": round(new / total, 6) if total else 0.0}
    return dict(sorted(out.items(), key=lambda cv: list(types).index(cv[0])))


def _row_groups(sizes: Sequence[int]) -> list[int]:
    """Row groups spread evenly over a file that together hold at least ``SAMPLE_ROWS`` rows."""
    n = len(sizes)
    for k in range(1, n + 1):
        picked = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
        if sum(sizes[i] for i in picked) >= SAMPLE_ROWS:
            return picked
    return list(range(n))


def _numbers(path: Path, columns: list[str], rows: int) -> dict[str, np.ndarray]:
    """The binned columns of a version as float64 (NULL and NaN as NaN, times in µs).

    A version of more than ``2 * SAMPLE_ROWS`` rows is sampled by whole Parquet row groups
    spread evenly over the file (a relay snapshot holds one row group per fetched batch), so
    only those are read and decoded.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    groups = list(range(pf.num_row_groups))
    if rows > 2 * SAMPLE_ROWS:
        groups = _row_groups([pf.metadata.row_group(i).num_rows for i in groups])
    table = pf.read_row_groups(groups, columns=columns)
    out = {}
    for c in columns:
        arr = table.column(c).combine_chunks()
        t = arr.type
        if pa.types.is_timestamp(t):
            arr = arr.cast(pa.timestamp("us", t.tz)).cast(pa.int64())
        elif pa.types.is_date(t):
            arr = pc.multiply(arr.cast(pa.date32()).cast(pa.int64()), 86_400_000_000)
        if not pa.types.is_floating(arr.type):
            arr = arr.cast(pa.float64())
        out[c] = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
    return out


def _deciles(valid: np.ndarray) -> np.ndarray:
    """The distinct deciles of some values (linear interpolation, as ``quantile_cont``)."""
    import numpy as np

    if len(valid) == 0:
        return np.empty(0)
    pos = np.arange(1, BINS) / BINS * (len(valid) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(valid) - 1)
    part = np.partition(valid, np.unique(np.concatenate([lo, hi])))
    return np.unique(part[lo] + (part[hi] - part[lo]) * (pos - lo))


def _histogram(x: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts of NULL/NaN, then of each bin: below the first edge, ..., from the last on.

    A value's bin is the number of edges at or below it; ``count(x < edge)`` for each edge
    gives the cumulative counts in one comparison per edge (no sort, no search).
    """
    import numpy as np

    valid = x[~np.isnan(x)]
    below = [int(np.count_nonzero(valid < e)) for e in edges]
    bins = np.diff([0, *below, len(valid)])
    return [len(x) - len(valid), *bins.tolist()]


def is_binned(t: str) -> bool:
    """True for a DuckDB type whose drift is a PSI over bins (numbers, times, booleans).

    Example:
        >>> is_binned("DOUBLE"), is_binned("VARCHAR")
        (True, False)
    """
    return t in _NUMERIC or t.startswith(("DECIMAL", "TIMESTAMP", "DATE")) or t == "BOOLEAN"
