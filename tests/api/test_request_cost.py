"""What a lead request skips: FastAPI's dependency solving, its router and per-request
middleware, and OpenTelemetry lookups unless an operator turns them on (all cost CPU on
every lead, see loadtests/README)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
import starlette.routing
from opentelemetry import trace
from prometheus_client import REGISTRY

from exchange.app import create_app
from exchange.catalog import Catalog
from exchange.settings import AppSettings
from tests.api.conftest import OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import ADMIN, make_config
from tests.kit.exchange import lead_body as make_lead


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> Callable[[], int]:
    real = getattr(owner, name)
    calls = 0

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return lambda: calls


async def test_lead_route_skips_dependency_solving_and_stays_documented(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved = _count_calls(monkeypatch, fastapi.routing, "solve_dependencies")
    m = await market(Buyer("acme", "secret-acme-1", price=20))

    resp = await m.ex.submit(make_lead())
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "sold"
    assert m.posts_seen() == {"acme": 1}
    assert solved() == 0
    # A missing key is still the problem+json 401 the exception handler writes.
    anonymous = await m.ex.client.post("/v1/leads", json=make_lead())
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")

    story = await m.ex.story(resp.json()["lead_id"])
    assert story["status"] == "sold"
    assert solved() > 0  # the counter sees the routes that do solve dependencies
    spec = (await m.ex.client.get("/openapi.json")).json()
    assert spec["paths"]["/v1/leads"]["post"]["tags"] == ["publishers"]


async def test_a_lead_goes_past_the_router_and_everything_else_through_it(
    market: OpenMarket, monkeypatch: pytest.MonkeyPatch
) -> None:
    routed = _count_calls(monkeypatch, starlette.routing.Router, "__call__")
    m = await market(Buyer("acme", "secret-acme-1", price=20))
    at_start = routed()  # the lifespan's start-up goes through the router
    sold_before, invalid_before = _lead_requests("200"), _lead_requests("422")

    resp = await m.ex.submit(make_lead())
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "sold"
    bad = await m.ex.submit({"vertical": "auto_insurance"})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert routed() == at_start
    # Any other method or path on it is the router's: 405 names the allowed method.
    wrong = await m.ex.client.get("/v1/leads")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert routed() == at_start + 1
    # The metrics middleware outside the lane still labels leads by their route.
    assert _lead_requests("200") == sold_before + 1
    assert _lead_requests("422") == invalid_before + 1


def _lead_requests(status: str) -> float:
    labels = {"route": "/v1/leads", "method": "POST", "status": status}
    return REGISTRY.get_sample_value("exchange_http_requests_total", labels) or 0.0


@pytest.mark.parametrize(("otel", "consulted"), [(False, False), (True, True)])
async def test_opentelemetry_is_consulted_only_when_turned_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, otel: bool, consulted: bool
) -> None:
    lookups = _count_calls(monkeypatch, trace, "get_tracer_provider")
    settings = AppSettings(admin_token=ADMIN, config_dir=tmp_path, otel=otel)
    app = create_app(settings, Catalog(make_config([])))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as client:
        for _ in range(3):
            assert (await client.get("/no-such-path")).status_code == 404
    assert (lookups() > 0) is consulted
