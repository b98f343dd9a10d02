"""What one scoring request may cost: body, rows, columns, decoded bytes, time on the wire.

The scoring protocol (:mod:`relayml.serving.protocol`) decodes request bodies under
:class:`RequestLimits`, so that no small body can make the server allocate gigabytes or stall:

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
- **Time on the wire**: see :mod:`relayml.serving.http` (header, body and keep-alive timeouts).

Every refusal is a :class:`HTTPError`, which the app turns into a JSON error (413 for limits,
400 for bad input). This module imports nothing of relayml.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "DECODED_PER_BODY",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_ROWS",
    "HTTPError",
    "RequestLimits",
    "check_finite",
]

#: The decoded size of a request may be this many times ``max_body``.
DECODED_PER_BODY = 8
#: Columns a request may have, at least (more if the model itself needs more).
MIN_COLUMNS = 1024

#: Default largest request body, in bytes (``relay serve --max-body``).
DEFAULT_MAX_BODY = 5 * 2**20
#: Default most records in one request (``relay serve --max-rows``).
DEFAULT_MAX_ROWS = 100_000


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
        relayml.serving.limits.HTTPError: record 1: column 'x' must be a finite number; got inf
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
