"""What one scoring request may cost: body, rows, columns, decoded bytes, time on the wire.

The scoring server (:mod:`relayml.serve`) decodes request bodies here, under
:class:`RequestLimits`, so that no small body can make it allocate gigabytes or stall:

- **Parquet**: the footer is read first; rows, columns, column types and the decoded size of
  the columns the model needs are checked from the metadata *before* any page is decoded.
  Only the model's columns are decoded; string columns are read dictionary-encoded and their
  expanded size is checked before they are expanded.
- **CSV**: the header and the first row are read with the standard ``csv`` module first: too
  many columns, too many lines or a first row longer than the header (which pandas would
  silently turn into an index, shifting every column) are refused before pandas parses.
- **Numbers**: a numeric column takes finite numbers only; ``NaN``/empty is a missing value,
  ``inf`` or a number beyond float's range is a wrong type, ``true``/``false`` too, whatever
  the content type.
- **Time on the wire**: see :mod:`relayml.serving_http` (header, body and keep-alive timeouts).

Every refusal is a :class:`HTTPError`, which the app turns into a JSON error (413 for limits,
400 for bad input). This module must not import the rest of relayml's serving code.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "DECODED_PER_BODY",
    "HTTPError",
    "RequestLimits",
    "check_finite",
    "csv_frame",
    "parquet_frame",
]

#: The decoded size of a request may be this many times ``max_body``.
DECODED_PER_BODY = 8
#: Columns a request may have, at least (more if the model itself needs more).
MIN_COLUMNS = 1024

_INTEGER_TYPES = {"long": "int64", "integer": "int32", "boolean": "bool", "string": "object"}


class HTTPError(Exception):
    """A request the server refuses: HTTP status, error code, message, offending field.

    Example:
        >>> HTTPError(413, "too_many_rows", "over 100000 rows").status
        413
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass(frozen=True)
class RequestLimits:
    """The most one request may hold.

    Attributes:
        max_body: bytes of the body as sent.
        max_rows: records.
        max_columns: columns (a CSV header, a Parquet schema, JSON keys).
        max_decoded: bytes of the decoded columns the model reads.

    Example:
        >>> limits = RequestLimits.for_model(5 * 2**20, 100_000, n_columns=30)
        >>> limits.max_decoded == 8 * 5 * 2**20, limits.max_columns
        (True, 1024)
    """

    max_body: int
    max_rows: int
    max_columns: int
    max_decoded: int

    @classmethod
    def for_model(cls, max_body: int, max_rows: int, *, n_columns: int) -> RequestLimits:
        """The limits of a model with ``n_columns`` inputs (see the module's constants)."""
        return cls(
            max_body=max_body,
            max_rows=max_rows,
            max_columns=max(MIN_COLUMNS, 4 * n_columns),
            max_decoded=DECODED_PER_BODY * max_body,
        )

    def check_rows(self, rows: int) -> None:
        """A 413 if ``rows`` is over :attr:`max_rows`."""
        if rows > self.max_rows:
            raise HTTPError(
                413,
                "too_many_rows",
                f"the request holds {rows} rows; at most {self.max_rows} are accepted: "
                "send smaller batches",
            )

    def check_columns(self, columns: int) -> None:
        """A 413 if ``columns`` is over :attr:`max_columns`."""
        if columns > self.max_columns:
            raise HTTPError(
                413,
                "too_many_columns",
                f"the request holds {columns} columns; at most {self.max_columns} are accepted: "
                "send the model's columns only",
            )

    def check_decoded(self, size: int) -> None:
        """A 413 if ``size`` decoded bytes are over :attr:`max_decoded`."""
        if size > self.max_decoded:
            raise HTTPError(
                413,
                "decoded_too_large",
                f"the request decodes to about {size} bytes; at most {self.max_decoded} "
                f"({DECODED_PER_BODY} x --max-body) are accepted: send smaller batches",
            )


# --------------------------------------------------------------------------------------------
# numbers


def check_finite(frame: pd.DataFrame, float_columns: list[str]) -> None:
    """A 400 naming the first record whose value in a float column is not a finite number.

    ``NaN`` (an empty CSV field, ``nan``, a Parquet null) is a missing value; ``inf`` and
    numbers beyond the column type's range are of the wrong type, as they are in JSON.

    Example:
        >>> check_finite(pd.DataFrame({"x": [1.0, float("inf")]}), ["x"])
        Traceback (most recent call last):
        ...
        relayml.serving_limits.HTTPError: record 1: column 'x' must be a finite number; got inf
    """
    for name in float_columns:
        values = frame[name].to_numpy()
        finite = np.isfinite(values)
        if finite.all():
            continue
        row = int(np.argmin(finite))
        if np.isnan(values[row]):
            raise HTTPError(
                400,
                "missing_value",
                f"record {row}: column {name!r} is null or NaN; send a number",
                name,
            )
        raise HTTPError(
            400,
            "wrong_type",
            f"record {row}: column {name!r} must be a finite number; got {values[row]}",
            name,
        )


# --------------------------------------------------------------------------------------------
# CSV


def csv_frame(body: bytes, schema: list[tuple[str, str]], limits: RequestLimits) -> pd.DataFrame:
    """The records of a CSV body (a header line, then rows), within ``limits``.

    Every column is decoded (the body and the column count bound them), so that pandas
    checks every row's field count. Numeric columns are left to pandas' inference, so that
    ``true`` stays a boolean (refused later as a wrong type) instead of becoming 1.0; other
    types are read as the schema says.

    Raises:
        HTTPError: 413 over a limit; 400 for an empty body, a row longer than the header, a
            malformed line, or a value that does not convert.

    Example:
        >>> limits = RequestLimits.for_model(1000, 10, n_columns=1)
        >>> csv_frame(b"x,id\\n1.5,7\\n", [("x", "double")], limits)
             x  id
        0  1.5   7
    """
    if not body.strip():
        raise HTTPError(400, "empty_input", "the CSV body is empty")
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", newline=""))
    try:
        header = next(reader)
        limits.check_columns(len(header))
        first = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as e:
        raise HTTPError(400, "bad_input", f"CSV line {reader.line_num + 1}: {e}") from None
    if first is not None and len(first) > len(header):
        raise HTTPError(
            400,
            "bad_input",
            f"CSV line {reader.line_num}: {len(first)} fields, but the header names "
            f"{len(header)} columns; quote values that hold commas",
        )
    lines = body.count(b"\n") + (not body.endswith(b"\n"))
    limits.check_rows(lines - 1)
    limits.check_decoded((lines - 1) * 8 * len(header))
    dtypes = {n: _INTEGER_TYPES[t] for n, t in schema if t in _INTEGER_TYPES}
    try:  # index_col=False: never an index made of extra fields; later rows are checked
        return pd.read_csv(io.BytesIO(body), index_col=False, dtype=dtypes)
    except pd.errors.ParserError as e:  # "Expected 30 fields in line 3, saw 31"
        raise HTTPError(400, "bad_input", f"CSV: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # a value that does not convert to its column's type
        message = str(e).splitlines()[0]
        field = next((n for n, _ in schema if repr(n) in message), None)
        raise HTTPError(400, "wrong_type", f"CSV: {message}", field) from None
    except Exception as e:  # pandas' other parser errors
        raise HTTPError(400, "bad_input", f"CSV: {str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------
# Parquet


def parquet_frame(body: bytes, columns: list[str], limits: RequestLimits) -> pd.DataFrame:
    """The model's ``columns`` of a Parquet body, checked from its metadata before decoding.

    Raises:
        HTTPError: 413 over a limit; 400 for a body that is not Parquet, a nested column, or
            an encoding whose decoded size the metadata cannot bound.

    Example:
        >>> import pyarrow as pa, pyarrow.parquet as pq
        >>> sink = io.BytesIO()
        >>> pq.write_table(pa.table({"x": [1.5], "id": [7]}), sink)
        >>> parquet_frame(sink.getvalue(), ["x"], RequestLimits.for_model(10**4, 10, n_columns=1))
             x
        0  1.5
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(pa.BufferReader(body))
        meta = source.metadata
        limits.check_columns(meta.num_columns)
        schema = source.schema_arrow
    except HTTPError:
        raise
    except Exception as e:
        raise HTTPError(400, "bad_input", f"Parquet: {str(e).splitlines()[0]}") from None
    rows = meta.num_rows
    limits.check_rows(rows)
    leaf = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
    wanted = [c for c in columns if c in schema.names and c in leaf]
    size = 0
    strings = []
    for name in wanted:
        kind = schema.field(name).type
        if pa.types.is_nested(kind) or pa.types.is_dictionary(kind):
            raise HTTPError(
                400, "wrong_type", f"Parquet column {name!r} is {kind}; send plain values", name
            )
        chunks = [meta.row_group(g).column(leaf[name]) for g in range(meta.num_row_groups)]
        if pa.types.is_binary(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
            if any("DELTA_BYTE_ARRAY" in c.encodings for c in chunks):
                raise HTTPError(
                    400,
                    "bad_input",
                    f"Parquet column {name!r}: DELTA_BYTE_ARRAY encoding is not accepted; "
                    "write it PLAIN or dictionary-encoded (the default)",
                    name,
                )
            strings.append(name)
            size += rows * 8 + sum(c.total_uncompressed_size for c in chunks)
        else:
            size += rows * max(1, getattr(kind, "bit_width", 64) // 8)
    limits.check_decoded(size)
    try:
        table = pq.read_table(
            pa.BufferReader(body), columns=wanted, read_dictionary=strings, use_threads=False
        )
        for name in strings:  # the dictionary's expansion, measured before it is expanded
            column = table.column(name)
            lengths = [pc.binary_length(c.dictionary).take(c.indices) for c in column.chunks]
            size += sum((pc.sum(x).as_py() or 0) for x in lengths)
            limits.check_decoded(size)
            table = table.set_column(
                table.schema.get_field_index(name), name, column.cast(column.type.value_type)
            )
        return table.to_pandas()
    except HTTPError:
        raise
    except Exception as e:
        raise HTTPError(400, "bad_input", f"Parquet: {str(e).splitlines()[0]}") from None
