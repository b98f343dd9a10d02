"""Serving a bundle: the REST scoring app, its server, and batch scoring of files.

The app is a raw ASGI application (no framework on the request path) that speaks MLflow's
scoring protocol, so clients of ``mlflow models serve`` work unchanged:

- ``POST /invocations`` with ``application/json`` holding exactly one of ``dataframe_split``,
  ``dataframe_records``, ``instances`` (a list of records) or ``inputs`` (records, or
  ``{column: [values]}``), or with ``text/csv`` (a header line, then rows), or
  ``application/vnd.apache.parquet`` (a Parquet file). The answer is ``{"predictions": ...}``
  exactly as ``mlflow models serve`` gives it for the same model and payload: a list of labels,
  or a list of ``{"label": ..., "score": ...}`` records for a bundle with a decision threshold.
- ``GET /ping`` and ``GET /health``: liveness, always open.
- ``GET /version``: relayml's and MLflow's versions, the model URI and the model's provenance.
- ``GET /openapi.json``: an OpenAPI 3 description whose request schema lists the raw columns.

Extra columns: ignored, as MLflow's schema enforcement does (it keeps only the signature's
columns). Integers are accepted in ``double`` columns. Missing columns, values of the wrong
type, nulls, empty inputs, malformed JSON, unknown content types, oversize bodies and missing
or wrong bearer tokens get a JSON error ``{"error": {"code", "message", "field"}}`` with a 4xx
status, never a stack trace; the server keeps serving.

Speed: for numeric bundles the records go straight from ``orjson`` into one float64 matrix and
through the pipeline's steps (see :func:`relayml.bundle.load_bundle`). JSON bodies of up to
``_INLINE_BYTES`` are decoded and scored on the event loop; bigger ones, and every CSV and
Parquet body, in a worker thread, so that a big body never stalls the small ones.

Limits (:mod:`relayml.serving_limits`): a body of at most ``max_body`` bytes, ``max_rows``
records and a bounded column count, decoding to at most 8 x ``max_body`` (Parquet checked
from its metadata before decoding): 413 with a JSON reason beyond. Numeric columns take
finite numbers only: ``NaN``/null is a missing value, ``inf``, ``true``/``false`` and values
that make the model's arithmetic undefined (``1e308`` in every column: inf - inf) are refused
alike in every content type.
Connections that hold a request open without sending are closed (:mod:`relayml.serving_http`).

This module must not write to MLflow: it only reads models.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import operator
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from relayml import __version__
from relayml import tags as tag
from relayml.batch import (
    predict_file,
)
from relayml.bundle import Bundle, load_bundle
from relayml.errors import BundleInputError, UsageError
from relayml.serving_limits import HTTPError as _HTTPError
from relayml.serving_limits import RequestLimits, check_finite, csv_frame, parquet_frame

__all__ = ["check_bind", "create_app", "predict_file", "predictions_payload", "run_server"]

_log = logging.getLogger("relayml.serve")

_INLINE_BYTES = 128 * 1024
_RENDER_CHUNK = 4096
DEFAULT_MAX_ROWS = 100_000
_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_JSON_TYPES = {
    "double": {"type": "number"},
    "float": {"type": "number"},
    "long": {"type": "integer"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
    "datetime": {"type": "string", "format": "date-time"},
    "binary": {"type": "string", "format": "byte"},
}
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _error_body(code: str, message: str, field: str | None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "field": field}})


# --------------------------------------------------------------------------------------------
# parsing requests into a matrix (numeric bundles) or a DataFrame


def _check_matrix(values: Any, columns: list[str], where: str, exact: bool) -> np.ndarray:
    """A float64 matrix from nested lists, or a 400 naming the first bad column.

    With ``exact``, every value is checked to be a number first: numpy would make ``true``
    1.0 in a row of floats (the body holds a ``true`` or ``false`` somewhere).
    """
    try:
        X = np.array(values, dtype=None)
    except ValueError:  # ragged
        X = np.array(values, dtype=object)
    shaped = X.ndim == 2 and X.shape[1] == len(columns) and X.dtype.kind in "fi"
    if shaped and not exact:
        return np.ascontiguousarray(X, dtype=np.float64)
    for j, name in enumerate(columns):
        for i, row in enumerate(values):
            v = row[j] if isinstance(row, list | tuple) and len(row) > j else None
            if v is None:
                raise _HTTPError(
                    400, "missing_value", f"{where}[{i}]: column {name!r} is null or absent", name
                )
            if type(v) not in (float, int):
                raise _HTTPError(
                    400,
                    "wrong_type",
                    f"{where}[{i}]: column {name!r} must be a number; got {type(v).__name__} "
                    f"{str(v)[:40]!r}",
                    name,
                )
    if shaped:
        return np.ascontiguousarray(X, dtype=np.float64)
    raise _HTTPError(400, "bad_input", f"{where}: rows must be lists of numbers", where)


def _missing(columns: list[str], present: Any, where: str) -> _HTTPError:
    name = next(c for c in columns if c not in present)
    return _HTTPError(
        400,
        "missing_column",
        f"{where}: missing column {name!r} (the model needs: {', '.join(columns)})",
        name,
    )


def _records_matrix(records: Any, columns: list[str], where: str, exact: bool) -> np.ndarray:
    try:
        if len(columns) > 1:  # itemgetter pulls a record's values in one C call (a tuple)
            rows = list(map(operator.itemgetter(*columns), records))
        else:
            rows = [[r[c] for c in columns] for r in records]
    except (KeyError, TypeError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise _HTTPError(
                    400, "bad_input", f"{where}[{i}] must be an object {{column: value}}", where
                ) from None
            if any(c not in r for c in columns):
                raise _missing(columns, r, f"{where}[{i}]") from None
        raise
    return _check_matrix(rows, columns, where, exact)


def _split_matrix(split: dict[str, Any], columns: list[str], exact: bool) -> np.ndarray:
    cols, data = split["columns"], split["data"]
    position = {c: i for i, c in enumerate(cols) if isinstance(c, str)}
    if any(c not in position for c in columns):
        raise _missing(columns, position, "dataframe_split")
    if cols == columns:
        return _check_matrix(data, columns, "dataframe_split.data", exact)
    idx = [position[c] for c in columns]
    try:
        rows = [[row[j] for j in idx] for row in data]
    except (IndexError, TypeError, KeyError):
        raise _HTTPError(
            400,
            "bad_input",
            f"dataframe_split.data rows must be lists of {len(cols)} values (one per column)",
            "dataframe_split.data",
        ) from None
    return _check_matrix(rows, columns, "dataframe_split.data", exact)


def _columnar_matrix(inputs: dict[str, Any], columns: list[str], exact: bool) -> np.ndarray:
    if any(c not in inputs for c in columns):
        raise _missing(columns, inputs, "inputs")
    cols = [inputs[c] if isinstance(inputs[c], list) else [inputs[c]] for c in columns]
    n = len(cols[0])
    if any(len(c) != n for c in cols):
        raise _HTTPError(
            400, "bad_input", "inputs: all columns must have the same length", "inputs"
        )
    return _check_matrix([list(r) for r in zip(*cols, strict=True)], columns, "inputs", exact)


def _payload_frame(fmt: str, value: Any, limits: RequestLimits) -> pd.DataFrame:
    """The DataFrame of a JSON payload (bundles with non-numeric columns)."""
    if fmt == "dataframe_split":
        return pd.DataFrame(value["data"], columns=value["columns"])
    if isinstance(value, dict) and fmt == "inputs":
        return pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in value.items()})
    if not all(isinstance(r, dict) for r in value):
        raise _HTTPError(400, "bad_input", f"{fmt} must be a list of records", fmt)
    keys: set[str] = set()
    for record in value:  # distinct keys are the frame's columns
        keys.update(record)
        limits.check_columns(len(keys))
    return pd.DataFrame.from_records(value)


def _shape(fmt: str, value: Any, limits: RequestLimits) -> None:
    """Check a JSON payload's shape, rows and columns (before any per-value work)."""
    if fmt == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise _HTTPError(
                400, "bad_input", 'dataframe_split must be {"columns": [...], "data": [[...]]}', fmt
            )
        if not isinstance(value.get("columns"), list):
            raise _HTTPError(
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
        raise _HTTPError(400, "bad_input", f"{fmt} must be a list of records", fmt)
    if rows == 0:
        raise _HTTPError(400, "empty_input", f"{fmt} is empty: send at least one record", fmt)
    limits.check_rows(rows)


def _parse_json(body: bytes, bundle: Bundle, limits: RequestLimits) -> np.ndarray | pd.DataFrame:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _HTTPError(400, "malformed_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _HTTPError(
            400,
            "bad_input",
            f"the body must be a JSON object with exactly one of {', '.join(_FORMATS)}",
        )
    found = [k for k in _FORMATS if k in doc]
    if len(found) != 1:
        raise _HTTPError(
            400,
            "bad_input",
            f"the body must hold exactly one of {', '.join(_FORMATS)}; got keys "
            f"{', '.join(map(str, doc)) or 'none'}",
        )
    fmt = found[0]
    value = doc[fmt]
    _shape(fmt, value, limits)
    columns = bundle.columns
    if not bundle.numeric:
        return _payload_frame(fmt, value, limits)
    exact = b"true" in body or b"false" in body  # a boolean somewhere: check every value
    if fmt == "dataframe_split":
        return _split_matrix(value, columns, exact)
    if fmt == "inputs" and isinstance(value, dict):
        return _columnar_matrix(value, columns, exact)
    return _records_matrix(value, columns, fmt, exact)


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
# the ASGI app


def _openapi(bundle: Bundle) -> dict[str, Any]:
    properties = {n: _JSON_TYPES.get(t, {}) for n, t in bundle.input_schema}
    record = {
        "type": "object",
        "properties": properties,
        "required": bundle.columns,
        "additionalProperties": True,
    }
    if bundle.output_columns:
        prediction: dict[str, Any] = {
            "type": "object",
            "properties": {"label": {}, "score": {"type": "number"}},
        }
    else:
        prediction = {}
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "nullable": True},
                },
            }
        },
    }
    body = {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "dataframe_records": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Record"},
                    }
                },
                "required": ["dataframe_records"],
            },
            {
                "type": "object",
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "data": {"type": "array", "items": {"type": "array"}},
                        },
                        "required": ["columns", "data"],
                    }
                },
                "required": ["dataframe_split"],
            },
            {
                "type": "object",
                "properties": {
                    "instances": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}}
                },
                "required": ["instances"],
            },
            {
                "type": "object",
                "properties": {"inputs": {}},
                "required": ["inputs"],
            },
        ]
    }
    answers = {"$ref": "#/components/responses/Error"}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"relayml scoring: {bundle.uri}", "version": __version__},
        "paths": {
            "/invocations": {
                "post": {
                    "summary": "Score raw records",
                    "description": (
                        "A JSON body (one of dataframe_split, dataframe_records, instances, "
                        "inputs), a CSV body (a header line, then rows) or a Parquet file. "
                        "413 beyond the server's --max-body bytes, --max-rows records, "
                        "its column limit or 8 x --max-body decoded."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": body},
                            "text/csv": {
                                "schema": {"type": "string"},
                                "example": ",".join(bundle.columns) + "\n",
                            },
                            "application/vnd.apache.parquet": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "predictions, one per record",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "predictions": {"type": "array", "items": prediction}
                                        },
                                    }
                                }
                            },
                        },
                        "400": answers,
                        "401": answers,
                        "405": answers,
                        "413": answers,
                        "415": answers,
                    },
                }
            },
            "/ping": {"get": {"responses": {"200": {"description": "alive"}}}},
            "/health": {"get": {"responses": {"200": {"description": "alive"}}}},
            "/version": {"get": {"responses": {"200": {"description": "versions, provenance"}}}},
        },
        "components": {
            "schemas": {"Record": record, "Error": error},
            "responses": {
                "Error": {
                    "description": "bad request",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_JSON_HEADERS = [(b"content-type", b"application/json")]


def _freeze_heap() -> None:
    """Move everything loaded so far (MLflow, pandas, scikit-learn, the model: ~10^6 objects)
    out of the garbage collector's reach.

    Requests allocate a few containers each; every ~700 of them trigger a young collection
    and now and then a full one, which walked that whole heap for tens of milliseconds: the
    p99 latency. Frozen objects are never scanned (nor freed, which they never are anyway).
    """
    import gc

    gc.collect()
    gc.freeze()


class ScoringApp:
    """The ASGI scoring app; build it with :func:`create_app`."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        token: str | None,
        max_body: int,
        max_rows: int = DEFAULT_MAX_ROWS,
        provenance: dict[str, Any] | None,
    ) -> None:
        import mlflow

        self.bundle = bundle
        self.max_body = max_body
        self.limits = RequestLimits.for_model(max_body, max_rows, n_columns=len(bundle.columns))
        self._token = token.encode() if token else None
        self._version = orjson.dumps(
            {
                "relayml": __version__,
                "mlflow": mlflow.__version__,
                "model_uri": bundle.uri,
                "provenance": {**bundle.provenance, **(provenance or {})},
            }
        )
        self._openapi = orjson.dumps(_openapi(bundle))
        self._mimes: dict[bytes, str] = {}
        self._floats = [n for n, t in bundle.input_schema if t in ("double", "float")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    _freeze_heap()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _respond(
        self, send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        if extra:
            headers += extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: Scope) -> bool:
        """Whether the request carries the bearer token (the scheme in any case)."""
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, credentials = given.partition(b" ")
        ok = hmac.compare_digest(credentials.strip(), self._token or b"")
        return ok and scheme.lower() == b"bearer"

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            allowed = _ROUTES.get(path)
            if allowed is None:
                raise _HTTPError(404, "not_found", f"no route {method} {path}", None)
            if method not in allowed:
                raise _HTTPError(
                    405, "method_not_allowed", f"{path} answers {' and '.join(allowed)} only"
                )
            if self._token is not None and path not in _OPEN and not self._authorized(scope):
                raise _HTTPError(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                    "authorization",
                )
            if path == "/invocations":
                await self._invocations(scope, receive, send)
            elif path == "/version":
                await self._respond(send, 200, self._version)
            elif path == "/openapi.json":
                await self._respond(send, 200, self._openapi)
            else:
                await self._respond(send, 200, b'{"status":"ok"}')
        except _HTTPError as e:
            extra = None
            if e.status == 405:
                extra = [(b"allow", ", ".join(_ROUTES[path]).encode())]
            elif e.status == 401:
                extra = [(b"www-authenticate", b'Bearer realm="relayml"')]
            await self._respond(send, e.status, _error_body(e.code, e.message, e.field), extra)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise _HTTPError(
                413,
                "payload_too_large",
                f"the body is over {self.max_body} bytes; send smaller batches",
            )
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HTTPError(400, "disconnected", "the client went away before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _HTTPError(
                    413,
                    "payload_too_large",
                    f"the body is over {self.max_body} bytes; send smaller batches",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        mime = self._mimes.get(content_type)
        if mime is None:
            mime = self._mime(content_type)
            if len(self._mimes) < 64:  # clients send the same few headers again and again
                self._mimes[content_type] = mime
        body = await self._read_body(scope, receive)
        if mime == "application/json" and len(body) <= _INLINE_BYTES:
            answer = self._answer(mime, body)  # small: cheaper than a hop to a thread
        else:  # decoding and scoring a big body must not stall the other requests
            answer = await asyncio.to_thread(self._answer, mime, body)
        await self._respond(send, 200, answer)

    @staticmethod
    def _mime(content_type: bytes) -> str:
        """The accepted media type of a Content-Type header, or a 415."""
        mime, _, params = content_type.decode("latin-1").partition(";")
        mime = mime.strip().lower()
        charset = params.strip().lower()
        if charset and charset.replace(" ", "") not in ("charset=utf-8", "charset=utf8"):
            raise _HTTPError(
                415,
                "unsupported_media_type",
                f"only UTF-8 bodies are accepted; got {params.strip()!r}",
                "content-type",
            )
        if mime not in _MEDIA_TYPES:
            raise _HTTPError(
                415,
                "unsupported_media_type",
                f"content type {mime or '(none)'!r} is not supported; use application/json "
                "(dataframe_split, dataframe_records, instances or inputs), text/csv or "
                "application/vnd.apache.parquet",
                "content-type",
            )
        return mime

    def _answer(self, mime: str, body: bytes) -> bytes:
        """Decode, check and score a body: the response body of a 200, or an _HTTPError."""
        bundle = self.bundle
        try:
            if mime == "application/json":
                data = _parse_json(body, bundle, self.limits)
            elif mime == "text/csv":
                data = csv_frame(body, bundle.input_schema, self.limits)
            else:
                data = parquet_frame(body, bundle.columns, self.limits)
        except (ValueError, TypeError, KeyError) as e:  # pandas on a payload of odd shape
            raise _HTTPError(400, "bad_input", f"the body does not parse: {e}") from None
        try:
            # inf - inf is no score (1e308 in every column); an overflow that saturates is
            with np.errstate(invalid="raise"):
                predictions = _predict(bundle, data, self._floats)
        except _HTTPError:
            raise
        except FloatingPointError:
            raise _HTTPError(
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
            raise _HTTPError(400, code, str(e), e.field) from None
        except (ValueError, TypeError, KeyError) as e:
            raise _HTTPError(
                400, "bad_input", f"the model rejected the input: {str(e).splitlines()[0]}"
            ) from None
        except Exception:
            _log.exception("scoring failed")
            raise _HTTPError(
                500, "internal", "the model failed on this input; see the server log"
            ) from None
        return _render(predictions, bundle.output_columns)


_MEDIA_TYPES = ("application/json", "text/csv", "application/vnd.apache.parquet")
#: path → the methods it answers; /ping and /health are open even with a token
_ROUTES = {
    "/invocations": ("POST",),
    "/version": ("GET",),
    "/openapi.json": ("GET",),
    "/ping": ("GET", "HEAD"),
    "/health": ("GET", "HEAD"),
}
_OPEN = ("/ping", "/health")


def _predict(bundle: Bundle, data: np.ndarray | pd.DataFrame, floats: list[str]) -> Any:
    if isinstance(data, np.ndarray):
        return bundle.score_matrix(data)  # an array, or a tuple of arrays (label, score)
    frame = bundle.frame(data)  # the schema's columns, float columns as floats
    check_finite(frame, floats)
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


def create_app(
    bundle: Bundle,
    *,
    token: str | None = None,
    max_body: int = 5 * 2**20,
    max_rows: int = DEFAULT_MAX_ROWS,
    provenance: dict[str, Any] | None = None,
) -> ScoringApp:
    """The ASGI scoring app of a bundle.

    Args:
        bundle: a loaded bundle (:func:`relayml.bundle.load_bundle`).
        token: if set, every route but ``/ping`` and ``/health`` needs
            ``Authorization: Bearer <token>`` (the scheme in any case).
        max_body: largest request body accepted, in bytes (413 beyond). The columns the model
            reads may decode to at most 8 times as much (see :mod:`relayml.serving_limits`).
        max_rows: most records in one request (413 beyond; checked before decoding).
        provenance: shown by ``GET /version`` (run keys, data digest, commit, ...), on top of
            the bundle's own ``relay.*`` tags.

    Returns:
        An ASGI application.

    Example:
        >>> from starlette.testclient import TestClient
        >>> client = TestClient(create_app(load_bundle(uri)))  # doctest: +SKIP
        >>> client.post("/invocations", json={"dataframe_records": rows}).json()  # doctest: +SKIP
        {'predictions': [0, 0]}
    """
    return ScoringApp(
        bundle, token=token, max_body=max_body, max_rows=max_rows, provenance=provenance
    )


_ENV = "RELAY_SERVE_CONFIG"
_TOKEN_ENV = "RELAY_SERVE_TOKEN"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_bind(host: str, port: int, *, token: str | None) -> str | None:
    """Check where a scoring server is to listen: a warning to show, if any.

    Raises:
        UsageError: a port outside 1..65535.

    Example:
        >>> check_bind("0.0.0.0", 5001, token=None)[:25]
        '0.0.0.0 is reachable from'
        >>> check_bind("127.0.0.1", 70000, token=None)
        Traceback (most recent call last):
        ...
        relayml.errors.UsageError: port 70000 is out of range: use a TCP port from 1 to 65535
    """
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range: use a TCP port from 1 to 65535")
    if host not in _LOCAL_HOSTS and not host.startswith("127.") and not token:
        return (
            f"{host} is reachable from other machines and no --token-env is set: anyone who "
            "can reach it can score records and read /version"
        )
    return None


def _app_from_env() -> ScoringApp:
    """uvicorn factory for worker processes: the settings travel in an environment variable."""
    import mlflow

    config = json.loads(os.environ[_ENV])
    token = os.environ.get(config["token_env"]) if config.get("token_env") else None
    # the parent resolved the model in the project's store; workers are fresh processes
    if config.get("tracking_uri"):
        mlflow.set_tracking_uri(config["tracking_uri"])
    if config.get("registry_uri"):
        mlflow.set_registry_uri(config["registry_uri"])
    return create_app(
        load_bundle(config["model_uri"]),
        token=token,
        max_body=config["max_body"],
        max_rows=config["max_rows"],
        provenance=config.get("provenance"),
    )


def run_server(
    model_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5001,
    workers: int = 1,
    max_body: int = 5 * 2**20,
    max_rows: int = DEFAULT_MAX_ROWS,
    token: str | None = None,
    token_env: str | None = None,
    provenance: dict[str, Any] | None = None,
    bundle: Bundle | None = None,
) -> None:
    """Serve a bundle over HTTP until interrupted (uvicorn, httptools and uvloop if installed).

    Args:
        model_uri: the bundle, e.g. ``models:/fraud@champion``.
        host: interface to bind; the default answers this machine only.
        port: TCP port.
        workers: worker processes (uvicorn's multiprocess mode) when above 1.
        max_body: largest request body, in bytes.
        max_rows: most records in one request.
        token: bearer token required on every route but ``/ping`` and ``/health``.
        token_env: the environment variable that holds ``token``: worker processes read it
            from there (without it, ``RELAY_SERVE_TOKEN`` is set for them). The token is
            never put on a command line.
        provenance: extra provenance for ``GET /version``.
        bundle: the bundle at ``model_uri`` if the caller loaded it already.

    Raises:
        NotFound: no model at ``model_uri`` (checked before the server starts).
        UsageError: a port out of range, fewer than one worker or row.

    Example:
        >>> run_server("models:/fraud@champion", port=5001, workers=2)  # doctest: +SKIP
    """
    import importlib.util

    import uvicorn

    if workers < 1:
        raise UsageError(f"workers must be at least 1; got {workers}")
    if max_rows < 1:
        raise UsageError(f"max rows must be at least 1; got {max_rows}")
    warning = check_bind(host, port, token=token)
    if warning:
        _log.warning(warning)
    if bundle is None:
        bundle = load_bundle(model_uri)  # fail early, in the parent, with a clear error
    provenance = {"model_uri": model_uri, **bundle.provenance, **(provenance or {})}
    from relayml.serving_http import KEEP_ALIVE_TIMEOUT

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,
        "log_level": "warning",
        "proxy_headers": False,  # no per-request middleware: nothing here reads client addresses
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT,
    }
    if importlib.util.find_spec("httptools"):  # with header and body timeouts
        options["http"] = "relayml.serving_http:GuardedHttpProtocol"
    if importlib.util.find_spec("uvloop"):
        options["loop"] = "uvloop"
    if workers > 1:
        import mlflow

        if token and (not token_env or os.environ.get(token_env) != token):
            token_env = _TOKEN_ENV  # the workers' only way to it: no command line, no file
            os.environ[token_env] = token
        os.environ[_ENV] = json.dumps(
            {
                "model_uri": model_uri,
                "token_env": token_env if token else None,  # its name, never its value
                "max_body": max_body,
                "max_rows": max_rows,
                "provenance": provenance,
                "tracking_uri": mlflow.get_tracking_uri(),
                "registry_uri": mlflow.get_registry_uri(),
            }
        )
        uvicorn.run("relayml.serve:_app_from_env", factory=True, workers=workers, **options)
    else:
        app = create_app(
            bundle, token=token, max_body=max_body, max_rows=max_rows, provenance=provenance
        )
        uvicorn.run(app, **options)


# -- relay references → served models ---------------------------------------------------------


def resolve_model(ref: str, *, project: Any = None) -> tuple[str, dict[str, Any]]:
    """The model URI and provenance of a run reference, a chain spec, or ``models:/NAME@ALIAS``.

    Args:
        ref: ``training/logreg@latest`` (any run reference of a run that logged a bundle),
            a chain spec such as ``"load=transactions@latest processing=plain training=logreg"``
            (its newest coherent chain), or a registry URI ``models:/fraud@champion``.
        project: the project (default: around the working folder).

    Returns:
        ``(model_uri, provenance)``; provenance names the keys of the load, processing and
        training runs, the data version, the code commit and the model URI.

    Raises:
        NotFound: nothing matches, or the run logged no model.

    Example:
        >>> uri, prov = resolve_model("training/logreg@latest")  # doctest: +SKIP
        >>> prov["training"]  # doctest: +SKIP
        'training/logreg@20190210094501'
    """
    from relayml.errors import NotFound
    from relayml.runs import get, open_project

    settings = open_project(project)
    if ref.startswith("models:/"):
        from relayml.store import get_store

        get_store(settings)  # points MLflow's registry at the project's store
        return ref, {"model_uri": ref}
    if "=" in ref:
        from relayml.chain import chain

        found = chain(*ref.replace(",", " ").split(), dry_run=True, project=settings)
        if not found.complete or found.final is None:
            raise NotFound(f"no complete coherent chain for {ref!r}; run 'relay chain {ref}' first")
        run = found.final
    else:
        run = get(ref, project=settings)
    if not run.model_uri:
        raise NotFound(
            f"run {run.key} logged no model; serve a run of a step that returns a 'model' "
            "output (e.g. training/logreg@latest)"
        )
    return run.model_uri, provenance(run)


def provenance(run: Any) -> dict[str, Any]:
    """Where a training run's model comes from: upstream keys, data version, commit, model URI.

    Example:
        >>> provenance(relay.get("training/logreg@latest"))["load"]  # doctest: +SKIP
        'load/transactions@20190209000000'
    """
    out: dict[str, Any] = {run.step: str(run.key)}
    queue = list(run.upstream.values())
    while queue:
        r = queue.pop(0)
        key = str(r.key)
        if r.step in out and key not in str(out[r.step]):
            out[r.step] = f"{out[r.step]},{key}"
        else:
            out.setdefault(r.step, key)
        queue.extend(r.upstream.values())
    out["data_version"] = run.data_version
    out["commit"] = run.tags.get(tag.GIT_COMMIT)
    out["dirty"] = run.tags.get(tag.GIT_DIRTY) == "true"
    out["model_uri"] = run.model_uri
    out["run_id"] = run.run_id
    return out


def serve(
    ref: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5001,
    workers: int = 1,
    max_body: int = 5 * 2**20,
    max_rows: int = DEFAULT_MAX_ROWS,
    token: str | None = None,
    token_env: str | None = None,
    project: Any = None,
) -> None:
    """Serve the bundle a reference names as a REST API on raw records (blocks until stopped).

    The options are :func:`run_server`'s.

    Example:
        >>> import relayml as relay
        >>> relay.serve("models:/fraud@champion", port=5001)  # doctest: +SKIP
    """
    uri, prov = resolve_model(ref, project=project)
    run_server(
        uri,
        host=host,
        port=port,
        workers=workers,
        max_body=max_body,
        max_rows=max_rows,
        token=token,
        token_env=token_env,
        provenance=prov,
    )


def predict(
    ref: str,
    input: Path | str,
    output: Path | str,
    *,
    key_column: str | None = None,
    batch_size: int = 100_000,
    progress: Callable[[int], None] | None = None,
    project: Any = None,
) -> int:
    """Score a CSV or Parquet file of raw records with the bundle a reference names.

    Returns the number of rows written to ``output`` (CSV or Parquet by its suffix).

    Example:
        >>> relay.predict("training/logreg@latest", "new.csv", "scored.parquet")  # doctest: +SKIP
        20000
    """
    uri, _ = resolve_model(ref, project=project)
    from relayml.cluster import is_dask, project_executor
    from relayml.executor import predict_partitions

    executor = project_executor(project)
    if is_dask(executor):  # partitions scored on the Dask cluster, same output
        return predict_partitions(
            uri,
            input,
            output,
            executor=executor,
            key_column=key_column,
            partition_rows=batch_size,
            progress=progress,
        )
    return predict_file(
        uri,
        Path(input),
        Path(output),
        key_column=key_column,
        batch_size=batch_size,
        progress=progress,
    )
