"""The dedupe keys come back from Postgres after Redis lost them (``intake.restore``), and
``exchange restore-dedupe`` runs that by hand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from exchange.catalog import Catalog
from exchange.catalog.models import Vertical
from exchange.intake.guard import Guard
from exchange.intake.restore import (
    LOCK,
    MARK,
    PAGE,
    RestoreInterrupted,
    check_eviction,
    eviction_risk,
    eviction_settings,
    restore_dedupe,
    restore_needed,
)
from exchange.routing.caps import CapStore
from exchange.store.db import Conn
from exchange.store.redis_lane import lane_client
from tests.kit.procs import run_cli

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400


async def _lead(
    pg_pooled: Conn,
    *,
    phone: str | None,
    email: str | None = None,
    status: str = "sold",
    days_ago: float = 1.0,
    vertical: str = "auto",
    test: bool = False,
    now: datetime | None = None,
) -> str:
    lead_id = uuid.uuid4()
    await pg_pooled.execute(
        """INSERT INTO leads (lead_id, publisher_id, vertical, test, status, received_at,
                              phone, email)
           VALUES ($1, 'pub-1', $2, $3, $4, $5, $6, $7)""",
        lead_id,
        vertical,
        test,
        status,
        (now or datetime.now(UTC)) - timedelta(days=days_ago),
        phone,
        email,
    )
    return str(lead_id)


def _verticals(**days: int) -> dict[str, Vertical]:
    return {name: Vertical(dedupe_days=d) for name, d in days.items()}


async def _held(redis: aioredis.Redis, guard: Guard, **lead: Any) -> list[tuple[str, int]]:
    """What each of a lead's dedupe keys names, with its TTL (seconds; -2 if absent)."""
    keys = guard.dedupe_keys(lead["vertical"], lead["phone"], lead.get("email"), lead["test"])
    out = []
    for key in keys:
        value = await redis.get(key)
        holder = value.decode() if isinstance(value, bytes) else (value or "")
        out.append((holder, await redis.ttl(key)))
    return out


def _about(ttl: int, seconds: float) -> bool:
    return seconds - 120 < ttl <= seconds


async def test_keys_come_back_for_the_leads_that_took_them_with_what_is_left_of_the_window(
    pg_pooled: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    sold = await _lead(pg_pooled, phone="+14155550101", email="a@example.com", days_ago=10)
    unsold = await _lead(pg_pooled, phone="+14155550102", status="unsold", days_ago=1)
    pending = await _lead(pg_pooled, phone="+14155550103", status="pending", days_ago=2)
    # These never took keys: a duplicate and a lead without consent.
    await _lead(pg_pooled, phone="+14155550104", status="duplicate")
    await _lead(pg_pooled, phone="+14155550105", status="rejected")
    await _lead(pg_pooled, phone="+14155550106", days_ago=31)  # its window has passed
    test_lead = await _lead(pg_pooled, phone="+14155550107", test=True)
    await _lead(pg_pooled, phone="+14155550108", vertical="solar")  # solar: dedupe off
    # Two holders of one phone (an earlier loss let the second in): the first keeps it.
    older = await _lead(pg_pooled, phone="+14155550109", days_ago=5)
    await _lead(pg_pooled, phone="+14155550109", days_ago=3)
    # A live lead took this phone after the loss and before the restore: it stays its.
    await _lead(pg_pooled, phone="+14155550110", days_ago=4)
    live_key = guard.dedupe_keys("auto", "+14155550110", None, False)[0]
    await redis_client.set(live_key, "live-lead", ex=30 * DAY)

    assert await restore_needed(redis_client, redis_prefix)
    written = await restore_dedupe(
        pg_pooled,
        redis_client,
        guard,
        redis_prefix,
        _verticals(auto=30, solar=0),
        datetime.now(UTC),
    )

    assert written == 6  # sold (phone, email), unsold, pending, test, older
    auto = {"vertical": "auto", "test": False}
    phone_and_email = await _held(
        redis_client, guard, phone="+14155550101", email="a@example.com", **auto
    )
    assert [v for v, _ in phone_and_email] == [sold, sold]
    assert all(_about(ttl, 20 * DAY) for _, ttl in phone_and_email)
    assert [v for v, _ in await _held(redis_client, guard, phone="+14155550102", **auto)] == [
        unsold
    ]
    [(holder, ttl)] = await _held(redis_client, guard, phone="+14155550103", **auto)
    assert holder == pending and _about(ttl, 28 * DAY)
    for phone in ("+14155550104", "+14155550105", "+14155550106"):
        assert await _held(redis_client, guard, phone=phone, **auto) == [("", -2)]
    test_only = {"vertical": "auto", "phone": "+14155550107"}
    assert (await _held(redis_client, guard, test=True, **test_only))[0][0] == test_lead
    assert await _held(redis_client, guard, test=False, **test_only) == [("", -2)]
    solar = {"vertical": "solar", "test": False}
    assert await _held(redis_client, guard, phone="+14155550108", **solar) == [("", -2)]
    assert (await _held(redis_client, guard, phone="+14155550109", **auto))[0][0] == older
    assert (await _held(redis_client, guard, phone="+14155550110", **auto))[0][0] == "live-lead"

    assert not await restore_needed(redis_client, redis_prefix)
    assert not await redis_client.exists(redis_prefix + LOCK)
    # Safe to run again: every key is there, nothing is overwritten.
    again = await restore_dedupe(
        pg_pooled, redis_client, guard, redis_prefix, _verticals(auto=30), datetime.now(UTC)
    )
    assert again == 0


async def test_a_restore_in_progress_elsewhere_is_not_run_twice(
    pg_pooled: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    await _lead(pg_pooled, phone="+14155550111")
    await redis_client.set(redis_prefix + LOCK, "another-worker", ex=60)
    assert (
        await restore_dedupe(
            pg_pooled, redis_client, guard, redis_prefix, _verticals(auto=30), datetime.now(UTC)
        )
        is None
    )
    assert await _held(redis_client, guard, phone="+14155550111", vertical="auto", test=False) == [
        ("", -2)
    ]
    assert await restore_needed(redis_client, redis_prefix)
    assert await redis_client.get(redis_prefix + LOCK) == b"another-worker"  # not ours to free


async def test_a_failed_restore_leaves_no_marker_and_frees_its_lock(
    pg_pooled: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    guard = Guard(redis_client, redis_prefix)
    await pg_pooled.execute("DROP TABLE leads CASCADE")  # Postgres cannot answer the read
    with pytest.raises(asyncpg.UndefinedTableError):
        await restore_dedupe(
            pg_pooled, redis_client, guard, redis_prefix, _verticals(auto=30), datetime.now(UTC)
        )
    assert await restore_needed(redis_client, redis_prefix)  # the next check tries again
    assert not await redis_client.exists(redis_prefix + LOCK)


async def test_pages_cover_a_window_larger_than_a_page_with_ties_across_its_edge(
    pg_pooled: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """More leads than a page, all received in the same microsecond: the keyset on
    (received_at, lead_id) must neither skip nor repeat one at the page's edge."""
    await pg_pooled.execute(
        """INSERT INTO leads (lead_id, publisher_id, vertical, status, received_at, phone)
           SELECT gen_random_uuid(), 'pub-1', 'auto', 'sold', now() - interval '1 day',
                  '+1415' || lpad(i::text, 7, '0')
           FROM generate_series(1, $1::int) AS i""",
        PAGE + 7,
    )
    guard = Guard(redis_client, redis_prefix)
    written = await restore_dedupe(
        pg_pooled, redis_client, guard, redis_prefix, _verticals(auto=30), datetime.now(UTC)
    )
    assert written == PAGE + 7
    keys = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}dd:*", count=1000)]
    assert len(keys) == PAGE + 7


class _LosesRedisAfterAPage:
    """Reads pages from Postgres; after the first, Redis loses everything under the prefix."""

    def __init__(self, pg_pooled: Conn, redis: aioredis.Redis, prefix: str) -> None:
        self.pg, self.redis, self.prefix, self.pages = pg_pooled, redis, prefix, 0

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.pages += 1
        if self.pages == 2:
            gone = [k async for k in self.redis.scan_iter(match=f"{self.prefix}*", count=1000)]
            await self.redis.delete(*gone)
        return list(await self.pg.fetch(query, *args))


async def test_a_redis_lost_again_mid_restore_is_not_marked_restored(
    pg_pooled: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await pg_pooled.execute(
        """INSERT INTO leads (lead_id, publisher_id, vertical, status, received_at, phone)
           SELECT gen_random_uuid(), 'pub-1', 'auto', 'sold', now() - make_interval(secs => i),
                  '+1415' || lpad(i::text, 7, '0')
           FROM generate_series(1, $1::int) AS i""",
        PAGE + 1,
    )
    rows = _LosesRedisAfterAPage(pg_pooled, redis_client, redis_prefix)
    guard = Guard(redis_client, redis_prefix)
    with pytest.raises(RestoreInterrupted):
        await restore_dedupe(
            rows, redis_client, guard, redis_prefix, _verticals(auto=30), datetime.now(UTC)
        )
    assert rows.pages == 2
    assert await restore_needed(redis_client, redis_prefix)  # the next check starts over
    assert not await redis_client.exists(redis_prefix + LOCK)


async def test_the_command_restores_from_the_configured_database(
    pg_pooled: Conn, pg_dsn: str, redis_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    catalog = Catalog.load(ROOT / "config")
    days = catalog.verticals["auto_insurance"].dedupe_days
    assert days > 2
    lead_id = await _lead(pg_pooled, phone="+14155550112", vertical="auto_insurance", days_ago=2)
    sold_today = await _lead(pg_pooled, phone=None, vertical="auto_insurance", days_ago=0)
    await pg_pooled.execute(
        """INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id,
               price_cents, payout_cents) VALUES ($1, 'pub-1', 'auto_insurance', 'acme',
               'acme-auto-west', 1500, 0)""",
        uuid.UUID(sold_today),
    )
    target = catalog.targets["acme-auto-west"]  # a daily cap and a daily budget
    caps = CapStore(redis_client, redis_prefix)
    done = run_cli(
        "restore-redis",
        "--config",
        str(ROOT / "config"),
        database_url=pg_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
    )
    assert done.returncode == 0, done.stderr
    assert "1 key(s) written" in done.stdout
    guard = Guard(redis_client, redis_prefix)
    [(holder, ttl)] = await _held(
        redis_client, guard, phone="+14155550112", vertical="auto_insurance", test=False
    )
    assert holder == lead_id and _about(ttl, (days - 2) * DAY)
    assert await redis_client.get(redis_prefix + MARK) is not None
    usage = await caps.usage(target, datetime.now(UTC))
    assert usage["daily"][0] == 1 and usage["daily_budget"][0] == 1500  # raised from 0


async def test_cap_counters_are_raised_to_what_postgres_holds_never_lowered(
    pg_pooled: Conn, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    target = Catalog.load(ROOT / "config").targets["acme-auto-west"]
    for _ in range(2):
        lead_id = await _lead(pg_pooled, phone=None, vertical="auto_insurance", days_ago=0)
        await pg_pooled.execute(
            """INSERT INTO sales (lead_id, publisher_id, vertical, buyer_id, campaign_id,
                   price_cents, payout_cents) VALUES ($1, 'pub-1', 'auto_insurance', 'acme',
                   'acme-auto-west', 1000, 0)""",
            uuid.UUID(lead_id),
        )
    caps = CapStore(redis_client, redis_prefix)
    now = datetime.now(UTC)
    # Since the loss, three reservations (two saved above, one still posting): they count.
    for _ in range(3):
        assert await caps.reserve(target, 1000, now) is not None
    await caps.rebuild(pg_pooled, [target], now, only_raise=True)
    assert (await caps.usage(target, now))["daily"][0] == 3  # not lowered to Postgres's 2
    await redis_client.delete(*[k async for k in redis_client.scan_iter(f"{redis_prefix}cap:*")])
    await caps.rebuild(pg_pooled, [target], now, only_raise=True)
    assert (await caps.usage(target, now))["daily"][0] == 2  # raised from nothing


@pytest.mark.parametrize(
    ("policy", "maxmemory", "warned"),
    [
        ("noeviction", 0, False),
        ("noeviction", 1 << 30, False),
        ("allkeys-lru", 0, False),  # no memory limit: nothing is ever evicted
        ("allkeys-lru", 1 << 30, True),
        ("volatile-ttl", 1 << 30, True),  # every key of ours has an expiry
    ],
)
def test_a_redis_that_evicts_keys_is_named_a_risk(
    policy: str, maxmemory: int, warned: bool
) -> None:
    risk = eviction_risk(policy, maxmemory)
    assert (risk is not None) == warned
    if risk is not None:
        assert policy in risk and "noeviction" in risk


async def test_this_machines_redis_settings_are_read_as_redis_py_reads_them(
    redis_url: str,
) -> None:
    redis = lane_client(redis_url)
    try:
        policy = str((await redis.config_get("maxmemory-policy"))["maxmemory-policy"])
        maxmemory = int(str((await redis.config_get("maxmemory"))["maxmemory"]))
        assert await eviction_settings(redis) == (policy, maxmemory)
        assert await check_eviction(redis) == eviction_risk(policy, maxmemory)
    finally:
        await redis.aclose()
