"""The scoring protocol: request bodies in, ``{"predictions": ...}`` out, within the limits.

MLflow's scoring protocol, so that clients of ``mlflow models serve`` work unchanged:

- ``application/json`` holding exactly one of ``dataframe_split``, ``dataframe_records``,
  ``instances`` (a list of records) or ``inputs`` (records, or ``{column: [values]}``);
- ``text/csv`` (a header line, then rows);
- ``application/vnd.apache.parquet`` (a Parquet file).

The answer is ``{"predictions": ...}`` exactly as ``mlflow models serve`` gives it for the same
model and payload: a list of labels, or a list of ``{"label": ..., "score": ...}`` records for
a bundle with a decision threshold.

Extra columns are ignored, as MLflow's schema enforcement does. Integers are accepted in
``double`` columns. For numeric bundles the records go straight from ``orjson`` into one
float64 matrix and through the pipeline's steps (see :func:`relayml.bundle.load_bundle`).

Every body is decoded under :class:`~relayml.serving.limits.RequestLimits`: rows, columns and
the decoded size are checked before the costly work (a Parquet body from its metadata, before
any page is decoded; a CSV body from its header and first row, before pandas parses). Numeric
columns take finite numbers only: ``NaN``/null is a missing value, ``inf``, ``true``/``false``
and values that make the model's arithmetic undefined (``1e308`` in every column: inf - inf)
are refused alike in every content type. Every refusal is an
:class:`~relayml.serving.limits.HTTPError`. This module knows nothing of HTTP connections or
ASGI (see :mod:`relayml.serving.app`).
"""

from __future__ import annotations

import csv
import io
import logging
import operator
from typing import Any

import numpy as np
import orjson
import pandas as pd

from relayml.bundle import Bundle
from relayml.errors import BundleInputError
from relayml.serving.limits import HTTPError, RequestLimits, check_finite

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "answer",
    "csv_frame",
    "error_body",
    "media_type",
    "parquet_frame",
    "predictions_payload",
]

_log = logging.getLogger("relayml.serving")

#: The JSON payload formats: a body holds exactly one of them.
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
#: The accepted content types.
MEDIA_TYPES = ("application/json", "text/csv", "application/vnd.apache.parquet")
_RENDER_CHUNK = 4096
_SCAN_FIRST = 4096  # bytes of JSON body scanned for true/false before any numpy test
try:  # numpy >= 2: the floating-point error state is a context variable (see _predict_raising)
    from numpy._core._ufunc_config import (  # type: ignore[attr-defined]
        _extobj_contextvar as _FP_STATE,
    )

    with np.errstate(invalid="raise"):
        _RAISE_INVALID = _FP_STATE.get()
except ImportError:  # pragma: no cover - another numpy
    _FP_STATE = None
_INTEGER_TYPES = {"long": "int64", "integer": "int32", "boolean": "bool", "string": "object"}


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    """The JSON body of an error answer.

    Example:
        >>> error_body("too_many_rows", "over 10 rows")
        b'{"error":{"code":"too_many_rows","message":"over 10 rows","field":null}}'
    """
    return orjson.dumps({"error": {"code": code, "message": message, "field": field}})


# --------------------------------------------------------------------------------------------
# parsing requests into a matrix (numeric bundles) or a DataFrame


def _may_hold_booleans(X: np.ndarray, body: bytes) -> bool:
    """Whether a JSON ``true``/``false`` may be among the numbers of ``X`` (as 1 or 0).

    Scanning the body for the words costs about 1 µs per KB (90 µs for 100 records, a tenth of
    such a request), so a long body is scanned only when ``X`` holds an exact 0 or 1 at all;
    a short one (a few records) is scanned at once, cheaper than the numpy test.
    """
    if len(body) <= _SCAN_FIRST:
        return b"true" in body or b"false" in body
    return bool(((X == 0) | (X == 1)).any()) and (b"true" in body or b"false" in body)


def _check_matrix(values: Any, columns: list[str], where: str, body: bytes) -> np.ndarray:
    """A float64 matrix from nested lists, or a 400 naming the first bad column.

    Where the body may hold a ``true`` or ``false`` (:func:`_may_hold_booleans`), every value
    is checked to be a number first: numpy would make ``true`` 1.0 in a row of floats.
    """
    try:
        X = np.array(values, dtype=None)
    except ValueError:  # ragged
        X = np.array(values, dtype=object)
    shaped = X.ndim == 2 and X.shape[1] == len(columns) and X.dtype.kind in "fi"
    if shaped and not _may_hold_booleans(X, body):
        return np.ascontiguousarray(X, dtype=np.float64)
    for j, name in enumerate(columns):
        for i, row in enumerate(values):
            v = row[j] if isinstance(row, list | tuple) and len(row) > j else None
            if v is None:
                raise HTTPError(
                    400, "missing_value", f"{where}[{i}]: column {name!r} is null or absent", name
                )
            if type(v) not in (float, int):
                raise HTTPError(
                    400,
                    "wrong_type",
                    f"{where}[{i}]: column {name!r} must be a number; got {type(v).__name__} "
                    f"{str(v)[:40]!r}",
                    name,
                )
    if shaped:
        return np.ascontiguousarray(X, dtype=np.float64)
    raise HTTPError(400, "bad_input", f"{where}: rows must be lists of numbers", where)


def _missing(columns: list[str], present: Any, where: str) -> HTTPError:
    name = next(c for c in columns if c not in present)
    return HTTPError(
        400,
        "missing_column",
        f"{where}: missing column {name!r} (the model needs: {', '.join(columns)})",
        name,
    )


def _records_matrix(records: Any, columns: list[str], where: str, body: bytes) -> np.ndarray:
    try:
        if len(columns) > 1:  # itemgetter pulls a record's values in one C call (a tuple)
            rows = list(map(operator.itemgetter(*columns), records))
        else:
            rows = [[r[c] for c in columns] for r in records]
    except (KeyError, TypeError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise HTTPError(
                    400, "bad_input", f"{where}[{i}] must be an object {{column: value}}", where
                ) from None
            if any(c not in r for c in columns):
                raise _missing(columns, r, f"{where}[{i}]") from None
        raise
    return _check_matrix(rows, columns, where, body)


def _split_matrix(split: dict[str, Any], columns: list[str], body: bytes) -> np.ndarray:
    cols, data = split["columns"], split["data"]
    position = {c: i for i, c in enumerate(cols) if isinstance(c, str)}
    if any(c not in position for c in columns):
        raise _missing(columns, position, "dataframe_split")
    if cols == columns:
        return _check_matrix(data, columns, "dataframe_split.data", body)
    idx = [position[c] for c in columns]
    try:
        rows = [[row[j] for j in idx] for row in data]
    except (IndexError, TypeError, KeyError):
        raise HTTPError(
            400,
            "bad_input",
            f"dataframe_split.data rows must be lists of {len(cols)} values (one per column)",
            "dataframe_split.data",
        ) from None
    return _check_matrix(rows, columns, "dataframe_split.data", body)


def _columnar_matrix(inputs: dict[str, Any], columns: list[str], body: bytes) -> np.ndarray:
    if any(c not in inputs for c in columns):
        raise _missing(columns, inputs, "inputs")
    cols = [inputs[c] if isinstance(inputs[c], list) else [inputs[c]] for c in columns]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise HTTPError(400, "bad_input", "inputs: all columns must have the same length", "inputs")
    return _check_matrix([list(r) for r in zip(*cols, strict=True)], columns, "inputs", body)


def _payload_frame(fmt: str, value: Any, limits: RequestLimits) -> pd.DataFrame:
    """The DataFrame of a JSON payload (bundles with non-numeric columns)."""
    if fmt == "dataframe_split":
        return pd.DataFrame(value["data"], columns=value["columns"])
    if isinstance(value, dict) and fmt == "inputs":
        return pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in value.items()})
    if not all(isinstance(r, dict) for r in value):
        raise HTTPError(400, "bad_input", f"{fmt} must be a list of records", fmt)
    keys: set[str] = set()
    for record in value:  # distinct keys are the frame's columns
        keys.update(record)
        limits.check_columns(len(keys))
    return pd.DataFrame.from_records(value)


def _shape(fmt: str, value: Any, limits: RequestLimits) -> None:
    """Check a JSON payload's shape, rows and columns (before any per-value work)."""
    if fmt == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise HTTPError(
                400, "bad_input", 'dataframe_split must be {"columns": [...], "data": [[...]]}', fmt
            )
        if not isinstance(value.get("columns"), list):
            raise HTTPError(
                400, "bad_input", "dataframe_split.columns is required", "dataframe_split.columns"
            )
        limits.check_columns(len(value["columns"]))
        rows = len(value["data"])
    elif fmt == "inputs" and isinstance(value, dict):
        limits.check_columns(len(value))
        rows = max((len(v) if isinstance(v, list) else 1 for v in value.values()), default=0)
    elif isinstance(value, list):
        rows = len(value)
    else:
        raise HTTPError(400, "bad_input", f"{fmt} must be a list of records", fmt)
    if rows == 0:
        raise HTTPError(400, "empty_input", f"{fmt} is empty: send at least one record", fmt)
    limits.check_rows(rows)


def _parse_json(body: bytes, bundle: Bundle, limits: RequestLimits) -> np.ndarray | pd.DataFrame:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HTTPError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise HTTPError(
            400,
            "bad_input",
            f"the body must be a JSON object with exactly one of {', '.join(FORMATS)}",
        )
    found = [k for k in FORMATS if k in doc]
    if len(found) != 1:
        raise HTTPError(
            400,
            "bad_input",
            f"the body must hold exactly one of {', '.join(FORMATS)}; got keys "
            f"{', '.join(map(str, doc)) or 'none'}",
        )
    fmt = found[0]
    value = doc[fmt]
    _shape(fmt, value, limits)
    columns = bundle.columns
    if not bundle.numeric:
        return _payload_frame(fmt, value, limits)
    if fmt == "dataframe_split":
        return _split_matrix(value, columns, body)
    if fmt == "inputs" and isinstance(value, dict):
        return _columnar_matrix(value, columns, body)
    return _records_matrix(value, columns, fmt, body)


def predictions_payload(predictions: Any) -> Any:
    """Predictions as MLflow's scoring server puts them under ``"predictions"``.

    Args:
        predictions: what :meth:`Bundle.predict` returned.

    Returns:
        A JSON-ready list: labels, or ``{"label", "score"}`` records.

    Example:
        >>> predictions_payload(np.array([0, 1]))
        [0, 1]
        >>> predictions_payload(pd.DataFrame({"label": [1], "score": [0.75]}))
        [{'label': 1, 'score': 0.75}]
    """
    if isinstance(predictions, pd.DataFrame):
        names = [str(c) for c in predictions.columns]
        cols = [predictions[c].to_numpy().tolist() for c in predictions.columns]
        return [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]
    if isinstance(predictions, pd.Series):
        return predictions.to_numpy().tolist()
    if isinstance(predictions, np.ndarray):
        return predictions.tolist()
    return predictions


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


# --------------------------------------------------------------------------------------------
# decoding, scoring, encoding


def media_type(content_type: bytes) -> str:
    """The accepted media type of a Content-Type header, or a 415.

    Example:
        >>> media_type(b"Application/JSON; charset=utf-8")
        'application/json'
        >>> media_type(b"text/xml")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relayml.serving.limits.HTTPError: content type 'text/xml' is not supported; use ...
    """
    mime, _, params = content_type.decode("latin-1").partition(";")
    mime = mime.strip().lower()
    charset = params.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8", "charset=utf8"):
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"only UTF-8 bodies are accepted; got {params.strip()!r}",
            "content-type",
        )
    if mime not in MEDIA_TYPES:
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"content type {mime or '(none)'!r} is not supported; use application/json "
            "(dataframe_split, dataframe_records, instances or inputs), text/csv or "
            "application/vnd.apache.parquet",
            "content-type",
        )
    return mime


def answer(mime: str, body: bytes, bundle: Bundle, limits: RequestLimits) -> bytes:
    """Decode, check and score a request body: the response body of a 200.

    Args:
        mime: the body's media type (:func:`media_type`).
        body: the request body, at most ``limits.max_body`` bytes.
        bundle: the served bundle.
        limits: what the request may hold.

    Returns:
        ``{"predictions": [...]}`` as JSON bytes.

    Raises:
        HTTPError: 400 for bad input, 413 over a limit, 500 if the model fails.

    Example:
        >>> from relayml.bundle import load_bundle
        >>> bundle = load_bundle(relay.get("training/logreg@latest").model_uri)
        >>> limits = RequestLimits.for_model(2**20, 10, n_columns=len(bundle.columns))
        >>> body = orjson.dumps({"dataframe_records": [dict.fromkeys(bundle.columns, 0.0)]})
        >>> answer("application/json", body, bundle, limits)[:16]
        b'{"predictions":['
        >>> answer("application/json", b"{}", bundle, limits)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        relayml.serving.limits.HTTPError: the body must hold exactly one of dataframe_split, ...
    """
    try:
        if mime == "application/json":
            data = _parse_json(body, bundle, limits)
        elif mime == "text/csv":
            data = csv_frame(body, bundle.input_schema, limits)
        else:
            data = parquet_frame(body, bundle.columns, limits)
    except (ValueError, TypeError, KeyError) as e:  # pandas on a payload of odd shape
        raise HTTPError(400, "bad_input", f"the body does not parse: {e}") from None
    try:
        # inf - inf is no score (1e308 in every column); an overflow that saturates is
        predictions = _predict_raising(bundle, data)
    except HTTPError:
        raise
    except FloatingPointError:
        raise HTTPError(
            400,
            "out_of_range",
            "the values make the model's arithmetic undefined (magnitudes near float's "
            "limit, such as 1e308, overflow to inf - inf); send values in the range the "
            "model was trained on",
        ) from None
    except BundleInputError as e:
        code = "empty_input" if str(e).startswith("empty") else "bad_input"
        if e.field is not None and "missing column" in str(e):
            code = "missing_column"
        elif e.field is not None and "must be" in str(e):
            code = "wrong_type"
        raise HTTPError(400, code, str(e), e.field) from None
    except (ValueError, TypeError, KeyError) as e:
        raise HTTPError(
            400, "bad_input", f"the model rejected the input: {str(e).splitlines()[0]}"
        ) from None
    except Exception:
        _log.exception("scoring failed")
        raise HTTPError(
            500, "internal", "the model failed on this input; see the server log"
        ) from None
    return _render(predictions, bundle.output_columns)


def _predict_raising(bundle: Bundle, data: np.ndarray | pd.DataFrame) -> Any:
    """:func:`_predict` with numpy raising FloatingPointError on an invalid operation.

    ``np.errstate(invalid="raise")`` builds its error state anew on every entry, which cost
    a tenth of a small request; numpy 2 keeps that state in a context variable, so the one
    built here at import is set and reset directly (``np.errstate`` where that is private
    API is missing).
    """
    if _FP_STATE is None:
        with np.errstate(invalid="raise"):
            return _predict(bundle, data)
    token = _FP_STATE.set(_RAISE_INVALID)
    try:
        return _predict(bundle, data)
    finally:
        _FP_STATE.reset(token)


def _predict(bundle: Bundle, data: np.ndarray | pd.DataFrame) -> Any:
    if isinstance(data, np.ndarray):
        return bundle.score_matrix(data)  # an array, or a tuple of arrays (label, score)
    frame = bundle.frame(data)  # the schema's columns, float columns as floats
    check_finite(frame, [n for n, t in bundle.input_schema if t in ("double", "float")])
    if bundle.numeric:
        return bundle.score_matrix(frame.to_numpy(dtype=np.float64))
    return bundle.predict(frame)


def _render(predictions: Any, output_columns: list[str] | None) -> bytes:
    """The response body ``{"predictions": ...}``, without an intermediate DataFrame."""
    if isinstance(predictions, tuple):  # (label, score) arrays of a bundle with a threshold
        names = output_columns or ["label", "score"]
        n = len(predictions[0])
        if n > _RENDER_CHUNK:  # in pieces: one long orjson call would hold the GIL throughout
            parts = [
                _render(tuple(a[i : i + _RENDER_CHUNK] for a in predictions), names)[16:-2]
                for i in range(0, n, _RENDER_CHUNK)
            ]
            return b'{"predictions":[' + b",".join(parts) + b"]}"
        columns = [a.tolist() for a in predictions]
        records = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
        return orjson.dumps({"predictions": records})
    if isinstance(predictions, np.ndarray) and predictions.dtype.kind in "iub":
        return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps(
        {"predictions": predictions_payload(predictions)}, option=orjson.OPT_SERIALIZE_NUMPY
    )
