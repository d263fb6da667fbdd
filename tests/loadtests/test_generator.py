"""The generator is open-loop: it keeps its schedule and counts queueing from intended send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from statistics import median

import orjson
import pytest
from aiohttp import web

from loadtests.generator import classify, run_open_loop
from loadtests.leads import LeadFactory
from loadtests.procs import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KEY = "pub-test-key"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/leads", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_slow_server_shows_growing_latency_not_a_slower_generator(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    lock = asyncio.Lock()

    async def one_at_a_time(request: web.Request) -> web.Response:
        await request.read()
        async with lock:  # capacity 20/s, offered 40/s: the queue must grow
            await asyncio.sleep(0.05)
        return web.json_response({"lead_id": "x", "status": "sold", "payout": "1.00"})

    url = await serve(one_at_a_time)
    result = await run_open_loop(url, KEY, rate=40, duration_s=1.5, request_timeout_s=10)
    assert result.sent == 60 and result.statuses["sold"] == 60
    # All 60 went out on schedule, though answering them took twice as long.
    assert result.send_window_s < 1.7 and result.achieved_rate > 36
    assert result.elapsed_s > 2.8
    latencies = [latency_ms for _, latency_ms, _ in sorted(result.timeline)]
    assert median(latencies[:10]) < 300
    assert median(latencies[-10:]) > 1200  # ≈ 60 × 50 ms − 1.5 s of queueing
    assert result.summary()["answered_latency_ms"]["max"] > 1200


async def test_statuses_errors_timeouts_payout_and_overhead(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    seen: list[str] = []

    async def mixed(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.Response(status=401)
        lead = orjson.loads(await request.read())
        seen.append(lead["external_id"])
        kind = int(lead["external_id"].rsplit("-", 1)[1]) % 5
        if kind == 0:
            return web.json_response({"lead_id": "x", "status": "sold", "payout": "14.00"})
        if kind == 1:
            return web.json_response({"lead_id": "x", "status": "unsold", "payout": "0.00"})
        if kind == 2:
            return web.Response(status=503, headers={"Retry-After": "1"})
        if kind == 3:
            await asyncio.sleep(1.0)  # past the generator's request timeout
        return web.Response(body=b"not json", content_type="application/json")

    url = await serve(mixed)
    result = await run_open_loop(
        url + "/v1/leads", KEY, rate=100, duration_s=0.5, request_timeout_s=0.3, buyer_max_ms=1.0
    )
    assert len(set(seen)) == 50
    assert dict(result.statuses) == {
        "sold": 10,
        "unsold": 10,
        "http_503": 10,
        "timeout": 10,
        "bad_answer": 10,
    }
    assert result.payout_cents == 10 * 1400
    summary = result.summary()
    assert summary["refused_503"] == 10 and summary["timeouts"] == 10 and summary["answered"] == 20
    assert summary["payout"] == "140.00"
    assert summary["latency_ms"]["max"] >= 300  # timeouts count in the all-requests histogram
    overhead = summary["overhead_ms"]
    assert overhead is not None
    assert overhead["p50"] == pytest.approx(summary["answered_latency_ms"]["p50"] - 1.0)
    assert "achieved" in result.format()


async def test_processes_split_the_schedule_without_overlap(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(orjson.loads(await request.read())["external_id"])
        return web.json_response({"lead_id": "x", "status": "unsold", "payout": "0.00"})

    url = await serve(record)
    result = await run_open_loop(
        url, KEY, rate=60, duration_s=1.0, make_lead=LeadFactory(run_id="procs"), processes=2
    )
    assert result.sent == 60 and result.statuses["unsold"] == 60
    assert sorted(seen) == sorted(f"lt-procs-{i}" for i in range(60))
    assert result.latency_us.get_total_count() == 60 and len(result.timeline) == 60
    assert result.achieved_rate > 50


def test_classify() -> None:
    assert classify(200, b'{"status": "sold", "payout": "12.34"}') == ("sold", 1234)
    assert classify(200, b'{"status": "pending", "payout": "0.00"}') == ("pending", 0)
    assert classify(200, b'{"status": "weird"}') == ("other_answer", 0)
    assert classify(200, b"[1]") == ("bad_answer", 0)
    assert classify(429, b"") == ("http_429", 0)
