"""The ASGI scoring app: routes, bearer token, request bodies, and where they are decoded.

A raw ASGI application (no framework on the request path):

- ``POST /invocations``: a body in one of the protocol's content types
  (:mod:`relayml.serving.protocol`), answered ``{"predictions": ...}``;
- ``GET /ping`` and ``GET /health``: liveness, always open;
- ``GET /version``: relayml's and MLflow's versions, the model URI and the model's provenance;
- ``GET /openapi.json``: the OpenAPI document (:mod:`relayml.serving.openapi`).

Errors are JSON ``{"error": {"code", "message", "field"}}`` with a 4xx status (405 with
``Allow``, 401 with ``WWW-Authenticate: Bearer``), never a stack trace; the server keeps
serving. A body over ``max_body`` is refused with 413 before it is read (from its
Content-Length) or as soon as it grows past it (chunked), before any decoding.

Where the work runs: a small JSON body (up to :data:`INLINE_BYTES`) is decoded and scored on
the event loop, which is cheaper than a hop to a thread; a bigger one, and every CSV and
Parquet body, in a worker thread, so that a big body never stalls the small ones.

This module must not write to MLflow: it only serves a bundle already loaded.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from relayml import __version__
from relayml.bundle import Bundle
from relayml.serving.limits import DEFAULT_MAX_BODY, DEFAULT_MAX_ROWS, HTTPError, RequestLimits
from relayml.serving.openapi import openapi
from relayml.serving.protocol import answer, error_body, media_type

__all__ = ["INLINE_BYTES", "ScoringApp", "create_app"]

#: JSON bodies up to this size are decoded and scored on the event loop; others in a thread.
INLINE_BYTES = 128 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: path → the methods it answers; /ping and /health are open even with a token
_ROUTES = {
    "/invocations": ("POST",),
    "/version": ("GET",),
    "/openapi.json": ("GET",),
    "/ping": ("GET", "HEAD"),
    "/health": ("GET", "HEAD"),
}
_OPEN = ("/ping", "/health")
_JSON = (b"content-type", b"application/json")
_OK = b'{"status":"ok"}'


def _freeze_heap() -> None:
    """Move everything loaded so far (MLflow, pandas, scikit-learn, the model: ~10^6 objects)
    out of the garbage collector's reach.

    Requests allocate a few containers each; every ~700 of them trigger a young collection
    and now and then a full one, which walked that whole heap for tens of milliseconds: the
    p99 latency. Frozen objects are never scanned (nor freed, which they never are anyway).
    """
    gc.collect()
    gc.freeze()


class ScoringApp:
    """The ASGI scoring app of one bundle; build it with :func:`create_app`.

    Example:
        >>> from relayml.bundle import load_bundle
        >>> app = create_app(load_bundle(relay.get("training/logreg@latest").model_uri))
        >>> isinstance(app, ScoringApp), app.limits.max_rows
        (True, 100000)
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        token: str | None,
        max_body: int,
        max_rows: int = DEFAULT_MAX_ROWS,
        provenance: dict[str, Any] | None,
    ) -> None:
        import mlflow  # loaded with the bundle already; not at import, which stays light

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
        self._openapi = orjson.dumps(openapi(bundle))
        self._mimes: dict[bytes, str] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI connection scope (``http`` or ``lifespan``)."""
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

    @staticmethod
    async def _respond(
        send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        if extra:
            headers += extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request carries the bearer token (the scheme in any case)."""
        given = next((v for k, v in headers if k == b"authorization"), b"")
        scheme, _, credentials = given.partition(b" ")
        ok = hmac.compare_digest(credentials.strip(), self._token or b"")
        return ok and scheme.lower() == b"bearer"

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            allowed = _ROUTES.get(path)
            if allowed is None:
                raise HTTPError(404, "not_found", f"no route {method} {path}", None)
            if method not in allowed:
                raise HTTPError(
                    405, "method_not_allowed", f"{path} answers {' and '.join(allowed)} only"
                )
            token_needed = self._token is not None and path not in _OPEN
            if token_needed and not self._authorized(scope["headers"]):
                raise HTTPError(
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
                await self._respond(send, 200, _OK)
        except HTTPError as e:
            extra = None
            if e.status == 405:
                extra = [(b"allow", ", ".join(_ROUTES[path]).encode())]
            elif e.status == 401:
                extra = [(b"www-authenticate", b'Bearer realm="relayml"')]
            await self._respond(send, e.status, error_body(e.code, e.message, e.field), extra)

    def _too_large(self) -> HTTPError:
        return HTTPError(
            413,
            "payload_too_large",
            f"the body is over {self.max_body} bytes; send smaller batches",
        )

    async def _read_body(self, length: bytes | None, receive: Receive) -> bytes:
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise self._too_large()
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "disconnected", "the client went away before the body ended")
        body: bytes = message.get("body", b"")
        if len(body) > self.max_body:
            raise self._too_large()
        if not message.get("more_body", False):
            return body  # the usual case: the whole body in one message
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "disconnected", "the client went away before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = b""
        length = None
        for k, v in scope["headers"]:  # one pass over the headers
            if k == b"content-type":
                content_type = v
            elif k == b"content-length":
                length = v
        mime = self._mimes.get(content_type)
        if mime is None:
            mime = media_type(content_type)
            if len(self._mimes) < 64:  # clients send the same few headers again and again
                self._mimes[content_type] = mime
        body = await self._read_body(length, receive)
        if mime == "application/json" and len(body) <= INLINE_BYTES:
            result = answer(mime, body, self.bundle, self.limits)  # cheaper than a thread hop
        else:  # decoding and scoring a big body must not stall the other requests
            result = await asyncio.to_thread(answer, mime, body, self.bundle, self.limits)
        await self._respond(send, 200, result)


def create_app(
    bundle: Bundle,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_rows: int = DEFAULT_MAX_ROWS,
    provenance: dict[str, Any] | None = None,
) -> ScoringApp:
    """The ASGI scoring app of a bundle.

    Args:
        bundle: a loaded bundle (:func:`relayml.bundle.load_bundle`).
        token: if set, every route but ``/ping`` and ``/health`` needs
            ``Authorization: Bearer <token>`` (the scheme in any case).
        max_body: largest request body accepted, in bytes (413 beyond). The columns the model
            reads may decode to at most 8 times as much (see :mod:`relayml.serving.limits`).
        max_rows: most records in one request (413 beyond; checked before decoding).
        provenance: shown by ``GET /version`` (run keys, data digest, commit, ...), on top of
            the bundle's own ``relay.*`` tags.

    Returns:
        An ASGI application.

    Example:
        >>> from starlette.testclient import TestClient
        >>> from relayml.bundle import load_bundle
        >>> bundle = load_bundle(relay.get("training/logreg@latest").model_uri)
        >>> client = TestClient(create_app(bundle, max_rows=10))
        >>> record = dict.fromkeys(bundle.columns, 0.0)
        >>> client.post("/invocations", json={"dataframe_records": [record]}).status_code
        200
        >>> too_many = client.post("/invocations", json={"dataframe_records": [record] * 11})
        >>> too_many.status_code, too_many.json()["error"]["code"]
        (413, 'too_many_rows')
    """
    return ScoringApp(
        bundle, token=token, max_body=max_body, max_rows=max_rows, provenance=provenance
    )
