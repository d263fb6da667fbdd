"""POST /v1/leads: authenticate, guard the worker, hand the body to intake, map the result."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Coroutine
from functools import lru_cache
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from limits import RateLimitItemPerSecond
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from exchange.api.auth import require_publisher, runtime
from exchange.api.problems import http_exception_handler, problem
from exchange.catalog.models import Publisher
from exchange.intake.submit import submit_lead
from exchange.intake.validate import Invalid
from exchange.observability import record
from exchange.runtime import Runtime
from exchange.store.db import UNAVAILABLE

_RETRY = {"Retry-After": "1"}


class DirectRoute(APIRoute):
    """Hands the endpoint the ``Request`` itself, skipping FastAPI's dependency solving
    (~15 µs a lead here); the route stays in the OpenAPI document. For endpoints that take
    only ``request`` and return a ``Response``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


router = APIRouter(route_class=DirectRoute)
LEADS_PATH = "/v1/leads"


@router.post(LEADS_PATH, tags=["publishers"], summary="Submit a lead; answers within the deadline")
async def post_lead(request: Request) -> Response:
    arrival = time.monotonic()
    rt = runtime(request)
    publisher = require_publisher(rt, request)
    refused = await _gate(rt, publisher)
    if refused is not None:
        return refused
    # The slot is taken at once, before the body is read: leads that passed the gate
    # together must not all fit under the same cap.
    admission = rt.admission
    admission.in_flight += 1
    record.in_flight(admission.in_flight)
    try:
        limit = rt.catalog.settings.max_body_bytes
        raw = await _read_body(request, limit)
        if raw is None:
            return problem(413, "Request too large", f"the body is limited to {limit} bytes")
        idem = request.headers.get("idempotency-key")
        if idem is not None and not 1 <= len(idem) <= 128:
            return problem(400, "Bad request", "Idempotency-Key must be 1-128 characters")
        answer = await submit_lead(rt, publisher, raw, idem, arrival)
    except Invalid as exc:
        return problem(422, "Invalid lead", "the lead has invalid fields", errors=exc.errors)
    except RedisError:
        # Without Redis no cap, dedupe or idempotency can be promised: refuse, do not guess.
        record.store_error("redis", "lead")
        return problem(503, "Service unavailable", "a store is unreachable", headers=_RETRY)
    except UNAVAILABLE:
        record.store_error("postgres", "lead")
        return problem(503, "Service unavailable", "a store is unreachable", headers=_RETRY)
    finally:
        admission.in_flight -= 1
        record.in_flight(admission.in_flight)
    headers = {"Idempotent-Replayed": "true"} if answer.repeat else None
    return Response(orjson.dumps(answer.body), media_type="application/json", headers=headers)


async def _gate(rt: Runtime, publisher: Publisher) -> Response | None:
    """A 503 or 429 when the lead must be refused before any work, else None.

    Overload first: a lead the worker cannot take must not spend its publisher's rate
    (a publisher retrying after our 503 would hear 429), and under overload, when half the
    requests are refused, the cheapest refusal leaves the most CPU to the leads admitted.
    """
    refusal = rt.admission.refusal()
    if refusal is not None:
        # Refuse at once rather than queue: queued leads would all miss their deadline.
        record.refused("overload")
        return problem(503, "Service unavailable", refusal, headers=_RETRY)
    rate = _per_second(publisher.rate_per_second or rt.catalog.settings.publisher_rate_per_second)
    if not await rt.limiter.hit(rate, publisher.id):
        reset = (await rt.limiter.get_window_stats(rate, publisher.id)).reset_time
        record.refused("rate_limited")
        retry = str(max(1, math.ceil(reset - time.time())))
        return problem(
            429, "Too many requests", "publisher rate limit", headers={"Retry-After": retry}
        )
    return None


@lru_cache(maxsize=256)
def _per_second(amount: int) -> RateLimitItemPerSecond:
    # Immutable once made; a handful of distinct rates exist per catalog.
    return RateLimitItemPerSecond(amount)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None past ``limit`` bytes (read no further than that)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class LeadLane:
    """ASGI middleware that takes ``POST /v1/leads`` straight to :func:`post_lead`.

    Past it, a request would cross FastAPI's exception, exit-stack and body-limit
    middleware, the router's matching and the route's request/response wrappers: about
    a dozen coroutine layers, each also wrapping ``send``. The lead route needs none of
    them (no dependencies, its own body limit, problem+json for every error it expects);
    the router still holds the route for the OpenAPI document and any other method or
    path. Install it inside the metrics middleware, which labels the request by the
    route put in the scope here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(r for r in router.routes if getattr(r, "path", None) == LEADS_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != LEADS_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            response = await post_lead(request)
        except HTTPException as exc:  # the 401 of a missing or unknown key
            response = await http_exception_handler(request, exc)
        await response(scope, receive, send)
