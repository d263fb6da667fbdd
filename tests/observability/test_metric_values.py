"""The metrics count exactly what happened: a known run of leads, scraped from /metrics.

The registry is process-global and other tests in this process feed it too, so every
assertion is on the difference between a scrape before and one after, and the buyers
have ids of this test's own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kit.buyers import Buyer
from tests.kit.exchange import (
    PUB2_KEY,
    RunningExchange,
    buyer_entry,
    campaign,
    lead_body,
    make_config,
    start_exchange,
)

VERTICAL = "auto_insurance"
Key = tuple[str, frozenset[tuple[str, str]]]


async def scrape(ex: RunningExchange) -> dict[Key, float]:
    """Every sample of one real scrape of /metrics, keyed by name and labels."""
    resp = await ex.client.get("/metrics")
    assert resp.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def deltas(
    before: dict[Key, float], after: dict[Key, float], name: str, label: str, **fixed: str
) -> dict[str, float]:
    """``{value of label: increase}`` for the samples of ``name`` matching ``fixed``; zeros left out."""
    out: dict[str, float] = {}
    for (sample, labels), value in after.items():
        tags = dict(labels)
        if sample != name or any(tags.get(k) != v for k, v in fixed.items()):
            continue
        grown = value - before.get((sample, labels), 0.0)
        if grown:
            out[tags[label]] = out.get(tags[label], 0.0) + grown
    return out


@dataclass
class Run:
    ex: RunningExchange
    hi: Buyer
    lo: Buyer
    slow: Buyer
    cheap: Buyer
    picky: Buyer

    @property
    def buyers(self) -> list[Buyer]:
        return [self.hi, self.lo, self.slow, self.cheap, self.picky]


@pytest.fixture
async def run(
    pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: Any
) -> AsyncIterator[Run]:
    tag = uuid.uuid4().hex[:6]
    hi = await Buyer(f"hi-{tag}", "secret-hi-123", price="20.00").start()
    lo = await Buyer(f"lo-{tag}", "secret-lo-123", price="12.00").start()
    slow = await Buyer(f"slow-{tag}", "secret-slow-123", price=30, ping_mode="hang").start()
    cheap = await Buyer(f"cheap-{tag}", "secret-cheap-123", price="1.50").start()  # under the floor
    picky = await Buyer(f"picky-{tag}", "secret-picky-123", price=50).start()  # filters out CA
    entries = [buyer_entry(b) for b in (hi, lo, slow, cheap)]
    entries.append(buyer_entry(picky, [campaign(picky, filters={"states": ["NY"]})]))
    ex = await start_exchange(make_config(entries), pg_dsn, redis_url, redis_prefix)
    r = Run(ex, hi, lo, slow, cheap, picky)
    yield r
    await ex.close()
    for buyer in r.buyers:
        await buyer.close()


async def submit(
    ex: RunningExchange, body: dict[str, Any], key: str | None = None, code: int = 200
) -> dict[str, Any]:
    resp = await (ex.submit(body) if key is None else ex.submit(body, key))
    assert resp.status_code == code, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


async def play_known_sequence(r: Run) -> list[str]:
    """Seven answered leads and one invalid one; returns the statuses in order."""
    first = lead_body()
    statuses = [(await submit(r.ex, first))["status"]]  # hi wins at 20.00 (pub-1, revshare)
    # hi again, for pub-2 (a fixed payout)
    statuses.append((await submit(r.ex, lead_body(), PUB2_KEY))["status"])
    r.hi.post_mode = "reject"
    statuses.append((await submit(r.ex, lead_body()))["status"])  # hi refuses: lo at 12.00
    r.hi.post_mode, r.hi.ping_mode, r.lo.ping_mode = "accept", "no_bid", "no_bid"
    statuses.append((await submit(r.ex, lead_body()))["status"])  # nobody bids at the floor
    r.hi.ping_mode = r.lo.ping_mode = "bid"
    again = lead_body(contact=first["contact"])
    statuses.append((await submit(r.ex, again))["status"])  # same phone and email as the first
    statuses.append((await submit(r.ex, lead_body(consent={"tcpa": False})))["status"])
    statuses.append((await submit(r.ex, lead_body(test=True)))["status"])  # sold, moves no money
    await submit(r.ex, lead_body(profile={"age": "old"}), code=422)  # never becomes a lead
    return statuses


async def money_in_postgres(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT coalesce(sum(price_cents) FILTER (WHERE NOT test), 0) AS revenue,
                      coalesce(sum(payout_cents) FILTER (WHERE NOT test), 0) AS payout,
                      count(*) FILTER (WHERE test) AS test_sales
               FROM sales"""
        )
    finally:
        await conn.close()
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def test_counters_match_a_known_sequence_of_leads(run: Run, pg_dsn: str) -> None:
    before = await scrape(run.ex)
    statuses = await play_known_sequence(run)
    after = await scrape(run.ex)
    assert statuses == ["sold", "sold", "sold", "unsold", "duplicate", "rejected", "sold"]

    leads = deltas(before, after, "exchange_leads_total", "status", vertical=VERTICAL)
    assert leads == {"sold": 4, "unsold": 1, "duplicate": 1, "rejected": 1}
    durations = deltas(
        before, after, "exchange_lead_duration_seconds_count", "status", vertical=VERTICAL
    )
    assert durations == leads
    # The first four and the test lead reach the auction; duplicate and rejected do not.
    auctions = deltas(before, after, "exchange_auction_duration_seconds_count", "vertical")
    assert auctions == {VERTICAL: 5}

    ids = {b.buyer_id for b in run.buyers}
    pings = {
        (buyer, outcome): n
        for outcome in ("bid", "no_bid", "timeout", "error", "below_floor", "filtered", "throttled")
        for buyer, n in deltas(
            before, after, "exchange_pings_total", "buyer", outcome=outcome
        ).items()
        if buyer in ids
    }
    hi, lo, slow, cheap, picky = (b.buyer_id for b in run.buyers)
    assert pings == {
        (hi, "bid"): 4,
        (hi, "no_bid"): 1,
        (lo, "bid"): 4,
        (lo, "no_bid"): 1,
        (slow, "timeout"): 5,
        (cheap, "below_floor"): 5,
        (picky, "filtered"): 5,
    }
    latency = deltas(before, after, "exchange_ping_latency_seconds_count", "buyer")
    assert {b: latency.get(b, 0) for b in ids} == {hi: 5, lo: 5, slow: 5, cheap: 5, picky: 0}

    posts = {
        (buyer, outcome): n
        for outcome in ("accepted", "rejected", "failed", "unknown")
        for buyer, n in deltas(
            before, after, "exchange_posts_total", "buyer", outcome=outcome
        ).items()
        if buyer in ids
    }
    assert posts == {(hi, "accepted"): 3, (hi, "rejected"): 1, (lo, "accepted"): 1}
    post_latency = deltas(before, after, "exchange_post_latency_seconds_count", "buyer")
    assert {b: post_latency.get(b, 0) for b in ids} == {hi: 4, lo: 1, slow: 0, cheap: 0, picky: 0}

    # Every answered lead claimed its id, read the Postgres backstop and was saved with its
    # answer (so no Redis "finish" keeps it for repeats). Each has an id, so its dedupe ran
    # inside its claim: no "dedupe" call of its own (that is for leads without ids).
    await asyncio.sleep(0.1)  # nothing may follow the answers: give it the chance to
    store = deltas(before, await scrape(run.ex), "exchange_store_duration_seconds_count", "op")
    assert store == {"claim": 7, "backstop": 7, "save": 7}

    money = await money_in_postgres(pg_dsn)
    assert money["test_sales"] == 1  # recorded, yet left out of the money below
    revenue = deltas(before, after, "exchange_revenue_cents_total", "buyer", vertical=VERTICAL)
    assert revenue == {hi: 2 * 2000, lo: 1200}
    assert sum(revenue.values()) == money["revenue"]
    # pub-1 earns 70% of 20.00 and of 12.00; pub-2 a fixed 8.00.
    payout = deltas(before, after, "exchange_publisher_payout_cents_total", "vertical")
    assert payout == {VERTICAL: 1400 + 800 + 840} == {VERTICAL: money["payout"]}
    margin = deltas(before, after, "exchange_margin_cents_total", "vertical")
    assert margin == {VERTICAL: money["revenue"] - money["payout"]}

    http = deltas(
        before, after, "exchange_http_requests_total", "status", route="/v1/leads", method="POST"
    )
    assert http == {"200": 7, "422": 1}
