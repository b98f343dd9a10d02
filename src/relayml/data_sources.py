"""Reading sources in record batches: databases, CSV and Parquet files; passwords kept out.

The only code of relayml that talks to source databases (it creates and disposes their
engines/connections). It yields Arrow record batches and holds at most one batch at a time;
:mod:`relayml.data` writes them into a snapshot.

* Databases: any SQLAlchemy URL (SQLite and PostgreSQL are tested for real). PostgreSQL is
  read through ADBC (``adbc-driver-postgresql``, Arrow-native, binary protocol) when it is
  installed: without parameters through ``COPY ... TO STDOUT (FORMAT binary)`` streamed in
  batches; with parameters through a server-side cursor (``DECLARE ... CURSOR`` with
  server-bound ``$n`` parameters, then ``FETCH FORWARD batch_size``), so parameters are never
  formatted into the SQL text. Other databases go through SQLAlchemy with a streaming cursor.
  See ``bench/README.md``.
* Files: CSV (types inferred from the first block) and Parquet.
* Secrets: a password never leaves this module in clear. Every URL in a message or an
  exception goes through :func:`redact`.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("id\\n1\\n2\\n")
    >>> [b.num_rows for b in file_batches(d / "a.csv", 100)]
    [2]
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from relayml import redaction
from relayml.errors import ConfigError, SourceError, UsageError

__all__ = [
    "check_batch_size",
    "empty_batch",
    "error_text",
    "file_batches",
    "query_batches",
    "redact",
    "with_password",
]


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


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size below 1 (before anything is read or written).

    Raises:
        UsageError: ``batch_size`` is below 1.

    Example:
        >>> check_batch_size(0)
        Traceback (most recent call last):
        ...
        relayml.errors.UsageError: batch_size must be at least 1, got 0
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size!r}")


def query_batches(
    url: str, sql: str, params: Mapping[str, Any], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """The result of a query, streamed in record batches.

    The URL is parsed and checked at once; the database is reached when the first batch is
    asked for. Parameters are always bound by the database (``:name`` placeholders).

    Args:
        url: a SQLAlchemy URL, with its password (see :func:`with_password`).
        sql: the query, with ``:name`` placeholders.
        params: values of the placeholders.
        batch_size: rows fetched per batch (PostgreSQL's ``COPY`` path sizes its chunks
            from it).

    Returns:
        An iterator of record batches (at least one, empty for an empty result).

    Raises:
        SourceError: a URL that cannot be parsed, or a SQLite file that does not exist.

    Example:
        >>> import sqlite3, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with sqlite3.connect(d / "db.sqlite") as c:
        ...     _ = c.execute("CREATE TABLE t (id INTEGER)")
        >>> batches = query_batches(f"sqlite:///{d}/db.sqlite", "SELECT * FROM t", {}, 10)
        >>> [b.num_rows for b in batches]
        [0]
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    check_batch_size(batch_size)
    redaction.remember_url(url)
    source = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise SourceError(f"cannot parse database URL {source!r}: {redact(str(e))}") from None
    _check_sqlite_file(parsed, source)
    if parsed.get_backend_name() == "postgresql" and _adbc_available():
        return _adbc_postgres_batches(parsed, sql, params, batch_size)
    return _sqlalchemy_batches(parsed, sql, params, batch_size)


def file_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    """A CSV or Parquet file, streamed in record batches.

    Args:
        path: a ``.csv`` (optionally ``.csv.gz``) or ``.parquet``/``.pq`` file.
        batch_size: rows per batch (Parquet), or the CSV block size in ~64-byte rows.

    Returns:
        An iterator of record batches (at least one).

    Raises:
        SourceError: a missing file or an unknown extension.

    Example:
        >>> file_batches(Path("missing.csv"), 10)
        Traceback (most recent call last):
        ...
        relayml.errors.SourceError: missing.csv: no such file
    """
    check_batch_size(batch_size)
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise SourceError(f"{source}: no such file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst"):
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".csv":
        return _csv_batches(path, batch_size)
    if kind in (".parquet", ".pq"):
        return _parquet_batches(path, batch_size)
    raise SourceError(
        f"{source}: unknown file type {kind or '(none)'!r}; expected .csv or .parquet"
    )


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


def error_text(e: BaseException) -> str:
    """An exception's message, without SQLAlchemy's "Background on this error" link.

    Example:
        >>> error_text(ValueError())
        'ValueError'
    """
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
                        yield from table.to_batches() or [empty_batch(table.schema)]
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


def empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    """A batch of no rows with ``schema`` (an empty result keeps its columns).

    Example:
        >>> empty_batch(pa.schema({"a": pa.int64()})).num_rows
        0
    """
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
                yield empty_batch(pa.schema([pa.field(n, pa.null()) for n in names]))
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
        yield empty_batch(reader.schema)


def _parquet_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(path)
    any_batch = False
    for batch in pf.iter_batches(batch_size=batch_size):
        any_batch = True
        yield batch
    if not any_batch:
        yield empty_batch(pf.schema_arrow)
