"""Ranking through the running exchange: priority trees, second price, shared leads,
post-only buyers and weighted splits, checked at the buyers, in the story and in Postgres."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.kit.exchange import buyer_entry, campaign
from tests.routing_e2e.conftest import OpenExchange, StartBuyer
from tests.routing_e2e.harness import (
    config,
    lead,
    outcomes,
    pings_by_campaign,
    reasons,
    sales_of,
    sales_per_buyer,
    sell,
    sell_many,
)


async def test_priority_tier_one_wins_over_a_higher_tier_two_bid(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    first = await start_buyer("first", price="8.00")
    second = await start_buyer("second", price="20.00")
    entries = [
        buyer_entry(first, [campaign(first, tier=1)]),
        buyer_entry(second, [campaign(second, tier=2)]),
    ]
    ex = await open_exchange(config(entries, vertical={"mode": "priority"}))

    won = await sell(ex, lead())
    assert won["status"] == "sold" and won["payout"] == "5.60", won
    assert await sales_of(pg, won["lead_id"]) == [("first", "first-c", 800)]
    story = await ex.story(won["lead_id"])
    assert reasons(story) == {"first-c": "sold", "second-c": "outbid"}
    assert pings_by_campaign(story)["second-c"]["price"] == "20.00"
    assert [p["price"] for p in first.posts] == ["8.00"] and second.posts == []

    # Down the tree: tier 1 passes, then tier 1 rejects its post; tier 2 gets the lead each time.
    first.ping_mode = "no_bid"
    passed = await sell(ex, lead())
    assert await sales_of(pg, passed["lead_id"]) == [("second", "second-c", 2000)]
    assert reasons(await ex.story(passed["lead_id"])) == {"first-c": "no_bid", "second-c": "sold"}
    first.ping_mode, first.post_mode = "bid", "reject"
    rejected = await sell(ex, lead())
    assert await sales_of(pg, rejected["lead_id"]) == [("second", "second-c", 2000)]
    assert reasons(await ex.story(rejected["lead_id"])) == {
        "first-c": "post_rejected",
        "second-c": "sold",
    }
    assert len(first.posts) == 2 and len(second.posts) == 2


async def test_second_price_pays_the_runner_up_plus_a_cent(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    high = await start_buyer("high", price="20.00")
    low = await start_buyer("low", price=15)
    cfg = config([buyer_entry(high), buyer_entry(low)], vertical={"pricing": "second_price"})
    ex = await open_exchange(cfg)

    answer = await sell(ex, lead())
    assert answer["status"] == "sold" and answer["payout"] == "10.50", answer
    assert [p["price"] for p in high.posts] == ["15.01"] and low.posts == []
    assert await sales_of(pg, answer["lead_id"]) == [("high", "high-c", 1501)]
    story = await ex.story(answer["lead_id"])
    assert [(s["buyer_id"], s["price"]) for s in story["sales"]] == [("high", "15.01")]
    assert reasons(story) == {"high-c": "sold", "low-c": "outbid"}
    assert pings_by_campaign(story)["high-c"]["price"] == "20.00"  # the bid, not the price paid


@pytest.mark.parametrize(("own_floor", "paid"), [(None, "2.00"), ("5.00", "5.00")])
async def test_second_price_single_bid_pays_the_floor(
    start_buyer: StartBuyer,
    open_exchange: OpenExchange,
    pg: asyncpg.Connection,
    own_floor: str | None,
    paid: str,
) -> None:
    """The vertical's floor, or the campaign's own ``price`` when that is higher."""
    only = await start_buyer("only", price="20.00")
    silent = await start_buyer("silent", ping_mode="no_bid")
    fields = {"price": own_floor} if own_floor else {}
    entries = [buyer_entry(only, [campaign(only, **fields)]), buyer_entry(silent)]
    ex = await open_exchange(config(entries, vertical={"pricing": "second_price"}))

    answer = await sell(ex, lead())
    assert [p["price"] for p in only.posts] == [paid]
    cents = int(paid.replace(".", ""))
    assert await sales_of(pg, answer["lead_id"]) == [("only", "only-c", cents)]
    assert reasons(await ex.story(answer["lead_id"])) == {"only-c": "sold", "silent-c": "no_bid"}


async def test_shared_lead_sells_to_the_best_three_distinct_buyers(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    twice = await start_buyer("twice", price="25.00")  # two campaigns, same bid on both
    b = await start_buyer("b", price="20.00")
    c = await start_buyer("c", price="18.00")
    d = await start_buyer("d", price="14.00")
    entries = [
        buyer_entry(twice, [campaign(twice, id="twice-1"), campaign(twice, id="twice-2")]),
        buyer_entry(b),
        buyer_entry(c),
        buyer_entry(d),
    ]
    ex = await open_exchange(config(entries, vertical={"max_sells": 3}))

    answer = await sell(ex, lead())
    # Each pays its own price; the publisher gets 70% of each: 17.50 + 14.00 + 12.60.
    assert answer["status"] == "sold" and answer["payout"] == "44.10", answer
    sales = await sales_of(pg, answer["lead_id"])
    assert [(buyer, cents) for buyer, _, cents in sales] == [
        ("twice", 2500),
        ("b", 2000),
        ("c", 1800),
    ]
    story = await ex.story(answer["lead_id"])
    ends = reasons(story)
    assert sorted([ends["twice-1"], ends["twice-2"]]) == ["duplicate_buyer", "sold"]
    assert {k: ends[k] for k in ("b-c", "c-c", "d-c")} == {
        "b-c": "sold",
        "c-c": "sold",
        "d-c": "outbid",
    }
    assert all(o == "bid" for o in outcomes(story).values())
    assert len(twice.pings) == 2 and len(twice.posts) == 1  # bought at most once
    assert [p["price"] for p in b.posts + c.posts] == ["20.00", "18.00"] and d.posts == []
    every_ping = twice.pings + b.pings + c.pings + d.pings
    assert len(every_ping) == 5 and all(p["exclusive"] is False for p in every_ping)


async def test_post_only_buyer_competes_with_its_fixed_price(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    fixed = await start_buyer("fixed")
    bidder = await start_buyer("bidder", price="5.00")
    entries = [
        buyer_entry(fixed, [campaign(fixed, price="9.00")], post_only=True),
        buyer_entry(bidder),
    ]
    ex = await open_exchange(config(entries))

    wins = await sell(ex, lead())
    assert await sales_of(pg, wins["lead_id"]) == [("fixed", "fixed-c", 900)]
    story = await ex.story(wins["lead_id"])
    assert reasons(story) == {"fixed-c": "sold", "bidder-c": "outbid"}
    assert pings_by_campaign(story)["fixed-c"]["outcome"] == "fixed_price"  # offered, not pinged
    assert [p["price"] for p in fixed.posts] == ["9.00"]
    # The post names the ping record of its offer, so a buyer's dispute can be traced.
    recorded = await pg.fetchval(
        "SELECT ping_id FROM pings WHERE lead_id = $1 AND campaign_id = 'fixed-c'",
        uuid.UUID(wins["lead_id"]),
    )
    assert fixed.posts[0]["ping_id"] == recorded.hex

    bidder.price = "12.00"
    loses = await sell(ex, lead())
    assert await sales_of(pg, loses["lead_id"]) == [("bidder", "bidder-c", 1200)]
    assert reasons(await ex.story(loses["lead_id"])) == {"fixed-c": "outbid", "bidder-c": "sold"}
    assert fixed.pings == [] and len(fixed.posts) == 1 and len(bidder.pings) == 2


async def test_weights_split_equal_bids_exactly(
    start_buyer: StartBuyer, open_exchange: OpenExchange, pg: asyncpg.Connection
) -> None:
    heavy = await start_buyer("heavy")
    one = await start_buyer("one")
    two = await start_buyer("two")
    entries = [
        buyer_entry(heavy, [campaign(heavy, weight=3)]),
        buyer_entry(one, [campaign(one, weight=1)]),
        buyer_entry(two, [campaign(two, weight=1)]),
    ]
    ex = await open_exchange(config(entries))

    answers = []
    for _ in range(4):  # 100 leads, 25 at a time
        answers += await sell_many(ex, [lead() for _ in range(25)])
    assert [a["status"] for a in answers] == ["sold"] * 100
    assert await sales_per_buyer(pg) == {"heavy": 60, "one": 20, "two": 20}
    assert (len(heavy.posts), len(one.posts), len(two.posts)) == (60, 20, 20)
    assert len(heavy.pings) == len(one.pings) == len(two.pings) == 100
