"""Row hashes kept beside a snapshot (its sidecar), so that ``relay diff`` reads 2 columns, not all.

A snapshot whose load variant declares a key gets a sidecar, written while the snapshot
streams: its key columns and one ``UBIGINT`` column, ``__rowhash``, a hash of every other
column's values in the snapshot's column order (:func:`row_hashes`: numpy over each batch's
Arrow buffers, zero-copy for numbers and times, pandas' SipHash for strings; cheaper than
DuckDB's ``hash`` here and it needs no DuckDB in the writing process). Equal rows give equal
hashes, so two sidecars compare rows as ``relay diff`` does over the snapshots themselves.
The snapshot, its digest and what users read do not change; the sidecar is an extra file.

* Naming rule: the sidecar of ``NAME.parquet`` is ``NAME.rowhash.parquet`` in the same folder
  (a snapshot holder run keeps ``snapshot.parquet`` and ``snapshot.rowhash.parquet``).
* Its Parquet metadata names the key, the hashed columns, the hash scheme (:data:`SCHEME`)
  and the snapshot's digest. :func:`sidecar_for` returns
  a sidecar only when all four match what a diff needs, so a stale or foreign sidecar is
  ignored and the diff hashes the snapshot itself, with the same result.

This module writes no snapshot and does no MLflow tracking.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> from relayml.data import snapshot_frame
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> s = snapshot_frame(pd.DataFrame({"id": [1, 2], "v": [0.5, 1.5]}), d / "a.parquet",
    ...                    key=["id"])
    >>> sidecar_path(s.path).name
    'a.rowhash.parquet'
    >>> sidecar_for(s.path, ["id"], ["v"]) == sidecar_path(s.path)
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["HASH_COLUMN", "SCHEME", "RowHasher", "row_hashes", "sidecar_for", "sidecar_path"]

HASH_COLUMN = "__rowhash"
SCHEME = "relay-rowhash/1"  # how row_hashes hashes; sidecars are compared only within one
SUFFIX = ".rowhash.parquet"


def sidecar_path(snapshot: Path) -> Path:
    """Where the sidecar of a snapshot file lives (``NAME.parquet`` -> ``NAME.rowhash.parquet``).

    Example:
        >>> sidecar_path(Path("cache/snapshot.parquet")).as_posix()
        'cache/snapshot.rowhash.parquet'
    """
    snapshot = Path(snapshot)
    stem = snapshot.name.removesuffix(".parquet").removesuffix(".pq")
    return snapshot.with_name(stem + SUFFIX)


_P = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection of uint64
_SHIFT = np.uint64(29)


def _mix(h: np.ndarray, v: np.ndarray) -> None:
    """``h = f(h ^ v)`` in place, ``f`` a bijection: rows differing in one value never collide."""
    np.bitwise_xor(h, v, out=h)
    np.multiply(h, _P, out=h)
    np.bitwise_xor(h, h >> _SHIFT, out=h)


def _values(arr: pa.Array) -> np.ndarray:
    """A column's values as uint64 (nulls as 0: they are told apart in :func:`row_hashes`)."""
    t = arr.type
    fixed = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    if pa.types.is_temporal(t):
        arr = arr.cast(pa.int64()) if t.bit_width != 64 else arr.view(pa.int64())
        fixed, t = True, pa.int64()
    if fixed:
        if arr.null_count:
            arr = arr.fill_null(False if pa.types.is_boolean(t) else pa.scalar(0, t))
        x = arr.to_numpy(zero_copy_only=False)
        if pa.types.is_floating(t):
            x = x.astype(np.float64, copy=False) + 0.0  # -0.0 is 0.0
            if np.isnan(np.add.reduce(x)):  # one pass; NaN (or inf - inf) somewhere
                x[np.isnan(x)] = np.nan  # one NaN, whatever its payload
        if x.dtype == np.float64:
            return x.view(np.uint64)
        return x.astype(np.int64, copy=False).view(np.uint64)
    # strings, decimals and anything else: pandas' SipHash of each value
    import pandas as pd

    return pd.util.hash_array(arr.to_numpy(zero_copy_only=False).astype(object), categorize=False)


def row_hashes(batch: pa.RecordBatch, columns: Sequence[str]) -> np.ndarray:
    """One uint64 per row over ``columns``' values (the sidecar's hash; scheme :data:`SCHEME`).

    Equal rows give equal hashes whatever the batches; rows that differ in one value never
    collide, in several with a chance of about 2**-64. Nulls differ from every value; NaN
    equals NaN and -0.0 equals 0.0 (as in ``relay diff`` over the snapshots).

    Example:
        >>> b = pa.record_batch({"x": [1.0, 1.0, None, -0.0, 0.0], "s": list("aaabb")})
        >>> h = row_hashes(b, ["x", "s"]).tolist()
        >>> h[0] == h[1], h[0] == h[2], h[3] == h[4]
        (True, False, True)
    """
    h = np.zeros(batch.num_rows, np.uint64)
    for c in columns:
        arr = batch.column(c)
        _mix(h, _values(arr))
        if arr.null_count:  # null rows take one more step: valid rows are left as they are
            null = arr.is_null().to_numpy(zero_copy_only=False)
            part = h[null]
            _mix(part, np.ones(len(part), np.uint64))
            h[null] = part
    return h


class RowHasher:
    """Hashes each canonical batch of a snapshot into its sidecar (temp file + rename).

    Args:
        key: the key columns; a batch lacking one, or a column that cannot be hashed, turns
            the hasher off (no sidecar: ``relay diff`` then hashes the snapshot itself).
        out: the sidecar to write (see :func:`sidecar_path`).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.rowhash.parquet"
        >>> h = RowHasher(["id"], out)
        >>> h.update(pa.record_batch({"id": [1, 2], "v": [0.5, None]}))
        >>> h.finish("0" * 32)
        >>> pq.read_table(out).column_names
        ['id', '__rowhash']
    """

    def __init__(self, key: Sequence[str], out: Path) -> None:
        self.key = list(key)
        self.out = Path(out)
        self.columns: list[str] | None = None
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._off = False

    def update(self, batch: pa.RecordBatch) -> None:
        """Hash one batch's rows and append them to the sidecar."""
        if self._off:
            return
        if self.columns is None:
            if not self.key or any(k not in batch.schema.names for k in self.key):
                self._off = True
                return
            self.columns = [c for c in batch.schema.names if c not in self.key]
        try:
            hashes = row_hashes(batch, self.columns)
        except (pa.ArrowException, TypeError, ValueError):
            self.abort()  # a type it cannot hash (nested values): no sidecar
            self._off = True
            return
        table = pa.table(
            [*(batch.column(k) for k in self.key), pa.array(hashes, pa.uint64())],
            names=[*self.key, HASH_COLUMN],
        )
        if self._writer is None:
            self._open(table.schema)
        self._writer.write_table(table)  # type: ignore[union-attr]

    def _open(self, schema: pa.Schema) -> None:
        fd, name = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
        os.close(fd)
        self._tmp = Path(name)
        # uncompressed, small pages: hashes do not compress, and the writer stays small
        self._writer = pq.ParquetWriter(
            self._tmp, schema, compression="none", use_dictionary=False, data_page_size=1 << 16
        )

    def finish(self, digest: str, schema: pa.Schema | None = None) -> None:
        """Close the sidecar, record its key, columns, scheme and the snapshot's digest, and
        rename it into place (nothing is written when the hasher is off).

        Args:
            digest: the snapshot's digest.
            schema: the snapshot's schema, for a snapshot of no batch at all.
        """
        if self._off:
            self.abort()
            return
        if self._writer is None:  # no row: an empty sidecar still says "no row"
            if schema is None or any(k not in schema.names for k in self.key):
                return
            self.columns = [c for c in schema.names if c not in self.key]
            fields = [schema.field(k) for k in self.key] + [pa.field(HASH_COLUMN, pa.uint64())]
            self._open(pa.schema(fields))
        self._writer.add_key_value_metadata(  # type: ignore[union-attr]
            {
                b"relayml.rowhash.key": json.dumps(self.key).encode(),
                b"relayml.rowhash.columns": json.dumps(self.columns).encode(),
                b"relayml.rowhash.scheme": SCHEME.encode(),
                b"relayml.digest": digest.encode(),
            }
        )
        self._writer.close()  # type: ignore[union-attr]
        self._writer = None
        os.replace(self._tmp, self.out)  # type: ignore[arg-type]

    def abort(self) -> None:
        """Drop the half-written sidecar (the snapshot failed)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def _meta(path: Path) -> dict[bytes, bytes]:
    return pq.read_metadata(path).metadata or {}


def sidecar_for(snapshot: Path, key: Sequence[str], columns: Sequence[str]) -> Path | None:
    """The sidecar of a snapshot when it serves a diff on ``key`` over ``columns``, else None.

    It must exist beside the snapshot (see :func:`sidecar_path`), hash exactly ``columns`` in
    that order, be keyed on ``key``, use this DuckDB's hash scheme and carry the snapshot's
    digest.

    Example:
        >>> sidecar_for(Path("nowhere.parquet"), ["id"], ["v"]) is None
        True
    """
    side = sidecar_path(snapshot)
    if not key or not side.exists():
        return None
    try:
        meta, own = _meta(side), _meta(Path(snapshot))
    except (OSError, pa.ArrowException):
        return None
    want = {
        b"relayml.rowhash.key": json.dumps(list(key)).encode(),
        b"relayml.rowhash.columns": json.dumps(list(columns)).encode(),
        b"relayml.rowhash.scheme": SCHEME.encode(),
    }
    if any(meta.get(k) != v for k, v in want.items()):
        return None
    digest = meta.get(b"relayml.digest")
    return side if digest and digest == own.get(b"relayml.digest") else None
