"""Redis lost everything (it may keep nothing on disk): the consumer's next lead is still a
duplicate of the one Postgres holds, whether the exchange restarts or keeps running."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from exchange.intake.restore import LOCK, MARK
from tests.api.conftest import Market, OpenMarket
from tests.kit.buyers import Buyer
from tests.kit.exchange import buyer_entry, campaign, lead_body, make_config, start_exchange
from tests.kit.records import count_rows


def _buyers() -> tuple[Buyer, Buyer]:
    return Buyer("acme", "secret-acme-123", price=20), Buyer("bolt", "secret-bolt-123", price=12)


async def _lose_redis(m: Market) -> None:
    gone = [k async for k in m.redis.scan_iter(match=f"{m.redis_prefix}*")]
    assert gone
    await m.redis.delete(*gone)  # only this test's prefix: never a flush


async def _wait_for_restore(m: Market) -> None:
    for _ in range(200):  # the workers look every 5 s
        if await m.redis.exists(m.redis_prefix + MARK):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the exchange did not restore Redis within 10 s")


async def _sold_then_stopped_and_lost(
    market: OpenMarket,
) -> tuple[Market, tuple[Buyer, Buyer], dict[str, Any], dict[str, Any]]:
    """A market that sold one lead, its exchange stopped, then Redis emptied."""
    buyers = _buyers()
    m = await market(*buyers)
    body = lead_body()
    first = (await m.ex.submit(body)).json()
    assert first["status"] == "sold"
    await m.ex.close()
    await _lose_redis(m)
    return m, buyers, body, first


def _same_consumer(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "external_id": f"next-{uuid.uuid4()}"}


async def test_a_restarted_exchange_restores_the_dedupe_keys_before_it_serves(
    market: OpenMarket, redis_url: str
) -> None:
    m, buyers, body, first = await _sold_then_stopped_and_lost(market)

    config = make_config([buyer_entry(b) for b in buyers])
    again = await start_exchange(config, m.pg_dsn, redis_url, m.redis_prefix)
    try:
        later = (await again.submit(_same_consumer(body))).json()
    finally:
        await again.close()
    assert later["status"] == "duplicate" and first["lead_id"] in later["reason"], later
    assert m.pings_seen() == {"acme": 1, "bolt": 1}  # no second auction
    assert await count_rows(m.pg_dsn, "leads") == 2


async def test_a_redis_emptied_under_a_running_exchange_gets_its_dedupe_keys_back(
    market: OpenMarket,
) -> None:
    m = await market(*_buyers())
    body = lead_body()
    first = (await m.ex.submit(body)).json()
    assert first["status"] == "sold"
    await _lose_redis(m)
    await _wait_for_restore(m)
    later = (await m.ex.submit(_same_consumer(body))).json()
    assert later["status"] == "duplicate" and first["lead_id"] in later["reason"], later
    assert m.pings_seen() == {"acme": 1, "bolt": 1}


async def test_a_redis_emptied_under_a_running_exchange_still_holds_the_daily_cap(
    market: OpenMarket,
) -> None:
    """The counters come back with the keys: the cap counts the sale made before the loss."""
    acme = Buyer("acme", "secret-acme-123", price=20)
    m = await market(acme, entry=lambda b: buyer_entry(b, [campaign(b, caps={"daily": 2})]))
    assert (await m.ex.submit(lead_body())).json()["status"] == "sold"
    await _lose_redis(m)
    await _wait_for_restore(m)

    answers = [(await m.ex.submit(lead_body())).json() for _ in range(2)]
    assert [a["status"] for a in answers] == ["sold", "unsold"], answers
    assert m.posts_seen() == {"acme": 2}
    assert await count_rows(m.pg_dsn, "sales") == 2


async def test_a_starting_exchange_waits_out_another_workers_restore_before_it_serves(
    market: OpenMarket, redis_url: str
) -> None:
    """Redis lost, and another worker holds the restore lock but dies before it ends: this
    one starts serving only after the lock expired and it restored the keys itself."""
    m, buyers, body, first = await _sold_then_stopped_and_lost(market)
    await m.redis.set(m.redis_prefix + LOCK, "a-worker-that-died", ex=2)

    started = time.monotonic()
    config = make_config([buyer_entry(b) for b in buyers])
    again = await start_exchange(config, m.pg_dsn, redis_url, m.redis_prefix)
    try:
        waited_s = time.monotonic() - started
        later = (await again.submit(_same_consumer(body))).json()
    finally:
        await again.close()
    assert waited_s >= 1.5, waited_s  # not ready while the lock was held
    assert await m.redis.exists(m.redis_prefix + MARK)
    assert later["status"] == "duplicate" and first["lead_id"] in later["reason"], later
