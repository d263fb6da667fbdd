"""The ASGI middleware labels requests by route template, bounded, and skips the scrape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Response
from prometheus_client import REGISTRY

from exchange.observability.http import PrometheusMiddleware
from exchange.observability.metrics import render_metrics


def build_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(PrometheusMiddleware)

    @app.get("/v1/leads/{lead_id}")
    async def get_lead(lead_id: str) -> dict[str, str]:
        return {"lead_id": lead_id}

    @app.post("/v1/leads", status_code=422)
    async def bad_lead() -> dict[str, str]:
        return {"detail": "bad"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/metrics")
    async def scrape() -> Response:
        body, content_type = render_metrics()
        return Response(body, media_type=content_type)

    return app


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def count(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return value("exchange_http_requests_total", **labels)


def observed(route: str, method: str) -> float:
    return value("exchange_http_request_duration_seconds_count", route=route, method=method)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://exchange") as client:
        yield client


async def test_requests_are_labelled_by_route_template(client: httpx.AsyncClient) -> None:
    template = "/v1/leads/{lead_id}"
    before, timed = count(template, "GET", "200"), observed(template, "GET")
    for lead_id in ("a1", "b2", "c3"):
        assert (await client.get(f"/v1/leads/{lead_id}")).status_code == 200
    assert count(template, "GET", "200") == before + 3
    assert observed(template, "GET") == timed + 3
    body = render_metrics()[0].decode()
    assert "a1" not in body and "/v1/leads/b2" not in body


async def test_status_codes_errors_and_unmatched_paths(client: httpx.AsyncClient) -> None:
    before_422 = count("/v1/leads", "POST", "422")
    before_500 = count("/boom", "GET", "500")
    before_other = count("other", "GET", "404")
    before_method = count("/v1/leads/{lead_id}", "other", "405")
    assert (await client.post("/v1/leads")).status_code == 422
    assert (await client.get("/boom")).status_code == 500
    assert (await client.get("/no/such/path/12345")).status_code == 404
    assert (await client.request("BREW", "/v1/leads/x")).status_code == 405
    assert count("/v1/leads", "POST", "422") == before_422 + 1
    assert count("/boom", "GET", "500") == before_500 + 1
    assert count("other", "GET", "404") == before_other + 1
    assert count("/v1/leads/{lead_id}", "other", "405") == before_method + 1


async def test_the_scrape_itself_is_not_counted(client: httpx.AsyncClient) -> None:
    before = count("/metrics", "GET", "200")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert "exchange_http_requests_total" in response.text
    assert count("/metrics", "GET", "200") == before
