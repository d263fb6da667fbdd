"""The simulated buyers speak SPEC §4, check our signatures, and misbehave exactly as asked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from loadtests.buyer import BuyerSpec, Latency, sign_headers
from loadtests.fleet import Fleet, FleetSpec, start_fleet

SECRET = "fleet-test-secret"
PING = {
    "ping_id": "p-1",
    "campaign_id": "c-1",
    "vertical": "auto_insurance",
    "exclusive": True,
    "tmax_ms": 250,
    "test": False,
    "lead": {"state": "CA", "zip": "94105", "profile": {"age": 34, "credit": "good"}},
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    secret: str | None = SECRET,
    timeout_s: float = 2.0,
) -> tuple[int, bytes]:
    raw = orjson.dumps(body)
    headers = sign_headers(secret, raw) if secret else {}
    async with http.post(
        url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as resp:
        return resp.status, await resp.read()


async def test_ping_bids_in_vertical_range_and_post_is_accepted(
    http: aiohttp.ClientSession,
) -> None:
    async with await start_fleet([BuyerSpec("acme", secret=SECRET, bid_probability=1.0)]) as fleet:
        status, raw = await _post(http, fleet.url_for("acme") + "/ping", PING)
        bid = orjson.loads(raw)
        assert status == 200 and bid["bid"] is True and bid["bid_id"]
        assert Decimal("8.00") <= Decimal(str(bid["price"])) <= Decimal("35.00")
        post = {"ping_id": "p-1", "campaign_id": "c-1", "bid_id": bid["bid_id"], "price": "12.50"}
        status, raw = await _post(http, fleet.url_for("acme") + "/post", {**post, "lead": {}})
        answer = orjson.loads(raw)
        assert status == 200 and answer["accepted"] is True and answer["buyer_lead_id"]
        stats = fleet.stats()["acme"]
        assert (stats.pings, stats.bids, stats.posts, stats.accepts) == (1, 1, 1, 1)
        assert stats.accepted_cents == 1250 and stats.bad_signatures == 0
        assert not stats.pii_in_ping


async def test_no_bid_reject_and_unbought_vertical(http: aiohttp.ClientSession) -> None:
    specs = [
        BuyerSpec("never", bid_probability=0.0, reject_rate=1.0),
        BuyerSpec("solar-only", bid_probability=1.0, prices_cents={"solar": (2000, 9000)}),
    ]
    async with await start_fleet(specs) as fleet:
        _, raw = await _post(http, fleet.url_for("never") + "/ping", PING, None)
        assert orjson.loads(raw)["bid"] is False
        _, raw = await _post(http, fleet.url_for("never") + "/post", {"price": 9}, None)
        assert orjson.loads(raw) == {"accepted": False, "reason": "not a fit"}
        _, raw = await _post(http, fleet.url_for("solar-only") + "/ping", PING, None)
        assert orjson.loads(raw) == {"bid": False, "reason": "vertical not bought"}
        assert fleet.stats()["never"].rejects == 1 and fleet.stats()["never"].accepts == 0


async def test_bad_or_missing_signature_is_counted_and_can_be_refused(
    http: aiohttp.ClientSession,
) -> None:
    specs = [
        BuyerSpec("lax", secret=SECRET),
        BuyerSpec("strict", secret=SECRET, enforce_signatures=True),
    ]
    async with await start_fleet(specs) as fleet:
        assert (await _post(http, fleet.url_for("lax") + "/ping", PING, "wrong"))[0] == 200
        assert (await _post(http, fleet.url_for("lax") + "/ping", PING, None))[0] == 200
        assert (await _post(http, fleet.url_for("strict") + "/ping", PING, "wrong"))[0] == 401
        # A signature over other bytes than those sent is as bad as a wrong key.
        raw = orjson.dumps(PING)
        headers = sign_headers(SECRET, raw + b" ")
        async with http.post(fleet.url_for("strict") + "/ping", data=raw, headers=headers) as r:
            assert r.status == 401
        stale = sign_headers(SECRET, raw, int(time.time()) - 3600)
        async with http.post(fleet.url_for("strict") + "/ping", data=raw, headers=stale) as r:
            assert r.status == 401
        assert (await _post(http, fleet.url_for("strict") + "/ping", PING))[0] == 200
        stats = fleet.stats()
        assert stats["lax"].bad_signatures == 2 and stats["strict"].bad_signatures == 3


async def test_personal_data_in_a_ping_is_flagged(http: aiohttp.ClientSession) -> None:
    async with await start_fleet([BuyerSpec("acme")]) as fleet:
        await _post(http, fleet.url_for("acme") + "/ping", PING, None)
        assert fleet.stats()["acme"].pii_pings == 0
        leaky = {**PING, "lead": {**PING["lead"], "contact": {"email": "a@example.com"}}}  # type: ignore[dict-item]
        await _post(http, fleet.url_for("acme") + "/ping", leaky, None)
        assert fleet.stats()["acme"].pii_in_ping
        async with http.get(fleet.stats_url) as resp:
            doc = await resp.json()
        assert doc["buyers"]["acme"]["pii_in_ping"] is True
        assert doc["totals"]["pings"] == 2 and doc["totals"]["pii_in_ping"] is True


async def test_hang_never_answers(http: aiohttp.ClientSession) -> None:
    async with await start_fleet([BuyerSpec("hang", mode="hang")]) as fleet:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await _post(http, fleet.url_for("hang") + "/ping", PING, None, timeout_s=0.3)
        assert time.monotonic() - started >= 0.3
        assert fleet.stats()["hang"].hangs == 1


async def test_trickle_sends_headers_then_one_byte_at_a_time(http: aiohttp.ClientSession) -> None:
    spec = BuyerSpec("trickle", mode="trickle", trickle_interval_ms=50)
    async with await start_fleet([spec]) as fleet:
        started = time.monotonic()
        async with http.post(fleet.url_for("trickle") + "/ping", data=orjson.dumps(PING)) as resp:
            assert resp.status == 200 and time.monotonic() - started < 0.2
            # Each read gets a byte within one interval: a per-read timeout never fires...
            for _ in range(3):
                assert len(await asyncio.wait_for(resp.content.read(1), 0.2)) == 1
            # ...yet the whole answer is far from done after 0.3 s.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(resp.read(), 0.3)


async def test_garbage_error_and_slow_modes(http: aiohttp.ClientSession) -> None:
    specs = [
        BuyerSpec("garbage", mode="garbage"),
        BuyerSpec("error", mode="error"),
        BuyerSpec("slow", mode="slow", timeout_ms=60, bid_probability=1.0),
    ]
    async with await start_fleet(specs) as fleet:
        status, raw = await _post(http, fleet.url_for("garbage") + "/ping", PING, None)
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
        assert (await _post(http, fleet.url_for("error") + "/ping", PING, None))[0] == 500
        started = time.monotonic()
        status, raw = await _post(http, fleet.url_for("slow") + "/ping", PING, None)
        assert time.monotonic() - started > 0.06  # past its own timeout...
        assert status == 200 and orjson.loads(raw)["bid"] is True  # ...with a valid bid
        assert fleet.stats()["slow"].late == 1


async def test_flaky_errors_about_its_share(http: aiohttp.ClientSession) -> None:
    spec = FleetSpec([BuyerSpec("flaky", mode="flaky", error_rate=0.5)], seed=7)
    async with await start_fleet(spec) as fleet:
        codes = [
            (await _post(http, fleet.url_for("flaky") + "/ping", PING, None))[0] for _ in range(60)
        ]
    assert set(codes) == {200, 500}
    assert 15 <= codes.count(500) <= 45


async def test_latency_distribution_is_applied(http: aiohttp.ClientSession) -> None:
    spec = BuyerSpec("steady", latency=Latency.uniform(40, 60))
    async with await start_fleet([spec]) as fleet:
        started = time.monotonic()
        await asyncio.gather(
            *(_post(http, fleet.url_for("steady") + "/ping", PING, None) for _ in range(5))
        )
        elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 0.3  # concurrent, each 40-60 ms
    assert Latency.parse("20-50") == Latency.uniform(20, 50)
    assert Latency.parse("ln:40:0.5:250").upper_ms() == 250
    assert Latency.parse("7").upper_ms() == 7


async def test_own_ports_custom_paths_and_in_time_reference(http: aiohttp.ClientSession) -> None:
    specs = [
        BuyerSpec("a", port=0, ping_path="/ping", post_path="/post", latency=Latency.fixed(30)),
        BuyerSpec("b", latency=Latency.uniform(10, 80), timeout_ms=50),
        BuyerSpec("c", mode="hang", latency=Latency.fixed(500)),
    ]
    async with await start_fleet(specs) as fleet:
        assert fleet.ping_url("a").endswith("/ping") and fleet.url_for(
            "a"
        ) + "/ping" != fleet.ping_url("a")
        assert fleet.url_for("a").rsplit(":", 1)[1] != fleet.url_for("b").rsplit(":", 1)[1]
        for url in (fleet.ping_url("a"), fleet.url_for("a") + "/ping"):
            assert (await _post(http, url, PING, None))[0] == 200
        assert fleet.stats()["a"].pings == 2
        # b answers in time only up to its 50 ms timeout; the hanging c never does.
        assert fleet.max_in_time_latency_ms() == 50
        async with http.post(fleet.url_for("a").rsplit("/", 1)[0] + "/_reset") as resp:
            assert resp.status == 204
        assert fleet.stats()["a"].pings == 0


async def test_close_releases_hung_requests_quickly() -> None:
    fleet: Fleet = await start_fleet([BuyerSpec("hang", mode="hang")])
    async with aiohttp.ClientSession() as http:
        pending = asyncio.create_task(_post(http, fleet.url_for("hang") + "/ping", PING, None))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await fleet.close()
        assert time.monotonic() - started < 1.0
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
