"""Running a scoring server: uvicorn, its worker processes, and timeouts on the wire.

:func:`run_server` serves a bundle's app (:mod:`relayml.serving.app`) with uvicorn, httptools
and uvloop, in one process or several (uvicorn's multiprocess mode; the workers get their
settings through an environment variable, and a token only by the name of the variable that
holds it: never on a command line or in a file).

uvicorn closes a kept-alive connection that stays idle between requests
(``timeout_keep_alive``), but not a new connection that never sends a request, nor a request
whose headers trickle in one byte at a time (slowloris), nor a body that stalls.
:class:`GuardedHttpProtocol` adds those timeouts. This module needs uvicorn and httptools
(``uvicorn[standard]``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relayml import store
from relayml.bundle import Bundle, load_bundle
from relayml.errors import UsageError
from relayml.serving.app import ScoringApp, create_app
from relayml.serving.limits import DEFAULT_MAX_BODY, DEFAULT_MAX_ROWS

__all__ = [
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "KEEP_ALIVE_TIMEOUT",
    "GuardedHttpProtocol",
    "check_bind",
    "run_server",
]

_log = logging.getLogger("relayml.serving")

#: Seconds from a connection's start, or a request's first byte, to the end of its headers.
HEADER_TIMEOUT = 10.0
#: Seconds a request body may stall before the connection is closed.
BODY_TIMEOUT = 30.0
#: Seconds an idle kept-alive connection is kept between requests.
KEEP_ALIVE_TIMEOUT = 5


# where a connection is: what its watchdog holds it to
_IDLE, _HEADERS, _BODY_WAIT, _BODY = range(4)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections that hold a request open.

    A new connection, or a new request on a kept-alive one, must complete its headers within
    :data:`HEADER_TIMEOUT` seconds however slowly the bytes come (and its first body bytes
    within that time too); a body must not stall for :data:`BODY_TIMEOUT` seconds. The app
    then sees ``http.disconnect``. Between requests uvicorn's keep-alive timeout applies, and
    while the app works on a request nothing does.

    A request costs no timer: each one notes the loop time of its progress, and one watchdog
    per connection, waking when the earliest deadline could fall, compares.

    Example:
        >>> GuardedHttpProtocol.header_timeout, GuardedHttpProtocol.body_timeout
        (10.0, 30.0)
        >>> uvicorn.run(app, http=GuardedHttpProtocol)  # doctest: +SKIP
    """

    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT
    _watch: Any = None
    _state = _IDLE
    _since = 0.0  # loop time of the request's first byte, or of its last body bytes

    def _check(self) -> None:
        self._watch = None
        if self.transport.is_closing():
            return
        state = self._state
        limit = self.body_timeout if state == _BODY else self.header_timeout
        left = limit - (self.loop.time() - self._since) if state != _IDLE else limit
        if left <= 0:
            self.transport.close()
            return
        self._watch = self.loop.call_later(left, self._check)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._state = _HEADERS
        self._since = self.loop.time()
        self._watch = self.loop.call_later(self.header_timeout, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._state >= _BODY_WAIT:  # body bytes: progress
            self._state = _BODY
            self._since = self.loop.time()
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._state = _HEADERS
        self._since = self.loop.time()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._state = _BODY_WAIT  # the header deadline still runs until body bytes come
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._state = _IDLE
        super().on_message_complete()


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
    config = json.loads(os.environ[_ENV])
    token = os.environ.get(config["token_env"]) if config.get("token_env") else None
    # the parent resolved the model in the project's store; workers are fresh processes
    store.activate_uris(config.get("tracking_uri"), config.get("registry_uri"))
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
    max_body: int = DEFAULT_MAX_BODY,
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
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,
        "log_level": "warning",
        "proxy_headers": False,  # no per-request middleware: nothing here reads client addresses
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT,
    }
    if importlib.util.find_spec("httptools"):  # with header and body timeouts
        options["http"] = "relayml.serving.http:GuardedHttpProtocol"
    if importlib.util.find_spec("uvloop"):
        options["loop"] = "uvloop"
    if workers > 1:
        if token and (not token_env or os.environ.get(token_env) != token):
            token_env = _TOKEN_ENV  # the workers' only way to it: no command line, no file
            os.environ[token_env] = token
        tracking_uri, registry_uri = store.active_uris()
        os.environ[_ENV] = json.dumps(
            {
                "model_uri": model_uri,
                "token_env": token_env if token else None,  # its name, never its value
                "max_body": max_body,
                "max_rows": max_rows,
                "provenance": provenance,
                "tracking_uri": tracking_uri,
                "registry_uri": registry_uri,
            }
        )
        uvicorn.run("relayml.serving.http:_app_from_env", factory=True, workers=workers, **options)
    else:
        app = create_app(
            bundle, token=token, max_body=max_body, max_rows=max_rows, provenance=provenance
        )
        uvicorn.run(app, **options)
