"""The bare fan-out server sells to the best bid within tmax, against the simulated fleet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from loadtests.baseline import Target, create_app, targets_from_config, targets_from_urls
from loadtests.buyer import BuyerSpec, Latency
from loadtests.fleet import Fleet, start_fleet
from loadtests.generator import run_open_loop
from loadtests.leads import LeadFactory
from loadtests.procs import free_port, start_module

SECRET = "baseline-secret"


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    one_price = {"auto_insurance": (3000, 3000)}
    specs = [
        BuyerSpec(
            "low", secret=SECRET, bid_probability=1.0, prices_cents={"auto_insurance": (800, 900)}
        ),
        BuyerSpec("high", secret=SECRET, bid_probability=1.0, prices_cents=one_price),
        BuyerSpec("hang", secret=SECRET, mode="hang"),
        BuyerSpec("garbage", secret=SECRET, mode="garbage"),
        BuyerSpec(
            "late",
            secret=SECRET,
            latency=Latency.fixed(400),
            prices_cents={"auto_insurance": (9000, 9000)},
        ),
    ]
    async with await start_fleet(specs) as running:
        yield running


async def _serve(targets: Sequence[Target], **options: Any) -> tuple[str, web.AppRunner]:
    runner = web.AppRunner(create_app(targets, **options), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/v1/leads", runner


async def _send(url: str, lead: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(lead)) as resp:
        return resp.status, (await resp.json() if resp.status == 200 else {})


async def test_sells_to_the_best_in_time_bid_despite_broken_buyers(fleet: Fleet) -> None:
    targets = targets_from_urls([fleet.url_for(b) for b in fleet.buyer_ids], secret=SECRET)
    url, runner = await _serve(targets, tmax_ms=200)
    try:
        started = time.monotonic()
        status, answer = await _send(url, LeadFactory(run_id="bl")(0))
        elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert status == 200 and answer["status"] == "sold"
    assert answer["payout"] == "21.00"  # 70% of the 30.00 bid; the 90.00 one came too late
    assert 0.19 <= elapsed < 0.6  # the ping phase ends at tmax, whatever hang does
    stats = fleet.stats()
    assert all(s.pings == 1 for s in stats.values())
    assert stats["high"].posts == 1 and stats["high"].accepts == 1
    assert sum(s.posts for s in stats.values()) == 1
    assert stats["high"].accepted_cents == 3000
    assert all(s.bad_signatures == 0 and s.pii_pings == 0 for s in stats.values())


async def test_unsold_without_bids_and_503_past_max_in_flight(fleet: Fleet) -> None:
    targets = targets_from_urls([fleet.url_for("hang")], secret=SECRET)
    url, runner = await _serve(targets, tmax_ms=150, max_in_flight=1)
    try:
        answers = await asyncio.gather(*(_send(url, LeadFactory(run_id="u")(i)) for i in range(2)))
    finally:
        await runner.cleanup()
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 503]
    answer = next(a for status, a in answers if status == 200)
    assert answer["status"] == "unsold" and answer["reason"] == "no_bid"


def test_targets_from_config_skip_post_only_buyers(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        """
settings: {tmax_ms: 180}
buyers:
  - id: acme
    secret: ${LT_NOPE:-s1}
    ping_url: http://127.0.0.1:9001/ping
    post_url: http://127.0.0.1:9001/post
    campaigns: [{id: a1, vertical: auto_insurance}, {id: a2, vertical: debt}]
  - id: mail
    post_url: http://127.0.0.1:9002/post
    campaigns: [{id: m1, vertical: mortgage, price: "9.00"}]
"""
    )
    targets = targets_from_config(tmp_path)
    assert [(t.campaign_id, t.verticals, t.secret, t.timeout_ms) for t in targets] == [
        ("a1", frozenset({"auto_insurance"}), "s1", 180),
        ("a2", frozenset({"debt"}), "s1", 180),
    ]


async def test_cli_processes_end_to_end() -> None:
    fleet_port, baseline_port = free_port(), free_port()
    fleet_args = f"--buyers 3 --port {fleet_port} --shared-port --secret {SECRET}"
    fleet_args += " --bid-probability 1 --latency 5-15"
    fleet = await asyncio.to_thread(start_module, "loadtests.fleet", fleet_args.split())
    baseline = None
    try:
        urls = [f"http://127.0.0.1:{fleet_port}/b0{i}" for i in (1, 2, 3)]
        args = ["--port", str(baseline_port), "--secret", SECRET, "--buyers-url", ",".join(urls)]
        baseline = await asyncio.to_thread(start_module, "loadtests.baseline", args)
        assert baseline.ready["url"] == f"http://127.0.0.1:{baseline_port}"
        buyer_max_ms = fleet.ready["max_in_time_latency_ms"]
        result = await run_open_loop(
            baseline.ready["url"], "any-key", 50, 1.0, buyer_max_ms=buyer_max_ms
        )
        async with aiohttp.ClientSession() as http, http.get(fleet.ready["stats_url"]) as resp:
            totals = (await resp.json())["totals"]
    finally:
        if baseline is not None:
            assert await asyncio.to_thread(baseline.stop) == 0
        assert await asyncio.to_thread(fleet.stop) == 0
    assert fleet.ready["max_in_time_latency_ms"] == 15
    assert result.statuses["sold"] == 50 and result.sent == 50
    assert totals["pings"] == 150 and totals["posts"] == 50 and totals["accepts"] == 50
    assert totals["bad_signatures"] == 0 and totals["pii_pings"] == 0
    overhead = result.overhead_ms()
    assert overhead is not None and overhead["p50"] < 250
