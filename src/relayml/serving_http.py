"""uvicorn's HTTP protocol with timeouts: no connection held open by a client that sends nothing.

uvicorn closes a kept-alive connection that stays idle between requests
(``timeout_keep_alive``), but not a new connection that never sends a request, nor a request
whose headers trickle in one byte at a time (slowloris), nor a body that stalls.
:class:`GuardedHttpProtocol` adds those timeouts; :func:`relayml.serve.run_server` uses it.
This module imports uvicorn and httptools (``uvicorn[standard]``) and nothing of relayml.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BODY_TIMEOUT", "HEADER_TIMEOUT", "KEEP_ALIVE_TIMEOUT", "GuardedHttpProtocol"]

#: Seconds from a connection's start, or a request's first byte, to the end of its headers.
HEADER_TIMEOUT = 10.0
#: Seconds a request body may stall before the connection is closed.
BODY_TIMEOUT = 30.0
#: Seconds an idle kept-alive connection is kept between requests.
KEEP_ALIVE_TIMEOUT = 5


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections that hold a request open.

    A new connection, or a new request on a kept-alive one, must complete its headers within
    :data:`HEADER_TIMEOUT` seconds however slowly the bytes come; a body must not stall for
    :data:`BODY_TIMEOUT` seconds. The app then sees ``http.disconnect``. A request that arrives
    in one piece costs one timer (armed at its first byte, cancelled at its end).

    Example:
        >>> import uvicorn
        >>> uvicorn.run(app, http=GuardedHttpProtocol)  # doctest: +SKIP
    """

    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT
    _guard: Any = None
    _in_body = False

    def _arm(self, seconds: float) -> None:
        if self._guard is not None:
            self._guard.cancel()
        self._guard = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _expire(self) -> None:
        self._guard = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            self._arm(self.body_timeout)
        super().data_received(data)

    def on_message_begin(self) -> None:
        if self._guard is None:
            self._arm(self.header_timeout)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_body = True  # the header deadline still runs until body bytes come
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()
