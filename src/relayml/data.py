"""Data sources, streamed Parquet snapshots and strong content digests.

This is the only module of relayml that talks to source databases (it creates and disposes
their engines/connections). It is pure: it does no MLflow tracking; callers log what it returns.

* Sources: any SQLAlchemy URL (SQLite and PostgreSQL are tested for real), CSV and Parquet
  files, and pandas DataFrames returned by steps.
* Snapshots: rows are streamed in record batches into a Parquet file (memory is bounded by the
  batch size); the file is written to a temporary name in the output folder and renamed only on
  success, so a failure never leaves a partial file at the output path.
* Digest: 32 hex digits (128-bit blake3) over a canonical encoding of *every* value (no sampling),
  independent of how the rows were split into batches. See :class:`Digester` for the rules.
* Secrets: a password never leaves this module. Every URL in a message, a :class:`Snapshot`
  field, an exception or the Parquet metadata goes through :func:`redact`.

PostgreSQL is read through ADBC (``adbc-driver-postgresql``, Arrow-native, binary protocol) when
it is installed: without parameters through ``COPY ... TO STDOUT (FORMAT binary)`` streamed in
batches; with parameters through a server-side cursor (``DECLARE ... CURSOR`` with server-bound
``$n`` parameters, then ``FETCH FORWARD batch_size``), so parameters are never formatted into the
SQL text. Other databases go through SQLAlchemy with a streaming cursor. See ``bench/README.md``.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> snap = snapshot_frame(pd.DataFrame({"a": [1, 2], "b": ["x", None]}), d / "s.parquet")
    >>> snap.rows, snap.schema
    (2, {'a': 'int64', 'b': 'large_string'})
    >>> snap.digest == digest_table(read_snapshot(snap.path))
    True
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import blake3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from relayml import redaction
from relayml.errors import ConfigError, SourceError

__all__ = [
    "DIGEST_VERSION",
    "Digester",
    "Snapshot",
    "canonical_schema",
    "canonicalize",
    "combine_digests",
    "digest_table",
    "read_snapshot",
    "redact",
    "snapshot_file",
    "snapshot_frame",
    "snapshot_query",
    "with_password",
]

#: Tag hashed into every digest; bump it if the canonical encoding ever changes.
DIGEST_VERSION = "relayml-digest-v1"
# 128 bits: strong against collisions, and it fits MLflow\'s dataset digest column (36 chars),
# so relay.data and datasets.digest hold the same string.
DIGEST_BYTES = 16


# --------------------------------------------------------------------------------------------
# Snapshot
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What a snapshot recorded: the file, its size, schema, digest and where it came from.

    Attributes:
        path: the local Parquet file.
        rows: number of rows.
        bytes: size of the Parquet file in bytes.
        schema: column -> canonical Arrow type name, in column order.
        digest: 32 hex digits (128-bit blake3) content digest (see :class:`Digester`).
        source: redacted URL, or the file path.
        query: the SQL text (``None`` for files and frames).

    Example:
        >>> s = Snapshot(Path("s.parquet"), 0, 0, {}, digest_table(pa.table({})), "x.csv", None)
        >>> s.rows
        0
    """

    path: Path
    rows: int
    bytes: int
    schema: dict[str, str]
    digest: str
    source: str
    query: str | None


# --------------------------------------------------------------------------------------------
# Redaction and passwords
# --------------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """Hide any password in a URL, a connection string or a message.

    Replaces the password of ``scheme://user:password@host`` with ``***``, the values of
    ``password=``, ``pwd=``, ``secret=``, ``token=`` (and similar) query arguments or DSN
    keywords, and every encoding of every password relayml has read (see
    :mod:`relayml.redaction`). Anything else is kept, so the result still says where the data
    came from.

    Args:
        url: a SQLAlchemy URL, a libpq URI or DSN, a message, or a file path.

    Returns:
        The same text with every secret replaced by ``***``.

    Example:
        >>> redact("postgresql+psycopg://user:s3cr3t@host:5432/db")
        'postgresql+psycopg://user:***@host:5432/db'
        >>> redact("postgresql://host/db?sslmode=require&password=s3cr3t")
        'postgresql://host/db?sslmode=require&password=***'
    """
    return redaction.redact(url)


def with_password(url: str, password_env: str | None) -> str:
    """Insert the password held in an environment variable into a database URL.

    The result contains the clear password: pass it only to :func:`snapshot_query`, never to a
    log, a param or a tag (use :func:`redact` for those).

    Args:
        url: a SQLAlchemy URL, e.g. ``postgresql+psycopg://user@host:5432/db``.
        password_env: name of the environment variable holding the password; ``None`` returns
            ``url`` unchanged (the password, if any, is then in the URL itself).

    Returns:
        The URL with the password set.

    Raises:
        ConfigError: the variable is not set, or the URL cannot be parsed.

    Example:
        >>> os.environ["DEMO_DB_PASSWORD"] = "p@ss"
        >>> with_password("postgresql+psycopg://me@db:5432/x", "DEMO_DB_PASSWORD")
        'postgresql+psycopg://me:p%40ss@db:5432/x'
        >>> with_password("sqlite:////tmp/x.db", None)
        'sqlite:////tmp/x.db'
    """
    if password_env is None:
        return url
    password = os.environ.get(password_env)
    if password is None:
        raise ConfigError(
            f"environment variable {password_env!r} is not set; it should hold the password "
            f"for {redact(url)} (export {password_env}=... or change password_env in relay.toml)"
        )
    redaction.remember(password)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"cannot parse database URL {redact(url)!r}: {e}") from None
    return parsed.set(password=password).render_as_string(hide_password=False)


# --------------------------------------------------------------------------------------------
# Canonical types and the digest
# --------------------------------------------------------------------------------------------


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


def _canonical_array(arr: pa.Array, target: pa.DataType) -> pa.Array:
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
        _canonical_array(c, f.type) if isinstance(c, pa.Array) else _canonical_chunked(c, f.type)
        for c, f in zip(batch.columns, schema, strict=True)
    ]
    if isinstance(batch, pa.RecordBatch):
        return pa.RecordBatch.from_arrays(cols, schema=schema)
    return pa.Table.from_arrays(cols, schema=schema)


def _canonical_chunked(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    return pa.chunked_array([_canonical_array(c, target) for c in col.chunks], type=target)


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
            ValueError: the batch's columns or types differ from the earlier ones.

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
            raise ValueError(
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
        table = _frame_to_table(table)
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


# --------------------------------------------------------------------------------------------
# Writing a snapshot
# --------------------------------------------------------------------------------------------


def _write_snapshot(
    batches: Iterator[pa.RecordBatch],
    out: Path,
    *,
    source: str,
    query: str | None,
    schema: pa.Schema | None,
    progress: Callable[[int], None] | None,
    wrap: Callable[[BaseException], SourceError],
    observe: Callable[[pa.RecordBatch], None] | None = None,
) -> Snapshot:
    """Stream ``batches`` into ``out`` (temp file + rename) and digest them on the way."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    writer: pq.ParquetWriter | None = None
    digester = Digester(schema)
    try:
        try:
            for raw in batches:
                batch = canonicalize(raw)
                if writer is None:
                    digester = Digester(batch.schema) if digester.schema is None else digester
                    writer = pq.ParquetWriter(tmp, digester.schema, compression="zstd")
                elif not batch.schema.equals(digester.schema):
                    batch = _align(batch, digester.schema)
                digester.update(batch)
                writer.write_batch(batch)
                if observe is not None:
                    observe(batch)
                if progress is not None:
                    progress(digester.rows)
        except (SourceError, ConfigError):
            raise
        except Exception as e:
            raise wrap(e) from None
        final_schema = digester.schema or pa.schema([])
        digest = digester.hexdigest()
        meta = {
            b"relayml.digest": digest.encode(),
            b"relayml.source": source.encode(),
            b"relayml.query": (query or "").encode(),
        }
        if writer is None:
            writer = pq.ParquetWriter(tmp, final_schema, compression="zstd")
        writer.add_key_value_metadata(meta)
        writer.close()
        writer = None
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return Snapshot(
        path=out,
        rows=digester.rows,
        bytes=out.stat().st_size,
        schema={f.name: str(f.type) for f in final_schema},
        digest=digest,
        source=source,
        query=query,
    )


def _align(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a later batch to the schema fixed by the first one (type inference drift)."""
    if batch.schema.names != schema.names:
        raise SourceError(
            f"columns changed between batches: {batch.schema.names} != {schema.names}"
        )
    cols = []
    for arr, field in zip(batch.columns, schema, strict=True):
        if arr.type == field.type:
            cols.append(arr)
            continue
        try:
            cols.append(_canonical_array(arr, field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SourceError(
                f"column {field.name!r} is {field.type} in the first batch but a later batch "
                f"holds {arr.type} values ({e}); cast the column in the query or the file"
            ) from None
    return pa.RecordBatch.from_arrays(cols, schema=schema)


# --------------------------------------------------------------------------------------------
# SQL sources
# --------------------------------------------------------------------------------------------


def snapshot_query(
    url: str,
    sql: str,
    params: Mapping[str, Any],
    out: Path,
    *,
    batch_size: int = 100_000,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[pa.RecordBatch], None] | None = None,
) -> Snapshot:
    """Run a query and stream its result into a Parquet snapshot with its digest.

    Parameters are always bound by the database (``:name`` placeholders), never formatted into
    the SQL text. Memory is bounded by ``batch_size`` rows, not by the size of the result.

    Args:
        url: a SQLAlchemy URL, with its password (see :func:`with_password`).
        sql: the query, with ``:name`` placeholders, e.g.
            ``SELECT * FROM tx WHERE ts <= :retrieval_time``.
        params: values of the placeholders.
        out: the Parquet file to write (replaced atomically).
        batch_size: rows fetched per batch.
        progress: called with the number of rows written so far after each batch.
        observe: called with each canonical batch as it is written (a summary, checks).

    Returns:
        The :class:`Snapshot` (its ``source`` is the redacted URL).

    Raises:
        SourceError: bad URL, unreachable database, bad query or missing table; the message is
            the database's own, with any password redacted. Nothing is left at ``out``.

    Example:
        >>> import sqlite3, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with sqlite3.connect(d / "db.sqlite") as c:
        ...     _ = c.execute("CREATE TABLE t (id INTEGER, v REAL)")
        ...     _ = c.executemany("INSERT INTO t VALUES (?, ?)", [(1, 0.5), (2, 1.5)])
        >>> s = snapshot_query(f"sqlite:///{d}/db.sqlite", "SELECT * FROM t WHERE id >= :lo",
        ...                    {"lo": 2}, d / "t.parquet")
        >>> s.rows, s.schema
        (1, {'id': 'int64', 'v': 'double'})
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    redaction.remember_url(url)
    source = redact(url)

    def wrap(e: BaseException) -> SourceError:
        return SourceError(f"{source}: {redact(_error_text(e))}")

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise SourceError(f"cannot parse database URL {source!r}: {redact(str(e))}") from None
    _check_sqlite_file(parsed, source)
    if parsed.get_backend_name() == "postgresql" and _adbc_available():
        batches = _adbc_postgres_batches(parsed, sql, params, batch_size)
    else:
        batches = _sqlalchemy_batches(parsed, sql, params, batch_size)
    return _write_snapshot(
        batches, out, source=source, query=sql, schema=None, progress=progress, wrap=wrap,
        observe=observe,
    )  # fmt: skip


def _check_sqlite_file(url: Any, source: str) -> None:
    """Refuse a SQLite file that does not exist (SQLite would create an empty one)."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return
    if database.startswith("file:") or url.query.get("mode") == "memory":
        return  # a SQLite URI filename: SQLite itself says what is wrong with it
    if not Path(database).is_file():
        raise SourceError(
            f"{source}: the SQLite database {database} does not exist; check the source's url "
            "in relay.toml (a relative sqlite:/// path is relative to the project folder)"
        )


def _error_text(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    # SQLAlchemy appends a "Background on this error" link; keep the database's own message.
    return re.sub(r"\s*\(Background on this error at: [^)]*\)", "", text)


def _adbc_available() -> bool:
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def _libpq_uri(url: Any) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq URI (driver name dropped).

    libpq wants every reserved character and space of the user and password percent-encoded,
    which SQLAlchemy's rendering leaves as they are (``p@ss w0rd`` must be ``p%40ss%20w0rd``).
    """
    uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
    if url.username is None:
        return uri
    userinfo = quote(url.username, safe="")
    if url.password is not None:
        userinfo += ":" + quote(str(url.password), safe="")
    # SQLAlchemy writes a reserved "@" of the user or password as %40: the first "@" ends them
    return "postgresql://" + userinfo + uri[uri.index("@") :]


def _adbc_postgres_batches(
    url: Any, sql: str, params: Mapping[str, Any], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """Stream a PostgreSQL query through ADBC (binary protocol, Arrow-native)."""
    import adbc_driver_postgresql.dbapi as adbc
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    compiled = text(sql).compile(dialect=postgresql.dialect(paramstyle="numeric_dollar"))
    names = list(compiled.positiontup or [])
    missing = [n for n in names if n not in params]
    if missing:
        raise SourceError(f"query parameter(s) {missing} have no value; pass them in params")
    conn = adbc.connect(_libpq_uri(url))
    try:
        cur = conn.cursor()
        try:
            if not names:
                # COPY (query) TO STDOUT (FORMAT binary), streamed in ~batch-sized chunks.
                cur.adbc_statement.set_options(
                    **{"adbc.postgresql.batch_size_hint_bytes": str(max(batch_size * 64, 1 << 20))}
                )
                cur.execute(sql)
                reader = cur.fetch_record_batch()
                yield from reader
                return
            # Server-bound parameters: a server-side cursor, fetched batch by batch.
            cur.adbc_statement.set_options(**{"adbc.postgresql.use_copy": "false"})
            cur.execute(
                f"DECLARE relay_snapshot NO SCROLL CURSOR FOR {compiled.string}",
                parameters=tuple(params[n] for n in names),
            )
            fetch = f"FETCH FORWARD {int(batch_size)} FROM relay_snapshot"
            first = True
            while True:
                cur.execute(fetch)
                table = cur.fetch_arrow_table()
                if table.num_rows == 0:
                    if first:  # keep the schema of an empty result
                        yield from table.to_batches() or [_empty_batch(table.schema)]
                    break
                first = False
                yield from table.to_batches()
        finally:
            with contextlib.suppress(Exception):
                cur.close()
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.close()


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _sqlalchemy_batches(
    url: Any, sql: str, params: Mapping[str, Any], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """Stream any SQLAlchemy source with a server-side (streaming) cursor."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    # SQLite has no timestamp type: ISO-looking text columns are read as timestamps.
    sqlite = url.get_backend_name() == "sqlite"
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(
                text(sql), dict(params)
            )
            names = list(result.keys())
            schema: pa.Schema | None = None
            for rows in result.partitions(batch_size):
                batch = _rows_to_batch(rows, names, schema, infer_timestamps=sqlite)
                if schema is None:
                    schema = batch.schema
                yield batch
            if schema is None:
                yield _empty_batch(pa.schema([pa.field(n, pa.null()) for n in names]))
    finally:
        engine.dispose()


def _rows_to_batch(
    rows: list[Any], names: list[str], schema: pa.Schema | None, *, infer_timestamps: bool
) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = []
    for i, values in enumerate(columns):
        target = schema.field(i).type if schema is not None else None
        arr = pa.array(values, from_pandas=False)
        if target is None and infer_timestamps and pa.types.is_string(arr.type):
            arr = _maybe_timestamps(arr)
        arrays.append(arr if target is None else _coerce(arr, target, names[i]))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _maybe_timestamps(arr: pa.Array) -> pa.Array:
    """Strings that all parse as ISO timestamps (how SQLite stores them) become timestamps."""
    valid = arr.drop_null()
    if (
        len(valid) == 0
        or not pc.all(pc.match_substring_regex(valid, r"^\d{4}-\d\d-\d\d[ T]\d")).as_py()
    ):
        return arr
    try:
        return arr.cast(pa.timestamp("us"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return arr


def _coerce(arr: pa.Array, target: pa.DataType, name: str) -> pa.Array:
    if arr.type == target or pa.types.is_null(arr.type):
        return arr.cast(target) if arr.type != target else arr
    if pa.types.is_null(target):
        raise SourceError(
            f"column {name!r} held only NULLs in the first batch, then {arr.type} values; "
            "CAST it in the query or raise batch_size"
        )
    try:
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SourceError(
            f"column {name!r} is {target} in the first batch but a later batch holds "
            f"{arr.type} values ({e}); CAST it in the query"
        ) from None


# --------------------------------------------------------------------------------------------
# Files and frames
# --------------------------------------------------------------------------------------------


def snapshot_file(
    path: Path,
    out: Path,
    *,
    batch_size: int = 100_000,
    progress: Callable[[int], None] | None = None,
    observe: Callable[[pa.RecordBatch], None] | None = None,
) -> Snapshot:
    """Stream a CSV or Parquet file into a Parquet snapshot with its digest.

    CSV types are inferred from the first block (ISO timestamps become timestamps); Parquet
    keeps its own types. Either way they are normalized as :class:`Digester` describes.

    Args:
        path: a ``.csv`` (optionally ``.csv.gz``) or ``.parquet``/``.pq`` file.
        out: the Parquet file to write (replaced atomically).
        batch_size: rows per batch (Parquet), or the CSV block size in ~64-byte rows.
        progress: called with the number of rows written so far after each batch.
        observe: called with each canonical batch as it is written (a summary, checks).

    Returns:
        The :class:`Snapshot` (``source`` is the file path, ``query`` is ``None``).

    Raises:
        SourceError: missing file, unknown extension, or a file that is not valid CSV/Parquet.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.csv").write_text("id,v\\n1,0.5\\n2,1.5\\n")
        >>> s = snapshot_file(d / "a.csv", d / "a.parquet")
        >>> s.rows, s.schema, s.query
        (2, {'id': 'int64', 'v': 'double'}, None)
    """
    path = Path(path)
    source = str(path)

    def wrap(e: BaseException) -> SourceError:
        return SourceError(f"{source}: {_error_text(e)}")

    if not path.is_file():
        raise SourceError(f"{source}: no such file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst"):
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".csv":
        batches = _csv_batches(path, batch_size)
    elif kind in (".parquet", ".pq"):
        batches = _parquet_batches(path, batch_size)
    else:
        raise SourceError(
            f"{source}: unknown file type {kind or '(none)'!r}; expected .csv or .parquet"
        )
    return _write_snapshot(
        batches, out, source=source, query=None, schema=None, progress=progress, wrap=wrap,
        observe=observe,
    )  # fmt: skip


def _csv_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(block_size=max(1 << 20, min(batch_size * 64, 1 << 26)))
    # An unquoted empty field is NULL, a quoted one ("") an empty string, as PostgreSQL's COPY.
    convert = pacsv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False)
    reader = pacsv.open_csv(path, read_options=read, convert_options=convert)
    any_batch = False
    for batch in reader:
        any_batch = True
        yield batch
    if not any_batch:
        yield _empty_batch(reader.schema)


def _parquet_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(path)
    any_batch = False
    for batch in pf.iter_batches(batch_size=batch_size):
        any_batch = True
        yield batch
    if not any_batch:
        yield _empty_batch(pf.schema_arrow)


def _frame_to_table(df: pd.DataFrame) -> pa.Table:
    if not (isinstance(df.index, pd.RangeIndex) and df.index.name is None):
        df = df.reset_index()
    return pa.Table.from_pandas(df, preserve_index=False)


def snapshot_frame(
    df: pd.DataFrame, out: Path, *, observe: Callable[[pa.RecordBatch], None] | None = None
) -> Snapshot:
    """Write a DataFrame a step returned as a Parquet snapshot, with the same digest rules.

    A default ``RangeIndex`` is dropped; any other index is kept as column(s). NaN in a float
    column is stored (and digested) as null, as a SQL ``NULL`` read by pandas would be.

    Args:
        df: the data.
        out: the Parquet file to write (replaced atomically).
        observe: called with each canonical batch as it is written (a summary, checks).

    Returns:
        The :class:`Snapshot` (``source`` is ``"<DataFrame>"``, ``query`` is ``None``).

    Raises:
        SourceError: a column pandas cannot convert to Arrow.

    Example:
        >>> import tempfile, pathlib
        >>> s = snapshot_frame(pd.DataFrame({"a": [1.0, None]}),
        ...                    pathlib.Path(tempfile.mkdtemp()) / "f.parquet")
        >>> s.rows, s.schema
        (2, {'a': 'double'})
    """
    source = "<DataFrame>"

    def wrap(e: BaseException) -> SourceError:
        return SourceError(f"{source}: {_error_text(e)}")

    try:
        table = _frame_to_table(df)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise wrap(e) from None
    batches = iter(table.to_batches() or [_empty_batch(table.schema)])
    return _write_snapshot(
        batches, out, source=source, query=None, schema=table.schema, progress=None, wrap=wrap,
        observe=observe,
    )  # fmt: skip


def read_snapshot(path: Path) -> pd.DataFrame:
    """Read a snapshot back as a pandas DataFrame.

    Args:
        path: a Parquet file written by one of the ``snapshot_*`` functions.

    Returns:
        The data (timestamps are naive UTC).

    Raises:
        SourceError: the file is missing or not valid Parquet.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.parquet"
        >>> _ = snapshot_frame(pd.DataFrame({"a": [1, 2]}), p)
        >>> read_snapshot(p)["a"].tolist()
        [1, 2]
    """
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"{path}: {_error_text(e)}") from None
