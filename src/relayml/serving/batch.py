"""Batch scoring of files: a CSV or Parquet file of raw records in, predictions out.

The one front door for local scoring (:func:`predict_file`, what ``relay predict`` runs) and
for Dask scoring (:mod:`relayml.executor` scores :func:`scoring_input`'s batches partition by
partition with :func:`prediction_table`), so both give the same output. It reads files and
loads bundles; it starts no server and imports neither the scoring app nor the executor.

Example:
    >>> relay.get("load/transactions@latest").load("output").head(5).to_csv("new.csv")
    >>> predict_file(relay.get("training/logreg@latest").model_uri, Path("new.csv"), Path("o.csv"))
    5
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relayml.bundle import Bundle, load_bundle
from relayml.errors import BundleInputError, UsageError

__all__ = ["PARQUET_SUFFIXES", "open_input", "predict_file", "prediction_table", "scoring_input"]


def predict_file(
    model_uri: str,
    input: Path,
    output: Path,
    *,
    key_column: str | None = None,
    batch_size: int = 100_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Score a CSV or Parquet file of raw records, streamed in batches.

    The output holds the key column then the predictions (``prediction``, or ``label`` and
    ``score``), as CSV or Parquet by ``output``'s suffix. It is written to a temporary file
    renamed at the end: a failure leaves no half-written output.

    Args:
        model_uri: the bundle.
        input: ``.csv`` or ``.parquet`` file of raw records.
        output: ``.csv`` or ``.parquet`` file to write.
        key_column: column copied beside the predictions. Default: the input's first column
            that is not a model input; if there is none, the row number (column ``row``).
        batch_size: rows scored at once.
        progress: called with the number of rows written so far after each batch.

    Returns:
        The number of rows written.

    Raises:
        UsageError: unknown suffix, missing file, unknown key column, or bad records.

    Example:
        >>> uri = relay.get("training/logreg@latest").model_uri
        >>> relay.get("load/transactions@latest").load("output").head(5).to_parquet("new.parquet")
        >>> predict_file(uri, Path("new.parquet"), Path("out.csv"))
        5
        >>> predict_file(uri, Path("new.parquet"), Path("out.txt"))
        Traceback (most recent call last):
        ...
        relayml.errors.UsageError: output out.txt: unknown suffix; use .csv or .parquet
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    input, output = Path(input), Path(output)
    bundle, batches, key_column = scoring_input(model_uri, input, output, batch_size, key_column)

    tmp = output.with_name(f".{output.name}.part")
    writer: Any = None
    written = 0
    try:
        for batch in batches:
            try:
                table = prediction_table(bundle, batch, key_column, written)
            except BundleInputError as e:
                raise UsageError(f"input {input}, rows {written}..: {e}") from e
            if writer is None:
                if output.suffix.lower() in PARQUET_SUFFIXES:
                    writer = pq.ParquetWriter(tmp, table.schema)
                else:
                    writer = pacsv.CSVWriter(tmp, table.schema)
            writer.write_table(table)
            written += batch.num_rows
            if progress is not None:
                progress(written)
        if writer is None:  # empty input: still write a file with a header
            raise UsageError(f"input {input}: no rows to score")
        writer.close()
        writer = None
        os.replace(tmp, output)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return written


def _csv_error(input: Path, error: Exception) -> UsageError:
    """A one-line error naming the CSV column Arrow only numbers (``In CSV column #31``)."""
    import csv
    import re

    message = str(error).splitlines()[0]
    found = re.search(r"column #(\d+)", message)
    if found:
        with contextlib.suppress(OSError, StopIteration, csv.Error, IndexError):
            with input.open(newline="") as f:
                name = next(csv.reader(f))[int(found[1])]
            message = message.replace(found[0], f"column {name!r}")
    return UsageError(f"input {input}: {message}; fix or drop the bad values")


def _csv_errors(batches: Any, input: Path) -> Any:
    """``batches``, with Arrow's conversion errors (met while streaming) as UsageErrors."""
    import pyarrow as pa

    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise _csv_error(input, e) from e
        yield batch


PARQUET_SUFFIXES = (".parquet", ".pq")


def prediction_table(bundle: Bundle, batch: Any, key_column: str | None, start: int) -> Any:
    """Score one record batch: the key column (or row numbers from ``start``) and predictions.

    Raises:
        BundleInputError: a record the model cannot take (the message names the column).

    Example:
        >>> import pyarrow as pa
        >>> from relayml.bundle import load_bundle
        >>> bundle = load_bundle(relay.get("training/logreg@latest").model_uri)
        >>> records = relay.get("load/transactions@latest").load("output").head(3)
        >>> batch = pa.RecordBatch.from_pandas(records, preserve_index=False)
        >>> prediction_table(bundle, batch, None, 0).column_names
        ['row', 'label', 'score']
    """
    import pyarrow as pa

    predictions = bundle.predict(batch.to_pandas())
    out: dict[str, Any] = {}
    if key_column is None:
        out["row"] = np.arange(start, start + batch.num_rows, dtype=np.int64)
    else:
        out[key_column] = batch.column(key_column)
    if isinstance(predictions, pd.DataFrame):
        for c in predictions.columns:
            out[str(c)] = predictions[c].to_numpy()
    else:
        out["prediction"] = np.asarray(predictions)
    return pa.table(out)


def scoring_input(
    model_uri: str, input: Path, output: Path, rows: int, key_column: str | None
) -> tuple[Bundle, Iterator[Any], str | None]:
    """Check a batch-scoring request and open it: the bundle, its input batches, the key column.

    The key column defaults to the input's first column that the model does not use.

    Raises:
        UsageError: an unknown suffix, a missing file, a column the model needs missing from
            the input, an unknown key column, or fewer than one row per batch.

    Example:
        >>> uri = relay.get("training/logreg@latest").model_uri
        >>> relay.get("load/transactions@latest").load("output").head(5).to_csv("in.csv")
        >>> bundle, batches, key = scoring_input(uri, Path("in.csv"), Path("out.csv"), 2, None)
        >>> [b.num_rows for b in batches]
        [2, 2, 1]
        >>> scoring_input(uri, Path("missing.csv"), Path("out.csv"), 2, None)
        Traceback (most recent call last):
        ...
        relayml.errors.UsageError: input missing.csv: no such file
    """
    for what, path in (("input", input), ("output", output)):
        if path.suffix.lower() not in (".csv", *PARQUET_SUFFIXES):
            raise UsageError(f"{what} {path}: unknown suffix; use .csv or .parquet")
    if not input.is_file():
        raise UsageError(f"input {input}: no such file")
    if rows < 1:
        raise UsageError(f"rows per batch must be at least 1; got {rows}")
    bundle = load_bundle(model_uri)
    names, batches = open_input(input, bundle, rows)
    missing = [c for c in bundle.columns if c not in names]
    if missing:
        raise UsageError(f"input {input}: missing column {missing[0]!r} the model needs")
    if key_column is None:
        key_column = next((c for c in names if c not in set(bundle.columns)), None)
    elif key_column not in names:
        raise UsageError(
            f"key column {key_column!r} is not in {input} (columns: {', '.join(names)})"
        )
    return bundle, batches, key_column


def open_input(input: Path, bundle: Bundle, rows: int) -> tuple[list[str], Iterator[Any]]:
    """Column names and record batches of exactly ``rows`` rows (the last fewer) of a file.

    A CSV or Parquet file of raw records, streamed; CSV columns are typed by the bundle's
    input schema, and a value that does not convert is a UsageError naming the column.

    Example:
        >>> from relayml.bundle import load_bundle
        >>> bundle = load_bundle(relay.get("training/logreg@latest").model_uri)
        >>> relay.get("load/transactions@latest").load("output").head(3).to_parquet("in.parquet")
        >>> names, batches = open_input(Path("in.parquet"), bundle, 2)
        >>> "Amount" in names, [b.num_rows for b in batches]
        (True, [2, 1])
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if input.suffix.lower() in PARQUET_SUFFIXES:
        source = pq.ParquetFile(input)
        names, batches = source.schema_arrow.names, source.iter_batches(batch_size=rows)
    else:
        arrow_types = {"double": pa.float64(), "float": pa.float32(), "long": pa.int64()}
        column_types = {n: arrow_types[t] for n, t in bundle.input_schema if t in arrow_types}
        try:
            reader = pacsv.open_csv(
                input,
                read_options=pacsv.ReadOptions(block_size=1 << 24),
                convert_options=pacsv.ConvertOptions(column_types=column_types),
            )
        except pa.ArrowInvalid as e:
            raise _csv_error(input, e) from e
        names, batches = reader.schema.names, reader
    return names, _csv_errors(_rebatch(batches, rows), input)


def _rebatch(batches: Any, size: int) -> Any:
    """Record batches of exactly ``size`` rows (the last one smaller)."""
    import pyarrow as pa

    pending: list[Any] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == size:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
