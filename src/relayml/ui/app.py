"""The ``relay ui`` web app: relay's pages under ``/relay/``, MLflow's UI everywhere else.

One origin serves both, so relay's pages link to MLflow's run and model pages and the run
descriptions relay writes into MLflow (``/relay/run/KEY``) link back. MLflow's UI is
reached through a small reverse proxy: to the ``mlflow ui`` child of ``relay ui`` for an
embedded store, to the team's tracking server otherwise (the browser's credentials pass
through, so the server decides what a user may do). relay's pages only read.

Example:
    >>> app = create_app(load_settings(), mlflow_upstream="http://127.0.0.1:5999")  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=5000)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from relayml.config import Settings
from relayml.errors import NotFound, UsageError
from relayml.ui.pages import Pages
from relayml.ui.queries import Queries

__all__ = ["create_app"]

_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade",
}  # fmt: skip


def create_app(
    settings: Settings, *, mlflow_upstream: str | None = None, mlflow_base: str = ""
) -> Starlette:
    """The ASGI app of ``relay ui`` for one project.

    Args:
        settings: the project.
        mlflow_upstream: where MLflow's UI runs; every path outside ``/relay/`` is proxied
            there. None: no proxy (links to MLflow then start with ``mlflow_base``).
        mlflow_base: the prefix of links to MLflow's pages (``""``: this origin).

    Example:
        >>> client = TestClient(create_app(settings))  # doctest: +SKIP
        >>> client.get("/relay/").status_code  # doctest: +SKIP
        200
    """
    pages = Pages(Queries(settings), mlflow_base=mlflow_base)

    def page(render: Callable[[Request], str]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                return HTMLResponse(render(request))
            except (NotFound, UsageError) as e:
                return HTMLResponse(pages.error(str(e)), status_code=404)

        return endpoint

    def compare(request: Request) -> str:
        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not (a and b):
            return pages.pick()
        return pages.compare(a, b)

    routes: list[Any] = [
        Route("/relay", lambda r: RedirectResponse("/relay/")),
        Route("/relay/", page(lambda r: pages.project())),
        Route("/relay/run/{ref:path}", page(lambda r: pages.run(r.path_params["ref"]))),
        Route("/relay/lineage/{ref:path}", page(lambda r: pages.lineage(r.path_params["ref"]))),
        Route("/relay/data/{digest}", page(lambda r: pages.data(r.path_params["digest"]))),
        Route("/relay/compare", page(compare)),
        Route(
            "/relay/history/{step}/{variant}",
            page(
                lambda r: pages.history(
                    r.path_params["step"], r.path_params["variant"], r.query_params.get("metric")
                )
            ),
        ),
        Mount("/relay/static", StaticFiles(packages=[("relayml.ui", "static")]), name="static"),
    ]
    client = None
    if mlflow_upstream:
        client = httpx.AsyncClient(base_url=mlflow_upstream.rstrip("/"), timeout=120.0)
        routes.append(Mount("/", _proxy(client, mlflow_upstream)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if client is not None:  # MLflow's server waits for kept-alive connections to close
            await client.aclose()

    return Starlette(routes=routes, lifespan=lifespan)


def _proxy(client: httpx.AsyncClient, upstream: str) -> Callable[..., Any]:
    """A streaming reverse proxy of every request to MLflow's UI and API at ``upstream``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        url = httpx.URL(path=request.url.path, query=request.url.query.encode())
        drop = _HOP | {"host", "content-length"}
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in drop]
        try:
            outgoing = client.build_request(
                request.method, url, headers=headers, content=await request.body()
            )
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as e:
            message = f"MLflow's UI at {upstream} is not answering ({type(e).__name__}); retry"
            await Response(message, status_code=502)(scope, receive, send)
            return
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}  # raw bytes
        response = StreamingResponse(
            answer.aiter_raw(), status_code=answer.status_code, headers=kept,
            background=BackgroundTask(answer.aclose),
        )  # fmt: skip
        await response(scope, receive, send)

    return app
