"""Streamed Parquet snapshots of a data source, with their strong content digest.

The front door of relayml's data layer: it writes what :mod:`relayml.data_sources` reads
(databases, CSV and Parquet files) or a step returned (a pandas DataFrame) into a snapshot, and
digests it on the way with :mod:`relayml.data_digest`. Those modules' public names are
importable from here too. It does no MLflow tracking; callers log what it returns.

* Snapshots: rows are streamed in record batches into a Parquet file (memory is bounded by the
  batch size); the file is written to a temporary name in the output folder and renamed only on
  success, so a failure never leaves a partial file at the output path.
* Observers (a summary, checks) see every canonical batch as it is written.
* Digest: 32 hex digits (128-bit blake3) over a canonical encoding of *every* value (no sampling),
  independent of how the rows were split into batches. See :class:`Digester` for the rules.
* Secrets: every URL in a message, a :class:`Snapshot` field, an exception or the Parquet
  metadata goes through :func:`redact`.

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
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from relayml.data_digest import (
    DIGEST_VERSION,
    Digester,
    canonical_array,
    canonical_schema,
    canonicalize,
    combine_digests,
    digest_table,
    frame_to_table,
)
from relayml.data_sources import (
    empty_batch,
    error_text,
    file_batches,
    query_batches,
    redact,
    with_password,
)
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
    behind = _Behind(observe) if observe is not None else None
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
                if behind is not None:
                    behind.submit(batch)
                if progress is not None:
                    progress(digester.rows)
            if behind is not None:
                behind.wait()
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
    finally:
        if behind is not None:
            behind.close()
    return Snapshot(
        path=out,
        rows=digester.rows,
        bytes=out.stat().st_size,
        schema={f.name: str(f.type) for f in final_schema},
        digest=digest,
        source=source,
        query=query,
    )


class _Behind:
    """Runs an observer one batch behind the writer, in a worker thread.

    While the observer (a summary, checks) works on batch N, the writer fetches, digests and
    writes batch N+1: Arrow, numpy, blake3, the Parquet writer and ADBC release the GIL in
    their kernels, so the two overlap on a second core. At most one batch is in flight (the
    one the loop would hold anyway while it fetches the next), batches reach the observer in
    order, and its exception is raised in the writer's thread.
    """

    def __init__(self, observe: Callable[[pa.RecordBatch], None]) -> None:
        self._observe = observe
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="relay-observe")
        self._pending: Future[None] | None = None

    def submit(self, batch: pa.RecordBatch) -> None:
        self.wait()
        self._pending = self._pool.submit(self._observe, batch)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
            cols.append(canonical_array(arr, field.type))
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
        UsageError: ``batch_size`` below 1.

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
    source = redact(url)  # (query_batches remembers the password to redact it everywhere)
    batches = query_batches(url, sql, params, batch_size)

    def wrap(e: BaseException) -> SourceError:
        return SourceError(f"{source}: {redact(error_text(e))}")

    return _write_snapshot(
        batches, out, source=source, query=sql, schema=None, progress=progress, wrap=wrap,
        observe=observe,
    )  # fmt: skip


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
        UsageError: ``batch_size`` below 1.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.csv").write_text("id,v\\n1,0.5\\n2,1.5\\n")
        >>> s = snapshot_file(d / "a.csv", d / "a.parquet")
        >>> s.rows, s.schema, s.query
        (2, {'id': 'int64', 'v': 'double'}, None)
    """
    source = str(path)
    batches = file_batches(Path(path), batch_size)

    def wrap(e: BaseException) -> SourceError:
        return SourceError(f"{source}: {error_text(e)}")

    return _write_snapshot(
        batches, out, source=source, query=None, schema=None, progress=progress, wrap=wrap,
        observe=observe,
    )  # fmt: skip


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
        return SourceError(f"{source}: {error_text(e)}")

    try:
        table = frame_to_table(df)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise wrap(e) from None
    batches = iter(table.to_batches() or [empty_batch(table.schema)])
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
        raise SourceError(f"{path}: {error_text(e)}") from None
