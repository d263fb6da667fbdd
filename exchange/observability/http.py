"""HTTP metrics as a pure ASGI middleware (``BaseHTTPMiddleware`` costs a task per request).

Each request is labelled with its route template (``/v1/leads/{lead_id}``), never the raw
path, so ids in URLs cannot multiply the series; a path no route matched is ``other``.

Usage::

    app.add_middleware(PrometheusMiddleware)
"""

from __future__ import annotations

import time
from collections.abc import Collection
from functools import lru_cache
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exchange.observability.metrics import HTTP_DURATION, HTTP_REQUESTS

UNMATCHED_ROUTE = "other"
# Any token is a valid method on the wire; only these get a series of their own.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@lru_cache(maxsize=1024)
def _children(route: str, method: str, status: int) -> tuple[Any, Any]:
    # labels() takes a lock and builds a key per call: once per (route, method, status).
    # Bounded: routes and methods are fixed sets and statuses are three-digit codes.
    return (
        HTTP_REQUESTS.labels(route=route, method=method, status=str(status)),
        HTTP_DURATION.labels(route=route, method=method),
    )


def route_template(scope: Scope) -> str:
    """The template of the route the router picked, set by Starlette in ``scope["route"]``."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


class PrometheusMiddleware:
    """Counts and times every HTTP request except the scrape itself."""

    def __init__(self, app: ASGIApp, skip_paths: Collection[str] = ("/metrics",)) -> None:
        self.app = app
        self.skip_paths = frozenset(skip_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            requests, duration = _children(route, method, status)
            requests.inc()
            duration.observe(time.perf_counter() - start)
