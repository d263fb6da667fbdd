"""Caps and budgets through the running exchange: exact counts, the capped campaign is not
pinged, and a rejected post gives its reservation back."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from tests.kit.exchange import buyer_entry, campaign
from tests.routing_e2e.conftest import OpenExchange, StartBuyer
from tests.routing_e2e.harness import config, lead, pings_by_campaign, reasons, sales_of, sell


async def test_daily_cap_two_sells_two_then_skips_the_campaign(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    capped = await start_buyer("capped", price="20.00")
    backup = await start_buyer("backup", price="5.00")
    entries = [
        buyer_entry(capped, [campaign(capped, caps={"daily": 2})]),
        buyer_entry(backup),
    ]
    ex = await open_exchange(config(entries))

    answers = [await sell(ex, lead()) for _ in range(3)]
    winners = [await sales_of(pg, a["lead_id"]) for a in answers]
    assert winners == [
        [("capped", "capped-c", 2000)],
        [("capped", "capped-c", 2000)],
        [("backup", "backup-c", 500)],
    ]
    third = pings_by_campaign(await ex.story(answers[2]["lead_id"]))
    assert third["capped-c"]["outcome"] == "capped" and third["capped-c"]["reason"] == "capped"
    assert third["backup-c"]["reason"] == "sold"
    assert len(capped.pings) == 2 and len(capped.posts) == 2  # no third ping
    assert len(backup.pings) == 3


async def test_daily_budget_allows_only_what_it_can_pay(
    start_buyer: StartBuyer,
    open_exchange: OpenExchange,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    """25.00 a day at 10.00 a lead buys 2 leads.

    Both campaigns are on a shared lead so each can buy every lead: ``bids`` has no price of
    its own, so it is still pinged with 5.00 left and refused at the reservation; ``floored``
    asks at least 10.00 itself, so with 5.00 left it is not pinged at all.
    """
    bids = await start_buyer("bids", price="10.00")
    floored = await start_buyer("floored", price="10.00")
    budget = {"daily_budget": "25.00"}
    entries = [
        buyer_entry(bids, [campaign(bids, caps=budget)]),
        buyer_entry(floored, [campaign(floored, caps=budget, price="10.00")]),
    ]
    ex = await open_exchange(config(entries, vertical={"max_sells": 2}))

    answers = [await sell(ex, lead()) for _ in range(4)]
    counts = await pg.fetch("SELECT buyer_id, count(*), sum(price_cents) FROM sales GROUP BY 1")
    assert sorted(tuple(r) for r in counts) == [("bids", 2, 2000), ("floored", 2, 2000)]
    assert [a["status"] for a in answers] == ["sold", "sold", "unsold", "unsold"]
    for late in answers[2:]:
        pings = pings_by_campaign(await ex.story(late["lead_id"]))
        assert pings["bids-c"]["outcome"] == "bid" and pings["bids-c"]["reason"] == "capped"
        assert pings["floored-c"]["outcome"] == "capped"
    assert (len(bids.pings), len(bids.posts)) == (4, 2)
    assert (len(floored.pings), len(floored.posts)) == (2, 2)
    spent = [
        int(await redis_client.get(key) or 0)
        async for key in redis_client.scan_iter(match=f"{redis_prefix}cap:*:spend:day:*")
    ]
    assert spent == [2000, 2000]


async def test_rejected_post_releases_its_reservation(
    start_buyer: StartBuyer,
    open_exchange: OpenExchange,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    picky = await start_buyer("picky", price="20.00", post_mode="reject")
    backup = await start_buyer("backup", price="5.00")
    entries = [buyer_entry(picky, [campaign(picky, caps={"daily": 1})]), buyer_entry(backup)]
    ex = await open_exchange(config(entries))

    refused = await sell(ex, lead())  # picky rejects: the lead falls to backup
    assert await sales_of(pg, refused["lead_id"]) == [("backup", "backup-c", 500)]
    assert reasons(await ex.story(refused["lead_id"])) == {
        "picky-c": "post_rejected",
        "backup-c": "sold",
    }
    picky.post_mode = "accept"
    taken = await sell(ex, lead())  # the released slot is there to take
    assert await sales_of(pg, taken["lead_id"]) == [("picky", "picky-c", 2000)]
    after = await sell(ex, lead())  # and now the cap of one is used
    assert reasons(await ex.story(after["lead_id"])) == {"picky-c": "capped", "backup-c": "sold"}

    assert await pg.fetchval("SELECT count(*) FROM sales WHERE buyer_id = 'picky'") == 1
    assert (len(picky.pings), len(picky.posts)) == (2, 2)
    keys = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}cap:*:day:*")]
    assert len(keys) == 1 and int(await redis_client.get(keys[0]) or 0) == 1
