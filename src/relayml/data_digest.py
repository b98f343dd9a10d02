"""Canonical types and the strong content digest of a data version.

A data version is the digest of the load snapshot(s) a run descends from: 32 hex digits
(128-bit blake3) over a canonical encoding of *every* value (no sampling), independent of how
the rows were split into batches and of the source they came from where the types normalize
alike. See :class:`Digester` for the rules, :func:`combine_digests` for several sources.

Pure computation: no I/O, no database, no MLflow.

Example:
    >>> import pyarrow as pa
    >>> digest_table(pa.table({"a": [1, 2]})) == digest_table(pa.table({"a": [1]}))
    False
    >>> len(combine_digests({"fraud": digest_table(pa.table({"a": [1]}))}))
    32
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import blake3
import numpy as np
import pandas as pd
import pyarrow as pa

from relayml.errors import SourceError

__all__ = [
    "DIGEST_BYTES",
    "DIGEST_VERSION",
    "Digester",
    "canonical_array",
    "canonical_schema",
    "canonicalize",
    "combine_digests",
    "digest_table",
    "frame_to_table",
]

#: Tag hashed into every digest; bump it if the canonical encoding ever changes.
DIGEST_VERSION = "relayml-digest-v1"
# 128 bits: strong against collisions, and it fits MLflow\'s dataset digest column (36 chars),
# so relay.data and datasets.digest hold the same string.
DIGEST_BYTES = 16


def _canonical_type(t: pa.DataType) -> pa.DataType:
    """The normalized type a column of type ``t`` is digested (and stored) as."""
    if isinstance(t, pa.BaseExtensionType):
        if _is_pg_numeric(t):
            return pa.float64()
        return _canonical_type(t.storage_type)
    if pa.types.is_dictionary(t):
        return _canonical_type(t.value_type)
    if pa.types.is_boolean(t) or pa.types.is_null(t):
        return t
    if pa.types.is_integer(t):
        return pa.uint64() if t == pa.uint64() else pa.int64()
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us")
    if pa.types.is_date(t):
        return pa.date32()
    if pa.types.is_time(t):
        return pa.time64("us")
    if pa.types.is_duration(t):
        return pa.duration("us")
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.large_string()
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    ):
        return pa.large_binary()
    return t


def _is_pg_numeric(t: pa.DataType) -> bool:
    return (
        isinstance(t, pa.OpaqueType)
        and t.type_name == "numeric"
        and (pa.types.is_string(t.storage_type) or pa.types.is_large_string(t.storage_type))
    )


def canonical_schema(schema: pa.Schema) -> pa.Schema:
    """The canonical (normalized, metadata-free) form of a schema.

    Args:
        schema: any Arrow schema.

    Returns:
        The schema with every type normalized as :class:`Digester` describes.

    Example:
        >>> canonical_schema(pa.schema({"a": pa.int8(), "t": pa.timestamp("ns", "UTC")}))
        a: int64
        t: timestamp[us]
    """
    return pa.schema([pa.field(f.name, _canonical_type(f.type)) for f in schema])


def canonical_array(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """One array cast to the canonical type ``target`` (zero-copy when it already is).

    Example:
        >>> canonical_array(pa.array([1], pa.int8()), pa.int64()).type
        DataType(int64)
    """
    t = arr.type
    if isinstance(t, pa.BaseExtensionType):
        arr = arr.storage
        t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if t == target:
        return arr
    if pa.types.is_timestamp(t) and t.tz is not None:
        # Arrow stores tz-aware timestamps as UTC instants: dropping the zone keeps UTC.
        arr = arr.cast(pa.timestamp(t.unit))
    if pa.types.is_null(t):
        return pa.nulls(len(arr), target)
    return arr.cast(target, safe=not (pa.types.is_timestamp(t) or pa.types.is_time(t)))


def canonicalize(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Normalize every column of a batch or table to its canonical type (zero-copy if already).

    Args:
        batch: a record batch or table.

    Returns:
        The same kind of object with the canonical schema (no metadata).

    Example:
        >>> canonicalize(pa.table({"a": pa.array([1], pa.int8())})).schema
        a: int64
    """
    schema = canonical_schema(batch.schema)
    cols = [
        canonical_array(c, f.type) if isinstance(c, pa.Array) else _canonical_chunked(c, f.type)
        for c, f in zip(batch.columns, schema, strict=True)
    ]
    if isinstance(batch, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(cols, schema=schema)
    return pa.Table.from_arrays(cols, schema=schema)


def _canonical_chunked(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    return pa.chunked_array([canonical_array(c, target) for c in col.chunks], type=target)


_FIXED_NUMPY: dict[pa.DataType, Any] = {
    pa.int64(): "<i8",
    pa.uint64(): "<u8",
    pa.float64(): "<f8",
    pa.timestamp("us"): "<i8",
    pa.date32(): "<i4",
    pa.time64("us"): "<i8",
    pa.duration("us"): "<i8",
}
_CANONICAL_NAN = np.frombuffer(struct.pack("<d", math.nan), "<f8")[0]


def _new_hasher() -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def _lp(data: bytes) -> bytes:
    """Length-prefixed bytes (8-byte little-endian length)."""
    return struct.pack("<Q", len(data)) + data


class Digester:
    """Incremental strong content digest of a stream of record batches.

    The digest does not depend on how the rows are split into batches, reads every value
    (unlike MLflow's pandas digest, which samples 10,000 rows and keeps 8 hex chars), and is
    the same for the same logical data from SQLite, PostgreSQL, CSV, Parquet or pandas where
    the types normalize alike.

    Canonical encoding (``relayml-digest-v1``):

    * Types are normalized first: every integer -> ``int64`` (``uint64`` stays), floats and
      decimals (and PostgreSQL ``numeric``) -> ``float64``, timestamps -> ``timestamp[us]``
      naive UTC (tz-aware values converted to UTC; sub-microsecond digits truncated),
      dates -> ``date32``, times -> ``time64[us]``, durations -> ``duration[us]``,
      strings -> ``large_string``, binaries -> ``large_binary``, dictionaries decoded.
    * Each column has three blake3 streams: *validity* (the global row numbers of its nulls,
      int64 LE), *values* and *data*.
    * Fixed-width values: little-endian bytes of the normalized type; null slots count as 0;
      every NaN is the one canonical quiet NaN. Booleans: one byte 0/1.
    * Strings/binaries: the lengths (int64 LE, 0 for nulls) go to *values*, the bytes to
      *data*: together a length-prefixed encoding.
    * Other types (lists, structs...): each value's ``repr`` of its Python form,
      length-prefixed (slow but rare).
    * Final digest: blake3 over the version tag, the row count, and for each column in order
      its name, canonical type name and the digests of its three streams.

    Args:
        schema: the schema, if known before the first batch (so that an empty stream still
            digests its columns).

    Example:
        >>> t = pa.table({"a": list(range(10)), "s": list("abcdefghij")})
        >>> d1, d2 = Digester(), Digester()
        >>> d1.update(t.to_batches()[0])
        >>> for b in t.to_batches(max_chunksize=3):
        ...     d2.update(b)
        >>> d1.hexdigest() == d2.hexdigest() == digest_table(t)
        True
    """

    def __init__(self, schema: pa.Schema | None = None) -> None:
        self._schema: pa.Schema | None = None
        self._streams: list[tuple[blake3.blake3, blake3.blake3, blake3.blake3]] = []
        self.rows = 0
        if schema is not None:
            self._set_schema(canonical_schema(schema))

    def _set_schema(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._streams = [(_new_hasher(), _new_hasher(), _new_hasher()) for _ in schema]

    @property
    def schema(self) -> pa.Schema | None:
        """The canonical schema seen so far (``None`` before any batch or schema).

        Example:
            >>> Digester(pa.schema({"a": pa.int32()})).schema
            a: int64
        """
        return self._schema

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Feed one batch (any types; it is canonicalized first).

        Args:
            batch: the next rows. Its canonical schema must match earlier batches.

        Raises:
            SourceError: the batch's columns or types differ from the earlier ones.

        Example:
            >>> d = Digester()
            >>> d.update(pa.record_batch({"a": [1, 2]}))
            >>> d.rows
            2
        """
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.update(b)
            return
        batch = canonicalize(batch)
        if self._schema is None:
            self._set_schema(batch.schema)
        elif not batch.schema.equals(self._schema):
            raise SourceError(
                f"batch schema differs from the first one: got {batch.schema}, "
                f"expected {self._schema}"
            )
        for arr, streams in zip(batch.columns, self._streams, strict=True):
            _feed(arr, streams, self.rows)
        self.rows += batch.num_rows

    def hexdigest(self) -> str:
        """The digest of everything fed so far, as 32 hex digits (128-bit blake3).

        Example:
            >>> len(Digester().hexdigest())
            32
        """
        h = blake3.blake3()
        h.update(_lp(DIGEST_VERSION.encode()))
        h.update(struct.pack("<Q", self.rows))
        schema = self._schema or pa.schema([])
        h.update(struct.pack("<Q", len(schema)))
        for field, streams in zip(schema, self._streams, strict=True):
            h.update(_lp(field.name.encode()))
            h.update(_lp(str(field.type).encode()))
            for s in streams:
                h.update(s.digest())
        return h.hexdigest(length=DIGEST_BYTES)


def _feed(arr: pa.Array, streams: tuple[Any, Any, Any], offset: int) -> None:
    validity, values, data = streams
    n = len(arr)
    if n == 0:
        return
    t = arr.type
    has_nulls = arr.null_count > 0
    if has_nulls:
        nulls = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)).astype("<i8")
        validity.update((nulls + offset).tobytes())
    dtype = _FIXED_NUMPY.get(t)
    if dtype is not None:
        width = np.dtype(dtype).itemsize
        buf = arr.buffers()[1]
        v = np.frombuffer(buf, dtype=dtype, count=n, offset=arr.offset * width)
        if has_nulls:
            v = np.where(arr.is_valid().to_numpy(zero_copy_only=False), v, 0).astype(dtype)
        if t == pa.float64():
            nan = np.isnan(v)
            if nan.any():
                v = v.copy()
                v[nan] = _CANONICAL_NAN
        values.update(memoryview(np.ascontiguousarray(v)).cast("B"))
    elif pa.types.is_boolean(t):
        b = arr.fill_null(False) if has_nulls else arr
        values.update(b.to_numpy(zero_copy_only=False).astype(np.uint8).tobytes())
    elif pa.types.is_null(t):
        pass
    elif t in (pa.large_string(), pa.large_binary()):
        a = arr.fill_null(b"" if t == pa.large_binary() else "") if has_nulls else arr
        _, off_buf, data_buf = a.buffers()
        offsets = np.frombuffer(off_buf, dtype="<i8", count=n + 1, offset=a.offset * 8)
        values.update(np.diff(offsets).astype("<i8").tobytes())
        if data_buf is not None and offsets[-1] > offsets[0]:
            data.update(memoryview(data_buf)[int(offsets[0]) : int(offsets[-1])])
    else:
        for value in arr.to_pylist():
            data.update(_lp(repr(value).encode()))


def digest_table(table: pa.Table | pa.RecordBatch | pd.DataFrame) -> str:
    """The content digest of a whole table, batch or DataFrame.

    DataFrames are converted as in :func:`snapshot_frame` (a default ``RangeIndex`` is dropped,
    any other index becomes columns; NaN in float columns counts as null).

    Args:
        table: the data.

    Returns:
        32 hex digits (128-bit blake3), equal to the digest of a snapshot of the same data.

    Example:
        >>> digest_table(pd.DataFrame({"a": [1, 2]})) == digest_table(pa.table({"a": [1, 2]}))
        True
    """
    if isinstance(table, pd.DataFrame):
        table = frame_to_table(table)
    d = Digester(table.schema)
    d.update(table)
    return d.hexdigest()


def combine_digests(parts: Mapping[str, str]) -> str:
    """The data version of several sources: one digest over ``name -> digest`` pairs.

    The order of ``parts`` does not matter; names do (swapping two sources' data changes it).

    Args:
        parts: source name -> its digest.

    Returns:
        32 hex digits (128-bit blake3).

    Example:
        >>> a, b = digest_table(pa.table({"x": [1]})), digest_table(pa.table({"x": [2]}))
        >>> combine_digests({"a": a, "b": b}) == combine_digests({"b": b, "a": a})
        True
    """
    h = blake3.blake3()
    h.update(_lp(b"relayml-combine-v1"))
    h.update(struct.pack("<Q", len(parts)))
    for name in sorted(parts):
        h.update(_lp(name.encode()))
        h.update(_lp(parts[name].encode()))
    return h.hexdigest(length=DIGEST_BYTES)


def frame_to_table(df: pd.DataFrame) -> pa.Table:
    """A DataFrame as the Arrow table its snapshot holds.

    A default ``RangeIndex`` is dropped; any other index becomes column(s).

    Example:
        >>> frame_to_table(pd.DataFrame({"a": [1]}, index=pd.Index([7], name="id"))).column_names
        ['id', 'a']
    """
    if not (isinstance(df.index, pd.RangeIndex) and df.index.name is None):
        df = df.reset_index()
    return pa.Table.from_pandas(df, preserve_index=False)
