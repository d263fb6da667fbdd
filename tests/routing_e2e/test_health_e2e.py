"""Buyer health and operator pauses through the running exchange: a buyer that keeps timing
out is throttled and recovers on probes; a paused campaign is not pinged until resumed."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.kit.buyers import Buyer
from tests.kit.exchange import ADMIN, RunningExchange, buyer_entry
from tests.routing_e2e.conftest import OpenExchange, StartBuyer
from tests.routing_e2e.harness import config, lead, reasons, sales_of, sell

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


async def _lead_pings(ex: RunningExchange, buyer: Buyer) -> tuple[str, bool]:
    """Sell one lead; (the buyer's campaign's reason, whether the buyer saw a ping for it)."""
    before = len(buyer.pings)
    answer = await sell(ex, lead())
    reason = reasons(await ex.story(answer["lead_id"]))[f"{buyer.buyer_id}-c"]
    return reason, len(buyer.pings) > before


async def test_hanging_buyer_is_throttled_then_recovers_on_probes(
    start_buyer: StartBuyer, open_exchange: OpenExchange
) -> None:
    slow = await start_buyer("slow", price="30.00", ping_mode="hang")
    steady = await start_buyer("steady", price="5.00")
    entries = [buyer_entry(slow, timeout_ms=40), buyer_entry(steady, timeout_ms=40)]
    ex = await open_exchange(config(entries, settings={"tmax_ms": 80}))

    seen = [await _lead_pings(ex, slow) for _ in range(25)]
    assert seen[:10] == [("timeout", True)] * 10  # pinged and timing out
    later = seen[10:]
    assert all(reason == "throttled" for reason, pinged in later if not pinged)
    assert sum(not pinged for _, pinged in later) >= 12  # at most a probe or so got through
    assert len(slow.pings) <= 13 and len(steady.pings) == 25

    # It answers again: the probes (one a second) see it, and after three good ones it is
    # pinged on every lead again.
    slow.ping_mode = "bid"
    give_up = time.monotonic() + 8.0
    streak = 0
    while streak < 5:
        assert time.monotonic() < give_up, "the buyer was never pinged on every lead again"
        reason, pinged = await _lead_pings(ex, slow)
        streak = streak + 1 if pinged else 0
        if not pinged:
            assert reason == "throttled"
            await asyncio.sleep(0.05)
    answer = await sell(ex, lead())
    assert reasons(await ex.story(answer["lead_id"])) == {"slow-c": "sold", "steady-c": "outbid"}


async def test_pause_and_resume_a_campaign(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    first = await start_buyer("first", price="20.00")
    other = await start_buyer("other", price="5.00")
    ex = await open_exchange(config([buyer_entry(first), buyer_entry(other)]))

    resp = await ex.client.post("/v1/campaigns/first-c/pause")
    assert resp.status_code == 401  # operators only
    resp = await ex.client.post("/v1/campaigns/first-c/pause", headers=ADMIN_HEADERS)
    assert resp.status_code == 200 and resp.json() == {"campaign_id": "first-c", "paused": True}
    assert await pg.fetchval("SELECT paused FROM campaign_state WHERE campaign_id = 'first-c'")
    paused = await sell(ex, lead())
    assert reasons(await ex.story(paused["lead_id"])) == {"first-c": "paused", "other-c": "sold"}
    assert await sales_of(pg, paused["lead_id"]) == [("other", "other-c", 500)]
    assert first.pings == []

    resp = await ex.client.post("/v1/campaigns/first-c/resume", headers=ADMIN_HEADERS)
    assert resp.status_code == 200 and resp.json()["paused"] is False
    resumed = await sell(ex, lead())
    assert reasons(await ex.story(resumed["lead_id"])) == {"first-c": "sold", "other-c": "outbid"}
    assert await sales_of(pg, resumed["lead_id"]) == [("first", "first-c", 2000)]
    assert len(first.pings) == 1
    assert not await pg.fetchval("SELECT paused FROM campaign_state WHERE campaign_id = 'first-c'")

    missing = await ex.client.post("/v1/campaigns/nope/pause", headers=ADMIN_HEADERS)
    assert missing.status_code == 404
