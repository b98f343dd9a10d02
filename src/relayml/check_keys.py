"""Exact uniqueness of key columns over a stream of batches (for :mod:`relayml.checks`).

A single integer key whose values fill their range densely (ids) is tracked by a presence array
of one byte per value of the range; any other key by 64-bit hashes of its values, sorted once
at the end. It loads numpy, pandas and pyarrow only when data is checked.

Example:
    >>> import pyarrow as pa
    >>> k = KeySet(("a", "b"))
    >>> k.add(pa.record_batch({"a": [1, 1], "b": ["x", "y"]}))
    >>> k.finish()[0]
    0
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy, pandas and pyarrow load when data is checked, not when declared
    import numpy as np
    import pyarrow as pa

__all__ = ["EXAMPLES", "KeySet", "duplicates", "json_rows", "key_hash"]

#: Examples kept of each failed check.
EXAMPLES = 5


class KeySet:
    """Exact duplicate detection over a stream of batches, in little memory.

    Example:
        >>> import pyarrow as pa
        >>> k = KeySet(("id",))
        >>> k.add(pa.record_batch({"id": [1, 2, 3]}))
        >>> k.add(pa.record_batch({"id": [3, 4]}))
        >>> k.finish()[:2]
        (1, [3])

    A single integer key whose values fill their range densely (ids) is tracked by a presence
    array of one byte per value of the range; any other key by 64-bit hashes of its values,
    sorted once at the end.
    """

    def __init__(self, cols: tuple[str, ...]) -> None:
        self.cols = cols
        self.dense = len(cols) == 1
        self.lo = 0
        self.present: np.ndarray | None = None
        self.hashes: list[np.ndarray] = []
        self.rows = 0
        self.dups = 0
        self.values: list[int] = []  # a few repeated values (dense mode)

    def add(self, batch: pa.RecordBatch) -> None:
        import numpy as np
        import pyarrow as pa

        if self.dense:
            arr = batch.column(self.cols[0])
            if pa.types.is_integer(arr.type) and arr.null_count == 0:
                v = arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                if self._add_dense(v):
                    self.rows += len(v)
                    return
            self._to_hashes()
        self.hashes.append(key_hash(batch, self.cols))
        self.rows += batch.num_rows

    def _add_dense(self, v: np.ndarray) -> bool:
        import numpy as np

        if len(v) == 0:
            return True
        lo, hi = int(v.min()), int(v.max())
        if self.present is not None:
            lo_all, hi_all = min(lo, self.lo), max(hi, self.lo + len(self.present) - 1)
        else:
            lo_all, hi_all = lo, hi
        span = hi_all - lo_all + 1
        if span > max(8 * (self.rows + len(v)), 1 << 22):
            return False  # sparse: hashes take less memory
        if self.present is None or lo < self.lo or hi >= self.lo + len(self.present):
            grown = np.zeros(span + span // 2, bool)  # room to grow upwards (new ids)
            if self.present is not None:
                at = self.lo - lo_all
                grown[at : at + len(self.present)] = self.present
            self.present, self.lo = grown, lo_all
        idx = v - self.lo
        window = self.present[lo - self.lo : hi - self.lo + 1]
        before = int(np.count_nonzero(window))
        seen = self.present[idx]
        if len(self.values) < EXAMPLES and seen.any():
            self.values += v[seen][:EXAMPLES].tolist()
        self.present[idx] = True
        repeated = len(v) - (int(np.count_nonzero(window)) - before)
        if repeated > int(seen.sum()) and len(self.values) < EXAMPLES:  # within the batch
            u, c = np.unique(v, return_counts=True)
            self.values += u[c > 1][:EXAMPLES].tolist()
        self.dups += repeated
        return True

    def _to_hashes(self) -> None:
        import numpy as np

        if self.present is not None:  # the values seen so far, once each (dups are counted)
            ids = np.flatnonzero(self.present).astype(np.int64) + self.lo
            self.hashes = [ids.view(np.uint64)]
            self.present = None
        self.dense = False

    def finish(self) -> tuple[int, list[int] | None, np.ndarray]:
        """``(rows repeating a value, a few repeated values or None, repeated hashes)``."""
        import numpy as np

        if self.dense:
            return self.dups, sorted(set(self.values)), np.empty(0, np.uint64)
        h = np.sort(np.concatenate(self.hashes)) if self.hashes else np.empty(0, np.uint64)
        dup = h[1:] == h[:-1]
        return self.dups + int(dup.sum()), None, np.unique(h[1:][dup])


def key_hash(batch: pa.RecordBatch | pa.Table, cols: tuple[str, ...]) -> np.ndarray:
    """One 64-bit value per row of the key columns: the value itself for one integer key.

    Example:
        >>> import pyarrow as pa
        >>> key_hash(pa.table({"id": [7, 8]}), ("id",)).tolist()
        [7, 8]
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if len(cols) == 1:
        arr = batch.column(cols[0])
        if pa.types.is_integer(arr.type) and arr.null_count == 0:
            return arr.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
    frame = pa.table({c: batch.column(c) for c in cols}).to_pandas()
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def duplicates(path: Path, cols: tuple[str, ...], hashes: np.ndarray) -> list[Any]:
    """A few duplicated key values, read back from the snapshot's key columns.

    Example:
        >>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "k.parquet"
        >>> pq.write_table(pa.table({"k": ["a", "b", "a"]}), p)
        >>> h = key_hash(pa.table({"k": ["a"]}), ("k",))
        >>> duplicates(p, ("k",), h)
        [{'k': 'a'}]
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(cols))
    h = key_hash(table, cols)
    hit = np.isin(h, hashes[: EXAMPLES * 4])
    seen: list[Any] = []
    for row in json_rows(table.filter(pa.array(hit))):
        if row not in seen:
            seen.append(row)
        if len(seen) >= EXAMPLES:
            break
    return seen


def json_rows(rows: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (values other than numbers, strings and None as text).

    Example:
        >>> import pyarrow as pa, datetime as dt
        >>> json_rows(pa.table({"t": [dt.date(2019, 2, 9)]}))
        [{'t': '2019-02-09'}]
    """
    out = []
    for row in rows.to_pylist():
        out.append({k: v if isinstance(v, int | float | str | None) else str(v)
                    for k, v in row.items()})  # fmt: skip
    return out
